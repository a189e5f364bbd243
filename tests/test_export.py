"""The ONNX exporter over a grid of gated-layer configurations.

For each configuration: exactly one native RNN node per gated layer and no Loop/Scan,
``onnx.checker`` passes, onnxruntime equals Keras (<= 1e-5) at several batch sizes and lengths,
and right-padded batches with ``lengths`` equal the sequences run one by one through Keras.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
import pytest

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.export import Predictor, read_signature, to_onnx
from tests.reference import EXPORT_ATOL

ATOL = EXPORT_ATOL  # tests/reference.py says why

FEATURES = 3
L = keras.layers


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Random weights everywhere (biases and peepholes too) so no term hides behind a zero."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def seq(*layers, time=None) -> keras.Model:
    return keras.Sequential([keras.Input((time, FEATURES)), *layers])


def functional(build, time=None, name="x") -> keras.Model:
    x = keras.Input((time, FEATURES), name=name)
    return keras.Model(x, build(x))


def _bidi(mode, layer=GatedLSTM, **kw):
    return lambda: functional(lambda x: L.Bidirectional(layer(4, **kw), merge_mode=mode)(x))


def _masked_tokens():
    x = keras.Input((None,), dtype="int32", name="tokens")
    y = L.Embedding(6, FEATURES, mask_zero=True)(x)
    y = GatedGRU(5, return_sequences=True)(y)
    return keras.Model(x, GatedLSTM(4)(y))


def _mixed():
    return seq(
        L.Conv1D(4, 3, padding="same"),
        L.LayerNormalization(),
        L.Dropout(0.3),
        GatedLSTM(5, return_sequences=True),
        L.TimeDistributed(L.Dense(3)),
        L.Activation("relu"),
        GatedGRU(4, return_sequences=True),
        L.Dense(2),
    )


def _nested():
    inner = seq(GatedLSTM(5, return_sequences=True), L.Dense(4))
    return functional(lambda x: GatedGRU(3)(inner(x)))


def _initial_state():
    x = keras.Input((None, FEATURES), name="x")
    h0, c0 = keras.Input((4,), name="h0"), keras.Input((4,), name="c0")
    return keras.Model([x, h0, c0], GatedLSTM(4, return_sequences=True)(x, initial_state=[h0, c0]))


def _shared():
    layer = GatedGRU(4, return_sequences=True)
    return functional(lambda x: L.Add()([layer(x), layer(L.Dense(3)(x))]))


def _two_inputs():
    x, static = keras.Input((None, FEATURES), name="x"), keras.Input((2,), name="static")
    return keras.Model([x, static], L.Dense(2)(L.Concatenate()([GatedGRU(4)(x), static])))


# name -> (builder, expected ONNX RNN node counts)
CONFIGS = {
    "lstm_last_dense": (lambda: seq(GatedLSTM(6), L.Dense(2)), {"LSTM": 1}),
    "lstm_stacked": (
        lambda: seq(GatedLSTM(5, return_sequences=True), GatedLSTM(4, return_sequences=True)),
        {"LSTM": 2},
    ),
    "gru_reset_after": (lambda: seq(GatedGRU(5, return_sequences=True)), {"GRU": 1}),
    "gru_reset_before": (
        lambda: seq(GatedGRU(5, return_sequences=True, reset_after=False)),
        {"GRU": 1},
    ),
    "lstm_go_backwards_seq": (
        lambda: seq(GatedLSTM(4, return_sequences=True, go_backwards=True)),
        {"LSTM": 1},
    ),
    "gru_go_backwards_last": (lambda: seq(GatedGRU(4, go_backwards=True)), {"GRU": 1}),
    "lstm_return_state": (
        lambda: functional(lambda x: GatedLSTM(4, return_sequences=True, return_state=True)(x)),
        {"LSTM": 1},
    ),
    "gru_return_state_last": (
        lambda: functional(lambda x: GatedGRU(4, return_state=True, reset_after=False)(x)),
        {"GRU": 1},
    ),
    "bidi_concat": (_bidi("concat", return_sequences=True), {"LSTM": 1}),
    "bidi_sum": (_bidi("sum", return_sequences=True), {"LSTM": 1}),
    "bidi_mul": (_bidi("mul", return_sequences=True), {"LSTM": 1}),
    "bidi_ave": (_bidi("ave"), {"LSTM": 1}),
    "bidi_none_state": (_bidi(None, return_sequences=True, return_state=True), {"LSTM": 1}),
    "bidi_gru_state": (_bidi("concat", GatedGRU, return_state=True), {"GRU": 1}),
    "lstm_peepholes": (
        lambda: seq(GatedLSTM(4, return_sequences=True, use_peepholes=True)),
        {"LSTM": 1},
    ),
    "lstm_coupled": (
        lambda: seq(GatedLSTM(4, return_sequences=True, coupled_input_forget=True)),
        {"LSTM": 1},
    ),
    "lstm_peepholes_coupled_backwards": (
        lambda: seq(GatedLSTM(4, use_peepholes=True, coupled_input_forget=True, go_backwards=True)),
        {"LSTM": 1},
    ),
    "activations": (
        lambda: seq(
            GatedLSTM(
                4, activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True
            ),
            GatedGRU(4, activation="linear", recurrent_activation="sigmoid"),
        ),
        {"LSTM": 1, "GRU": 1},
    ),
    "no_bias": (lambda: seq(GatedLSTM(4, use_bias=False), L.Dense(1)), {"LSTM": 1}),
    "masking_layer": (
        lambda: seq(L.Masking(0.0), GatedLSTM(4, return_sequences=True), GatedGRU(3)),
        {"LSTM": 1, "GRU": 1},
    ),
    "embedding_mask_zero": (_masked_tokens, {"LSTM": 1, "GRU": 1}),
    "masked_bidi_then_backwards": (
        lambda: seq(
            L.Masking(0.0),
            L.Bidirectional(GatedLSTM(4, return_sequences=True), merge_mode="sum"),
            GatedGRU(3, go_backwards=True),
        ),
        {"LSTM": 1, "GRU": 1},
    ),
    "shared_layer": (_shared, {"GRU": 2}),
    "mixed_layers": (_mixed, {"LSTM": 1, "GRU": 1}),
    "nested_sequential": (_nested, {"LSTM": 1, "GRU": 1}),
    "initial_state_inputs": (_initial_state, {"LSTM": 1}),
    "two_inputs": (_two_inputs, {"GRU": 1}),
    "fixed_time": (lambda: seq(GatedGRU(4), L.Dense(2), time=6), {"GRU": 1}),
}


def build(name: str) -> tuple[keras.Model, dict[str, int]]:
    builder, counts = CONFIGS[name]
    return randomize(builder()), counts


# Configurations whose padded steps legitimately influence valid ones (a 'same' convolution
# looks one step ahead) or whose time axis is fixed: the export refuses padding for that input.
REFUSED = {"mixed_layers": {"input"}, "fixed_time": {"input"}}
NO_PADDING_CHECK = set(REFUSED)
MASKED = {"masking_layer", "embedding_mask_zero", "masked_bidi_then_backwards"}


def _inputs(model, batch, time, rng):
    arrays = []
    for tensor in model.inputs:
        shape = [batch, *(time if d is None else d for d in tensor.shape[1:])]
        if "int" in str(tensor.dtype):
            arrays.append(rng.integers(1, 6, size=shape).astype("int32"))
        else:
            arrays.append(rng.normal(size=shape).astype("float32"))
    return arrays


def _keras(model, arrays):
    out = model(arrays if len(arrays) > 1 else arrays[0], training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def _pad(arrays, lengths, model):
    """Zero the steps past each length (sequence inputs only)."""
    padded = []
    for tensor, x in zip(model.inputs, arrays):
        x = x.copy()
        if len(tensor.shape) >= 2 and tensor.shape[1] is None:
            for row, n in enumerate(lengths):
                x[row, n:] = 0
        padded.append(x)
    return padded


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_matches_keras(name, export_dir):
    model, expected_counts = build(name)
    path = export_dir / f"{name}.onnx"
    result = to_onnx(model, path, print_fn=None)

    counts = result.op_counts
    assert {k: counts.get(k, 0) for k in ("LSTM", "GRU")} == {
        "LSTM": 0,
        "GRU": 0,
        **expected_counts,
    }
    assert counts.get("Loop", 0) == 0 and counts.get("Scan", 0) == 0
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert result.validation.passed and result.validation.max_error <= ATOL
    assert len([r for r in result.validation.rows if not r.padded]) >= 2
    assert any(r.padded for r in result.validation.rows)  # the table shows padded cases
    assert set(result.signature.padding_refusals) == REFUSED.get(name, set())

    predictor = Predictor(path, device="cpu")
    names = [t.name for t in read_signature(path).outputs if t.role == "output"]
    rng = np.random.default_rng(1)
    time = 6 if name == "fixed_time" else 7
    for batch in (1, 4):
        arrays = _inputs(model, batch, time, rng)
        got = predictor.predict(arrays if len(arrays) > 1 else arrays[0])
        for out_name, expected in zip(names, _keras(model, arrays)):
            np.testing.assert_allclose(got[out_name], expected, atol=ATOL, rtol=0)

    if name not in NO_PADDING_CHECK:
        _check_padded_equals_one_by_one(model, predictor, names, name in MASKED)


def _check_padded_equals_one_by_one(model, predictor, names, masked):
    lengths = np.array([7, 4, 2], np.int32)
    arrays = _pad(_inputs(model, 3, 7, np.random.default_rng(2)), lengths, model)
    feed = arrays if len(arrays) > 1 else arrays[0]
    padded = predictor.predict(feed, lengths=lengths)
    per_step = {t.name for t in predictor.signature.outputs if t.per_step}
    for row, n in enumerate(lengths):
        one = [
            a[row : row + 1, :n] if a.ndim >= 2 and a.shape[1] == 7 else a[row : row + 1]
            for a in arrays
        ]
        for out_name, expected in zip(names, _keras(model, one)):
            got = padded[out_name][row : row + 1]
            got = got[:, :n] if out_name in per_step else got
            np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0, err_msg=out_name)
    if masked:  # the mask alone (full lengths) gives the same valid steps as Keras' mask
        by_mask = predictor.predict(feed)
        for out_name, expected in zip(names, _keras(model, arrays)):
            for row, n in enumerate(lengths):
                stop = n if out_name in per_step else None
                np.testing.assert_allclose(
                    by_mask[out_name][row, :stop], expected[row, :stop], atol=ATOL, rtol=0
                )
