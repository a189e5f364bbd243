"""Memory horizon: retention from the gates and gradient flow, each against an independent witness.

Witnesses: products of the gates of ``layer.trace`` taken by plain Python loops; central finite
differences of the model (and of the layer called on a perturbed initial state) in float64; exact
decay rates of a linearised SimpleRNN whose recurrent kernel has a known spectral radius.
"""

import keras
import numpy as np
import pytest

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.inspect import (
    gradient_flow,
    lag_below,
    memory_retention,
    retention_curve,
    retention_matrix,
    spectral_radius,
    state_gradient_flow,
)
from keras_gates.inspect.horizon import layer_retention, median_lag
from tests import children

STEPS, FEATURES = 7, 2
# Finite differences in float64 with eps 1e-5: truncation ~eps² and rounding ~1e-16/eps.
FD_EPS, FD_RTOL = 1e-5, 1e-6
# Gate products of float32 traces recomputed in float64: float32 rounding of each factor.
PRODUCT_RTOL = 1e-6


def _looped_curve(hold, mask):
    """Mean retention per lag by brute force: every (sample, start, end) triple of valid steps."""
    sums, counts = {}, {}
    for b in range(hold.shape[0]):
        valid = np.flatnonzero(mask[b])
        for i in range(len(valid)):
            for j in range(i, len(valid)):
                product = np.ones(hold.shape[2])
                for k in valid[i + 1 : j + 1]:
                    product = product * hold[b, k]
                sums[j - i] = sums.get(j - i, 0.0) + product
                counts[j - i] = counts.get(j - i, 0) + 1
    return np.array([sums[lag] / counts[lag] for lag in sorted(sums)]), counts


@pytest.fixture(scope="module")
def padded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, STEPS, FEATURES)).astype("float32")
    mask = np.ones((4, STEPS), bool)
    mask[1, 5:] = False  # right padding
    mask[2, [1, 4]] = False  # holes: Keras carries the state through them
    return x, mask


@pytest.mark.parametrize(
    ("layer", "gate"),
    [
        (GatedLSTM(3), "forget"),
        (GatedLSTM(3, coupled_input_forget=True), "input"),
        (GatedGRU(3), "update"),
    ],
    ids=["lstm", "coupled", "gru"],
)
def test_retention_is_the_product_of_the_traced_gates(padded, layer, gate):
    x, mask = padded
    keras.utils.set_random_seed(2)
    trace = layer.trace(x, mask=mask)
    hold = 1.0 - trace["input"].astype(np.float64) if gate == "input" else trace[gate]
    result = layer_retention(layer, trace)
    expected, counts = _looped_curve(np.asarray(hold, np.float64), mask)
    np.testing.assert_allclose(result["mean"], expected, rtol=PRODUCT_RTOL)
    assert list(result["pairs"]) == [counts[lag] for lag in sorted(counts)]
    assert result["gate"] == ("1 - input" if gate == "input" else gate)
    # Sample 2 has 5 valid steps: no value past lag 4; sample 1 has 5 too.
    assert (
        np.isnan(result["per_sample"][2, 5:]).all()
        and not np.isnan(result["per_sample"][2, :5]).any()
    )
    # The full matrix, product by product.
    matrix = retention_matrix(hold, mask)
    b, s, t = 2, 0, 5  # over (0, 5]: steps 1 and 4 are masked, factor 1
    want = np.prod([hold[b, k] for k in (2, 3, 5)], axis=0)
    np.testing.assert_allclose(matrix[b, s, t], want, rtol=PRODUCT_RTOL)
    assert np.isnan(matrix[b, t, s]).all() and (matrix[:, 3, 3] == 1.0).all()
    # Half-life read off the curve by hand.
    for u in range(3):
        below = [lag for lag in range(1, len(expected)) if expected[lag, u] < 0.5]
        want_lag = below[0] if below else len(expected)
        assert result["half_life"][u] == want_lag
        assert result["half_life_censored"][u] == (not below)


