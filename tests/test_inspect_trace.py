"""Model-level tracing and statistics against ``layer.trace`` on real tiny models."""

import keras
import numpy as np
import pytest

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.inspect import (
    find_gated_layers,
    input_mask_from_value,
    inspect_model,
    saturation_stats,
    trace_model,
)
from keras_gates.inspect.summary import LAYER_KEYS, SUMMARY_KEYS

# trace_model calls the same layer.trace on the same float32 inputs: results are identical.
EXACT = 0.0
# Tracing a sequence alone vs. inside a padded batch: same math, float32 round-off only.
FLOAT32 = 1e-6

FEATURES, STEPS = 3, 6
LENGTHS = (6, 4, 2)


def _padded_batch(seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(len(LENGTHS), STEPS, FEATURES)).astype("float32")
    for row, length in enumerate(LENGTHS):
        x[row, length:] = 0.0
    return x


def _expected_mask() -> np.ndarray:
    return np.arange(STEPS)[None, :] < np.array(LENGTHS)[:, None]


@pytest.fixture(scope="module")
def model():
    """Masking -> GatedLSTM -> Bidirectional(GatedGRU) -> Dense."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((STEPS, FEATURES))
    masked = keras.layers.Masking(0.0)(inputs)
    lstm = GatedLSTM(4, return_sequences=True, name="lstm")(masked)
    both = keras.layers.Bidirectional(GatedGRU(3), name="bi")(lstm)
    return keras.Model(inputs, keras.layers.Dense(1)(both), name="tiny")


def test_finds_every_gated_layer_with_directions(model):
    refs = find_gated_layers(model)
    assert [(r.key, r.direction) for r in refs] == [
        ("lstm", None),
        ("bi/forward", "forward"),
        ("bi/backward", "backward"),
    ]
    assert refs[2].layer is model.get_layer("bi").backward_layer
    assert refs[2].layer.go_backwards


def test_trace_model_equals_layer_trace_with_the_model_mask(model):
    x = _padded_batch()
    traces = trace_model(model, x)
    lstm = model.get_layer("lstm")
    expected = lstm.trace(x, mask=_expected_mask())
    np.testing.assert_array_equal(traces["lstm"]["mask"], _expected_mask())
    for key in ("input", "forget", "candidate", "output", "cell", "hidden"):
        np.testing.assert_allclose(traces["lstm"][key], expected[key], atol=EXACT)
    lstm_out = keras.Model(model.inputs, lstm.output)(x)
    bi = model.get_layer("bi")
    for direction, layer in (("forward", bi.forward_layer), ("backward", bi.backward_layer)):
        want = layer.trace(keras.ops.convert_to_numpy(lstm_out), mask=_expected_mask())
        got = traces[f"bi/{direction}"]
        assert set(got) == {"update", "reset", "candidate", "hidden", "mask"}
        for key in ("update", "reset", "candidate", "hidden"):
            np.testing.assert_allclose(got[key], want[key], atol=FLOAT32)
        assert (got["update"][~_expected_mask()] == 0).all()


def test_statistics_equal_numpy_on_layer_trace(model):
    x = _padded_batch()
    result = inspect_model(model, x, low=0.2, high=0.8, horizon=False)
    trace = model.get_layer("lstm").trace(x, mask=_expected_mask())
    valid = trace["forget"][_expected_mask()]  # (12 valid steps, 4 units)
    stats = result["stats"]["lstm"]["forget"]
    np.testing.assert_allclose(stats["left_saturated"], (valid < 0.2).mean(axis=0), atol=EXACT)
    np.testing.assert_allclose(stats["right_saturated"], (valid > 0.8).mean(axis=0), atol=EXACT)
    np.testing.assert_allclose(stats["mean"], valid.mean(axis=0), atol=FLOAT32)
    # tanh candidate: thresholds are fractions of (-1, 1): -0.6 / 0.6
    candidate = trace["candidate"][_expected_mask()]
    np.testing.assert_allclose(
        result["stats"]["lstm"]["candidate"]["right_saturated"],
        (candidate > 0.6).mean(axis=0),
        atol=EXACT,
    )
    summary = result["summary"]
    assert tuple(summary) == SUMMARY_KEYS
    lstm = summary["layers"]["lstm"]
    assert tuple(lstm) == LAYER_KEYS
    assert (lstm["valid_steps"], lstm["total_steps"]) == (sum(LENGTHS), len(LENGTHS) * STEPS)
    assert lstm["saturation"]["candidate"]["range"] == [-1.0, 1.0]
    assert lstm["saturation"]["forget"]["left_saturated"] == pytest.approx(
        float((valid < 0.2).mean())
    )
    assert summary["layers"]["bi/backward"]["direction"] == "backward"


def test_padded_steps_do_not_change_statistics(model):
    """Stats of the padded batch equal stats of each sequence traced alone, unpadded."""
    x = _padded_batch()
    lstm = model.get_layer("lstm")
    alone = [lstm.trace(x[i : i + 1, :length]) for i, length in enumerate(LENGTHS)]
    values = np.concatenate([t["output"][0] for t in alone])  # (12, 4)
    want = saturation_stats(values[None])
    got = inspect_model(model, x, horizon=False)["stats"]["lstm"]["output"]
    for key in ("left_saturated", "right_saturated", "mean", "std"):
        np.testing.assert_allclose(got[key], want[key], atol=FLOAT32)
    # Without a Masking layer, the zero padding is excluded by mask_value alone.
    plain = keras.Sequential([keras.Input((STEPS, FEATURES)), lstm_like(lstm)])
    noisy = inspect_model(plain, x, mask_value=0.0, horizon=False)["stats"]["lstm_copy"]["output"]
    for key in ("left_saturated", "right_saturated", "mean", "std"):
        np.testing.assert_allclose(noisy[key], want[key], atol=FLOAT32)
    unmasked = inspect_model(plain, x, horizon=False)["summary"]["layers"]["lstm_copy"]
    assert unmasked["valid_steps"] == len(LENGTHS) * STEPS


def lstm_like(layer: GatedLSTM) -> GatedLSTM:
    copy = GatedLSTM(layer.units, return_sequences=True, name="lstm_copy")
    copy.build((None, STEPS, FEATURES))
    copy.set_gate_weights(layer.get_gate_weights())
    return copy


def test_embedding_mask_zero_and_nested_model():
    keras.utils.set_random_seed(2)
    inner = keras.Sequential([keras.Input((5, 4)), GatedGRU(3, name="gru")], name="inner")
    ids = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(ids)
    model = keras.Model(ids, inner(embedded))
    tokens = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]], dtype="int32")
    traces = trace_model(model, tokens)
    assert list(traces) == ["inner/gru"]
    np.testing.assert_array_equal(traces["inner/gru"]["mask"], tokens != 0)
    np.testing.assert_array_equal(input_mask_from_value(tokens, 0), tokens != 0)


def test_stateful_layer_states_are_restored():
    keras.utils.set_random_seed(3)
    layer = GatedGRU(3, stateful=True, name="gru")
    model = keras.Sequential([keras.Input((4, 2), batch_size=2), layer])
    x = np.ones((2, 4, 2), "float32")
    model(x)  # move the state away from zeros
    before = keras.ops.convert_to_numpy(layer.states[0])
    first = trace_model(model, x)["gru"]["hidden"]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.states[0]), before)
    np.testing.assert_array_equal(trace_model(model, x)["gru"]["hidden"], first)


def test_errors_name_the_problem(model):
    dense = keras.Sequential([keras.Input((STEPS, FEATURES)), keras.layers.Dense(2)], name="d")
    with pytest.raises(ValueError, match="Model 'd' has no gated layer"):
        trace_model(dense, _padded_batch())
    with pytest.raises(ValueError, match=r"shape \(3, 6, 5\).*expected \(any, 6, 3\)"):
        trace_model(model, np.zeros((3, STEPS, 5), "float32"))
    with pytest.raises(ValueError, match="mask_value"):
        input_mask_from_value(np.zeros(3), 0.0)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.lstm = GatedLSTM(
            4, return_sequences=True, coupled_input_forget=True, use_peepholes=True, name="cpl"
        )
        self.gru = GatedGRU(3, reset_after=False, use_bias=False, go_backwards=True, name="gru")

    def call(self, x):
        return self.gru(self.lstm(x))


def test_subclassed_model_and_layer_variants():
    keras.utils.set_random_seed(6)
    model = _Subclassed()
    x = _padded_batch()
    result = inspect_model(model, x, mask_value=0.0)
    cpl = result["traces"]["cpl"]
    np.testing.assert_array_equal(cpl["mask"], _expected_mask())
    valid = _expected_mask()
    np.testing.assert_allclose(cpl["forget"][valid], 1.0 - cpl["input"][valid], atol=FLOAT32)
    weights = result["summary"]["layers"]["cpl"]["weights"]
    assert list(weights) == ["input", "candidate", "output"]  # coupled: forget owns no weights
    assert weights["input"]["peephole_norm"] == 0.0  # zeros-initialised peepholes
    assert result["summary"]["layers"]["gru"]["weights"]["reset"]["bias_norm"] is None
    want = model.gru.trace(model.lstm(x), mask=valid)
    np.testing.assert_allclose(result["traces"]["gru"]["update"], want["update"], atol=FLOAT32)


def test_memory_horizon_on_every_backend():
    """Retention (numpy) and gradient flow (the backend's autodiff) on every backend; the
    numbers are compared across backends in tests/test_gradient_backends.py."""
    import keras

    from keras_gates.inspect import inspect_model

    model = keras.Sequential([keras.Input((10, 2)), GatedLSTM(4), keras.layers.Dense(1)])
    x = np.random.default_rng(0).random((4, 10, 2), dtype=np.float32)
    summary = inspect_model(model, x)["summary"]
    (layer,) = summary["layers"].values()
    assert len(layer["horizon"]["half_life"]["per_unit"]) == 4
    flow = summary["gradient_flow"]
    assert flow["note"] is None and flow["input"]["reach"] is not None
    assert list(flow["layers"]) == list(summary["layers"]), flow["layers"]
