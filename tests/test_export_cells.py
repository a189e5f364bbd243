"""``keras.layers.RNN`` over gated cells exports as native nodes (issue 14, case 1).

One cell or a stacked list (a chain of nodes), ``go_backwards``, ``Bidirectional``, masks,
``return_state`` and streaming; padded rows with garbage compared with Keras on each row alone and
with the numpy reference of the gated equations (``tests/reference.py``).
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
import pytest

from keras_gates import GatedGRUCell, GatedLSTMCell
from keras_gates.export import Predictor, to_onnx
from tests import reference
from tests.export_helpers import dense, keras_row, padded, randomize

ATOL = reference.FP32_ATOL
L = keras.layers


def stacked_cells():
    inp = keras.Input((None, 4), name="x")
    x = L.RNN([GatedGRUCell(8), GatedGRUCell(8)], name="rnn")(inp)
    return keras.Model(inp, L.Dense(2, name="dense")(x))


def single_cell():
    inp = keras.Input((None, 4), name="x")
    x = L.RNN(GatedLSTMCell(8), name="rnn")(inp)
    return keras.Model(inp, L.Dense(2, name="dense")(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cells")
    out = {}
    for name, build in {"stacked": stacked_cells, "single": single_cell}.items():
        model = randomize(build())
        result = to_onnx(model, folder / f"{name}.onnx", print_fn=None)
        out[name] = (model, result, folder / f"{name}.onnx", "")
    return out


def test_rnn_over_cells_is_native_and_exact_on_padded_rows(exported):
    rng = np.random.default_rng(1)
    lengths = np.array([29, 12, 5, 1], np.int32)
    for name in ("stacked", "single"):
        model, result, path, _ = exported[name]
        counts = result.op_counts
        assert counts.get("Loop", 0) == 0 and counts.get("Scan", 0) == 0
        assert counts.get("GRU", 0) + counts.get("LSTM", 0) == (2 if name == "stacked" else 1)
        assert not result.signature.padding_refusals
        x = padded(rng, 4, 29, 4, lengths)
        got = Predictor(path, device="cpu").predict(x, lengths=lengths)["dense"]
        cells = model.get_layer("rnn").cell
        cells = cells.cells if hasattr(cells, "cells") else [cells]
        for row, n in enumerate(lengths):
            alone = x[row : row + 1, :n]
            np.testing.assert_allclose(got[row], keras_row(model, alone)[0], atol=ATOL, rtol=0)
            h = alone.astype("float64")
            for cell in cells:
                weights = cell.get_gate_weights()
                if name == "stacked":
                    h, last = reference.gru(h, weights)
                else:
                    h, last, _ = reference.lstm(h, weights)
            np.testing.assert_allclose(got[row], dense(model, last)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "build, counts",
    [
        (
            lambda: L.RNN(
                [GatedLSTMCell(5), GatedLSTMCell(4, use_peepholes=True)],
                return_sequences=True,
                go_backwards=True,
            ),
            {"LSTM": 2},
        ),
        (
            lambda: L.Bidirectional(
                L.RNN([GatedGRUCell(4), GatedGRUCell(3, reset_after=False)], return_sequences=True),
                merge_mode="sum",
            ),
            {"GRU": 4},
        ),
        (lambda: L.Bidirectional(L.RNN(GatedLSTMCell(4)), merge_mode="concat"), {"LSTM": 2}),
    ],
    ids=["stacked_backwards", "bidi_stacked", "bidi_single"],
)
def test_rnn_over_cells_variants(tmp_path, build, counts):
    inp = keras.Input((None, 3), name="x")
    model = randomize(keras.Model(inp, build()(L.Masking(0.0)(inp))))
    result = to_onnx(model, tmp_path / "v.onnx", print_fn=None)
    assert {k: result.op_counts.get(k, 0) for k in counts} == counts
    assert result.op_counts.get("Loop", 0) == 0
    assert not result.signature.padding_refusals
    padded_rows = [r for r in result.validation.rows if r.padded]
    assert padded_rows and all(r.error <= ATOL for r in padded_rows)


def test_rnn_over_cells_return_state_and_streaming(tmp_path):
    inp = keras.Input((None, 3), name="x")
    y, s1, s2 = L.RNN([GatedLSTMCell(4), GatedLSTMCell(3)], return_state=True, name="rnn")(inp)
    model = randomize(keras.Model(inp, [y, *s1, *s2]))
    result = to_onnx(model, tmp_path / "s.onnx", print_fn=None)
    assert result.validation.passed and result.op_counts["LSTM"] == 2
    stateful = randomize(
        keras.Sequential(
            [keras.Input((None, 3), batch_size=2), L.RNN(GatedGRUCell(4), stateful=True)]
        )
    )
    result = to_onnx(stateful, tmp_path / "stateful.onnx", print_fn=None)
    assert result.signature.streaming and result.validation.passed
    chunks = np.random.default_rng(4).normal(size=(3, 2, 4, 3)).astype("float32")
    stateful.layers[0].reset_states()
    expected = [np.asarray(stateful(c)) for c in chunks]
    stream = Predictor(tmp_path / "stateful.onnx", device="cpu").stream()
    for chunk, want in zip(chunks, expected):
        got = stream.step(chunk)[result.signature.outputs[0].name]
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_opset_13(tmp_path):
    model = randomize(stacked_cells())
    result = to_onnx(model, tmp_path / "o13.onnx", opset=13, print_fn=None)
    proto = onnx.load(tmp_path / "o13.onnx")
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {13}
    assert result.validation.passed and result.op_counts["GRU"] == 2