def test_masked_steps_do_not_count_as_lags():
    rng = np.random.default_rng(3)
    hold = rng.uniform(0.3, 1.0, size=(1, 9, 2))
    mask = np.array([[1, 1, 0, 1, 0, 0, 1, 1, 0]], bool)
    kept = hold[:, mask[0]]
    with_holes, without = retention_curve(hold, mask), retention_curve(kept)
    np.testing.assert_allclose(with_holes["mean"], without["mean"], rtol=1e-12)
    # Whatever the padded steps hold, nothing changes.
    scrambled = np.where(mask[..., None], hold, 0.0)
    np.testing.assert_allclose(retention_curve(scrambled, mask)["mean"], without["mean"])


def test_retention_curve_in_chunks_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(4)
    hold = rng.uniform(0.2, 1.0, size=(5, 8, 3))
    mask = rng.random((5, 8)) > 0.3
    whole = retention_curve(hold, mask)
    monkeypatch.setattr("keras_gates.inspect.horizon.CHUNK_VALUES", 8 * 3 * 2)  # 2 samples
    chunked = retention_curve(hold, mask)
    for key in ("mean", "per_sample", "pairs"):
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-12)


def _bias_model(layer_class, gate, bias):
    keras.utils.set_random_seed(0)
    layer = layer_class(4, gate_initializers={gate: {"bias": bias}}, name="rnn")
    return keras.Sequential([keras.Input((20, FEATURES)), layer, keras.layers.Dense(1)])


@pytest.mark.parametrize(("layer_class", "gate"), [(GatedLSTM, "forget"), (GatedGRU, "update")])
def test_hold_bias_sets_the_half_life(layer_class, gate):
    x = np.random.default_rng(0).normal(size=(3, 20, FEATURES)).astype("float32")
    keep = memory_retention(_bias_model(layer_class, gate, 30.0), x)["rnn"]
    assert (keep["half_life"] >= 20).all() and keep["half_life_censored"].all()
    assert median_lag(keep["half_life"], keep["half_life_censored"]) == (20.0, True)
    forget = memory_retention(_bias_model(layer_class, gate, -30.0), x)["rnn"]
    assert (forget["half_life"] <= 1).all() and not forget["half_life_censored"].any()
    assert (forget["e_lag"] == 1).all()


def test_bidirectional_backward_retention_runs_in_processing_order():
    keras.utils.set_random_seed(6)
    x = np.random.default_rng(6).normal(size=(2, STEPS, FEATURES)).astype("float32")
    model = keras.Sequential(
        [keras.Input((STEPS, FEATURES)), keras.layers.Bidirectional(GatedGRU(3), name="bi")]
    )
    result = memory_retention(model, x)
    backward = model.layers[0].backward_layer
    mirror = GatedGRU(3)  # forward layer with the backward weights, on the reversed sequence
    mirror.build((None, STEPS, FEATURES))
    mirror.set_gate_weights(backward.get_gate_weights())
    trace = mirror.trace(x[:, ::-1])
    expected, _ = _looped_curve(trace["update"].astype(np.float64), trace["mask"])
    np.testing.assert_allclose(result["bi/backward"]["mean"], expected, rtol=PRODUCT_RTOL)
    assert set(result) == {"bi/forward", "bi/backward"}
    # The state gradient too is measured in the order the backward layer reads the steps.
    flows = state_gradient_flow(model, x)
    np.testing.assert_allclose(
        flows["bi/backward"]["mean"], state_gradient_flow(mirror, x[:, ::-1])[mirror.name]["mean"]
    )


# ----------------------------------------------------------------------------- gradient flow
def _fd_model():
    keras.utils.set_random_seed(7)
    return keras.Sequential(
        [
            keras.Input((None, FEATURES), dtype="float64"),
            keras.layers.Masking(0.0, dtype="float64"),
            GatedLSTM(3, return_sequences=True, dtype="float64", name="lstm"),
            GatedGRU(3, dtype="float64", name="gru"),
            keras.layers.Dense(2, dtype="float64"),
        ]
    )


