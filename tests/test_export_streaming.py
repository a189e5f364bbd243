"""Streaming exports: state inputs/outputs per gated layer; chunked runs equal whole runs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.export import ExportError, Predictor, read_signature, to_onnx
from tests.reference import EXPORT_ATOL

ATOL = EXPORT_ATOL  # tests/reference.py says why


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def test_chunked_stream_equals_whole_sequence(tmp_path):
    model = _randomize(
        keras.Sequential(
            [
                keras.Input((None, 3)),
                GatedLSTM(5, return_sequences=True, use_peepholes=True),
                GatedGRU(4, return_sequences=True),
                keras.layers.Dense(2),
            ]
        )
    )
    path = tmp_path / "stream.onnx"
    result = to_onnx(model, path, streaming=True, print_fn=None)
    assert result.validation.passed
    signature = read_signature(path)
    lstm, gru = model.layers[0].name, model.layers[1].name
    assert signature.state_pairs == (
        (f"{lstm}.h_in", f"{lstm}.h_out"),
        (f"{lstm}.c_in", f"{lstm}.c_out"),
        (f"{gru}.h_in", f"{gru}.h_out"),
    )
    x = np.random.default_rng(3).normal(size=(2, 12, 3)).astype("float32")
    predictor = Predictor(path, device="cpu")
    out = signature.outputs[0].name
    whole = predictor.predict(x)[out]
    np.testing.assert_allclose(whole, np.asarray(model(x)), atol=ATOL, rtol=0)
    stream = predictor.stream()
    parts = [stream.step(x[:, a:b])[out] for a, b in ((0, 5), (5, 6), (6, 12))]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=ATOL, rtol=0)
    assert set(stream.states) == {name for name, _ in signature.state_pairs}
    stream.reset()
    np.testing.assert_allclose(stream.step(x[:, :5])[out], whole[:, :5], atol=ATOL, rtol=0)


def test_streaming_with_a_static_input_beside_the_sequence(tmp_path):
    # Validation cuts only the sequence into chunks; the static input goes whole with each chunk.
    sequence, static = keras.Input((None, 3), name="seq"), keras.Input((2,), name="static")
    h = GatedLSTM(4)(sequence)
    y = keras.layers.Dense(1, name="y")(keras.layers.Concatenate()([h, static]))
    model = _randomize(keras.Model([sequence, static], y))
    path = tmp_path / "static.onnx"
    result = to_onnx(model, path, streaming=True, print_fn=None)
    assert result.validation.passed
    assert {row.case for row in result.validation.rows} >= {"full", "2 chunks"}
    rng = np.random.default_rng(4)
    x, s = rng.normal(size=(2, 8, 3)).astype("float32"), rng.normal(size=(2, 2)).astype("float32")
    stream = Predictor(path, device="cpu").stream()
    stream.step({"seq": x[:, :3], "static": s})
    last = stream.step({"seq": x[:, 3:], "static": s})["y"]
    np.testing.assert_allclose(last, np.asarray(model([x, s])), atol=ATOL, rtol=0)


def test_stateful_model_exports_as_streaming(tmp_path):
    model = _randomize(
        keras.Sequential([keras.Input((None, 3), batch_size=2), GatedGRU(4, stateful=True)])
    )
    result = to_onnx(model, tmp_path / "stateful.onnx", print_fn=None)
    assert result.signature.streaming and result.validation.passed
    chunks = np.random.default_rng(4).normal(size=(3, 2, 4, 3)).astype("float32")
    model.layers[0].reset_states()
    expected = [np.asarray(model(c)) for c in chunks]  # Keras carries the state itself
    stream = Predictor(tmp_path / "stateful.onnx", device="cpu").stream()
    for chunk, want in zip(chunks, expected):
        got = stream.step(chunk)[result.signature.outputs[0].name]
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "layer, match",
    [
        (lambda: keras.layers.Bidirectional(GatedLSTM(4)), "Bidirectional.*streaming"),
        (lambda: GatedLSTM(4, go_backwards=True), "go_backwards=True.*streaming"),
    ],
)
def test_streaming_rejects_backward_layers(tmp_path, layer, match):
    model = keras.Sequential([keras.Input((None, 3)), layer()])
    with pytest.raises(ValueError, match=match):
        to_onnx(model, tmp_path / "x.onnx", streaming=True, print_fn=None)
    assert not list(tmp_path.iterdir())


def test_stateful_model_refuses_streaming_false(tmp_path):
    model = keras.Sequential([keras.Input((None, 3), batch_size=1), GatedLSTM(4, stateful=True)])
    with pytest.raises(ValueError, match="streaming=False.*stateful"):
        to_onnx(model, tmp_path / "x.onnx", streaming=False, print_fn=None)


def test_streaming_refuses_a_layer_called_twice(tmp_path):
    a, b = keras.Input((None, 3), name="a"), keras.Input((None, 3), name="b")
    gru = GatedGRU(8, name="shared_gru")
    model = keras.Model([a, b], keras.layers.Concatenate()([gru(a), gru(b)]))
    with pytest.raises(ExportError) as caught:
        to_onnx(model, tmp_path / "x.onnx", streaming=True, print_fn=None)
    message = str(caught.value)
    assert "Layer 'shared_gru' (GatedGRU) is called more than once" in message
    assert "shared_gru.h_in" in message and "separate layer for each call" in message
    assert "without streaming" in message
    assert not list(tmp_path.iterdir())
    assert to_onnx(model, tmp_path / "x.onnx", print_fn=None).validation.passed  # no streaming