@pytest.fixture(scope="module")
def fd_case():
    model = _fd_model()
    x = np.random.default_rng(8).normal(size=(3, STEPS, FEATURES))
    x[1, 5:] = 0.0  # padding, masked by the model's own Masking layer
    return model, x


def _fd_input_norms(model, x, mask, pick=lambda y, b: y):
    """‖∂y/∂x_t‖ per (sample, lag) by central differences; ``pick(y, b)`` selects sample b's y."""
    expected = np.full(mask.shape, np.nan)
    for b, t in zip(*np.nonzero(mask), strict=True):
        shifted = np.repeat(x[b : b + 1], 2 * FEATURES, axis=0)  # +eps, -eps per feature
        for f in range(FEATURES):
            shifted[2 * f, t, f] += FD_EPS
            shifted[2 * f + 1, t, f] -= FD_EPS
        y = pick(model(shifted).numpy(), b)
        jacobian = (y[0::2] - y[1::2]) / (2 * FD_EPS)  # (features, outputs...)
        expected[b, mask[b, t + 1 :].sum()] = np.linalg.norm(jacobian)
    return expected


def test_gradient_flow_matches_central_differences(fd_case):
    model, x = fd_case
    result = gradient_flow(model, x)
    mask = np.ones((3, STEPS), bool)
    mask[1, 5:] = False
    expected = _fd_input_norms(model, x, mask)
    np.testing.assert_allclose(result["per_sample"], expected, rtol=FD_RTOL, atol=1e-12)
    np.testing.assert_allclose(result["mean"], np.nanmean(expected, axis=0), rtol=FD_RTOL)
    assert list(result["samples"]) == [3] * 5 + [2] * 2 and result["outputs"] == 2


def test_sequence_output_is_taken_at_the_last_valid_step(fd_case):
    _, x = fd_case
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [
            keras.Input((None, FEATURES), dtype="float64"),
            keras.layers.Masking(0.0, dtype="float64"),
            GatedGRU(3, return_sequences=True, dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    mask = np.ones((3, STEPS), bool)
    mask[1, 5:] = False
    last = [STEPS - 1, 4, STEPS - 1]
    expected = _fd_input_norms(model, x, mask, pick=lambda y, b: y[:, last[b]])
    result = gradient_flow(model, x)
    np.testing.assert_allclose(result["per_sample"], expected, rtol=FD_RTOL, atol=1e-12)


def test_state_gradient_matches_central_differences(fd_case):
    model, x = fd_case
    x = x[[0, 2]]  # unpadded samples: the witness calls the layer on slices of the sequence
    flows = state_gradient_flow(model, x)
    assert set(flows) == {"lstm", "gru"}
    lstm = model.layers[1]
    witness = GatedLSTM(3, return_state=True, dtype="float64")
    witness.build((None, None, FEATURES))
    witness.set_gate_weights(lstm.get_gate_weights())
    expected = np.zeros((2, STEPS))
    for t in range(STEPS):
        _, h, c = witness(x[:, : t + 1])
        state = np.concatenate([h.numpy(), c.numpy()], axis=1)
        rows = np.zeros((2, 3, 6))
        for j in range(6):
            up, down = state.copy(), state.copy()
            up[:, j] += FD_EPS
            down[:, j] -= FD_EPS
            rows[:, :, j] = (_h_last(witness, x, t, up) - _h_last(witness, x, t, down)) / (
                2 * FD_EPS
            )
        expected[:, STEPS - 1 - t] = np.linalg.norm(rows, axis=(1, 2))
    np.testing.assert_allclose(flows["lstm"]["per_sample"], expected, rtol=FD_RTOL)
    assert flows["lstm"]["mean"][0] == pytest.approx(np.sqrt(3))  # ‖[I 0]‖ at lag 0
    assert flows["lstm"]["state_size"] == 6 and flows["gru"]["state_size"] == 3


def _h_last(layer, x, t, state):
    units = state.shape[1] // 2
    if t == x.shape[1] - 1:
        return state[:, :units]
    output, _, _ = layer(x[:, t + 1 :], initial_state=[state[:, :units], state[:, units:]])
    return output.numpy()


def test_masked_steps_leave_the_gradient_profile_unchanged(fd_case):
    model, x = fd_case
    padded = gradient_flow(model, x[1:2])  # 5 valid steps, then 2 masked
    trimmed = gradient_flow(model, x[1:2, :5])
    np.testing.assert_allclose(padded["mean"], trimmed["mean"], rtol=1e-9)
    state_padded = state_gradient_flow(model, x[1:2])["gru"]["mean"]
    np.testing.assert_allclose(state_padded, state_gradient_flow(model, x[1:2, :5])["gru"]["mean"])


def _simple_rnn(kernel, recurrent, steps):
    units = recurrent.shape[0]
    layer = keras.layers.SimpleRNN(units, name="rnn")
    model = keras.Sequential([keras.Input((steps, kernel.shape[0])), layer, keras.layers.Dense(1)])
    layer.set_weights([kernel, recurrent, np.zeros(units)])
    return model


def test_simple_rnn_decays_at_its_spectral_radius():
    rho, units, steps = 0.7, 4, 30
    q, _ = np.linalg.qr(np.random.default_rng(9).normal(size=(units, units)))
    model = _simple_rnn(np.eye(units), rho * q, steps)
    # At x = 0 the state stays 0 and tanh' = 1: the Jacobians are exactly powers of rho·Q.
    flow = gradient_flow(model, np.zeros((2, steps, units), "float32"), fraction=1e-3)
    np.testing.assert_allclose(flow["relative"], rho ** np.arange(steps), rtol=1e-4)
    assert flow["reach"] == np.ceil(np.log(1e-3) / np.log(rho))  # first lag below 1e-3
    state = state_gradient_flow(model, np.zeros((2, steps, units), "float32"))["rnn"]
    np.testing.assert_allclose(state["mean"], np.sqrt(units) * rho ** np.arange(steps), rtol=1e-4)
    # A random (symmetric) kernel and small random inputs: the fitted decay rate is its radius.
    rng = np.random.default_rng(10)
    sym = rng.normal(size=(units, units))
    sym = sym + sym.T
    sym *= 0.8 / spectral_radius(sym)
    model = _simple_rnn(rng.normal(size=(3, units)), sym, 60)
    flow = gradient_flow(model, 0.01 * rng.normal(size=(8, 60, 3)).astype("float32"))
    lags = np.arange(15, 45)
    slope = np.polyfit(lags, np.log(flow["mean"][lags]), 1)[0]
    assert np.exp(slope) == pytest.approx(spectral_radius(sym), rel=0.02)


def test_lag_below_and_median():
    curve = np.array([[1.0, 1.0, 1.0], [0.6, 0.4, 0.9], [0.3, 0.2, 0.8]])
    lags, censored = lag_below(curve, 0.5)
    assert list(lags) == [2, 1, 3] and list(censored) == [False, False, True]
    assert median_lag(lags, censored) == (2.0, False)
    assert median_lag(np.array([3.0, 3.0]), np.array([True, False])) == (3.0, False)


def test_bad_inputs_get_clear_errors(fd_case):
    model, x = fd_case
    with pytest.raises(ValueError, match=r"argument `x`, expected a float array.*got shape"):
        gradient_flow(model, x[:, :, 0])
    with pytest.raises(ValueError, match="dtype int64"):
        gradient_flow(model, np.ones((1, STEPS, FEATURES), "int64"))
    with pytest.raises(ValueError, match=r"does not fit model.*expected \(any, any, 2\)"):
        gradient_flow(model, x[..., :1])
    with pytest.raises(ValueError, match=r"`fraction`, expected a number in \(0, 1\)"):
        gradient_flow(model, x, fraction=2.0)
    with pytest.raises(ValueError, match=r"`mask` of shape \(3, 6\)"):
        gradient_flow(model, x, mask=np.ones((3, 6), bool))
    stock = _simple_rnn(np.eye(2), 0.5 * np.eye(2), STEPS)
    with pytest.raises(ValueError, match="has no gated layer.*gradient_flow"):
        memory_retention(stock, x.astype("float32"))
    with pytest.raises(ValueError, match=r"`hold` of shape \(7, 2\)"):
        retention_curve(x[0])
    dense = keras.Sequential([keras.Input((STEPS, FEATURES)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="has no recurrent layer"):
        state_gradient_flow(dense, x)


# ----------------------------------------------------------------------------- the command
SAVE_SCRIPT = """
import sys
import keras, numpy as np
from keras_gates import GatedGRU, GatedLSTM

keras.utils.set_random_seed(0)
inputs = keras.Input((12, 2))
keep = GatedLSTM(3, return_sequences=True, gate_initializers={"forget": {"bias": 30.0}},
                 name="keep")(keras.layers.Masking(-1.0)(inputs))
forget = GatedGRU(2, gate_initializers={"update": {"bias": -30.0}}, name="forget")(keep)
keras.Model(inputs, keras.layers.Dense(1)(forget)).save(sys.argv[1] + "/model.keras")
x = np.random.default_rng(0).normal(size=(4, 12, 2)).astype("float32")
x[3, 9:] = -1.0
np.save(sys.argv[1] + "/x.npy", x)
"""


@pytest.mark.slow
def test_inspect_command_reports_the_memory_horizon(tmp_path):
    import json
    import os
    import sys

    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
        "MPLBACKEND": "Agg",
    }
    children.run([sys.executable, "-c", SAVE_SCRIPT, str(tmp_path)], timeout=300, env=env)
    out = tmp_path / "report"
    command = [sys.executable, "-m", "keras_gates.cli", "inspect", str(tmp_path / "model.keras")]
    command += ["--input", str(tmp_path / "x.npy"), "--out", str(out)]
    done = children.run(command, timeout=300, env=env)
    lines = done.stdout.splitlines()
    start = lines.index("memory horizon") + 1  # after the saturation table
    assert lines[start].split()[:6] == ["layer", "hold", "gate", "half-life", "1/e", "lag"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[start + 1 : start + 3]}
    assert rows["keep"][:2] == ["forget", "≥12"] and rows["forget"][:2] == ["update", "1"]
    assert "half-life per unit, keep: ≥12 ≥12 ≥12" in lines
    assert "half-life per unit, forget: 1 1" in lines
    assert any(line.startswith("model output: ‖∂y/∂x_t‖ falls below 0.001") for line in lines)

    summary = json.loads((out / "summary.json").read_text())
    keep = summary["layers"]["keep"]["horizon"]
    assert keep["half_life"] == {
        "per_unit": [12, 12, 12],
        "censored": [True, True, True],
        "median": 12,
        "median_censored": True,
    }
    assert keep["hold_gate"] == "forget" and keep["max_lag"] == 11
    assert summary["layers"]["forget"]["horizon"]["half_life"]["per_unit"] == [1, 1]
    flow = summary["gradient_flow"]
    assert set(flow["layers"]) == {"keep", "forget"} and flow["input"]["outputs"] == 1
    assert flow["samples"] == 4
    assert len(flow["input"]["mean"]) == 12 and flow["input"]["relative"][0] == 1.0
    # The forget gate at 1 keeps the cell state: its gradient never fades within 12 steps.
    assert flow["layers"]["keep"]["reach_censored"] and flow["layers"]["keep"]["reach"] == 12
    kinds = {(image["layer"], image["kind"]) for image in summary["images"]}
    assert {(None, "gradient_flow"), ("keep", "retention"), ("keep", "half_life")} <= kinds
    page = (out / "index.html").read_text()
    assert "<h2>Memory horizon</h2>" in page and "median half-life" in page
    for name in ("model-gradient_flow.png", "00-keep-retention.png", "01-forget-half_life.png"):
        assert f'data-file="{name}"' in page and (out / name).is_file()
