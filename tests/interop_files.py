"""The ONNX files tests/interop_checks.py reads on every backend, written on TensorFlow.

``keras_export.onnx`` holds a stock LSTM and a Bidirectional LSTM exported by Keras (tf2onnx);
``keras_gates.onnx`` peepholes, coupled gates, hard_sigmoid, a GRU without reset_after running
backwards and a Bidirectional GRU, exported by ``keras_gates.export.to_onnx``. Next to each, the
Keras layers' inputs and outputs on a full and a padded batch, and ``index.json`` naming the
nodes in graph order.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import onnx

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.interop.onnx_nodes import recurrent_nodes
from tests.interop_checks import FEATURES, STEPS, UNITS, batch

# The nodes keras-gates writes, in graph order (tf2onnx names its nodes after TF's ops).
OURS_NODES = ["coupled", "backwards", "bi"]


def _record(arrays: dict, i: int, layer, full, padded, mask) -> tuple[np.ndarray, np.ndarray]:
    """Layer ``i``'s inputs and outputs on the full and the padded batch; returns the outputs."""
    y_full = keras.ops.convert_to_numpy(layer(full))
    y_padded = keras.ops.convert_to_numpy(layer(padded, mask=mask))
    arrays.update({f"x_full_{i}": full, f"y_full_{i}": y_full})
    arrays.update({f"x_padded_{i}": padded, f"y_padded_{i}": y_padded})
    return y_full, y_padded


def write_onnx_files(folder: Path) -> None:
    """Write the files (see the module docstring) into ``folder``."""
    from keras_gates.export import to_onnx

    x, mask = batch()
    keras.utils.set_random_seed(3)
    stock = [
        keras.layers.LSTM(UNITS, return_sequences=True),
        keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True)),
    ]
    inputs = keras.Input((STEPS, FEATURES))
    model = keras.Model(inputs, stock[1](stock[0](inputs)))
    model(x)
    with warnings.catch_warnings():  # Keras' tf2onnx patch probes np.object (a FutureWarning)
        warnings.simplefilter("ignore")
        model.export(str(folder / "keras_export.onnx"), format="onnx", verbose=False)
    arrays, full, padded = {"mask": mask}, batch(1)[0], x
    for i, layer in enumerate(stock):  # each feeds the next
        full, padded = _record(arrays, i, layer, full, padded, mask)
    np.savez(folder / "keras_export.npz", **arrays)

    peepholes = {"input": {"peephole": 0.5}, "output": {"peephole": -0.4}}
    coupled = GatedLSTM(
        UNITS, return_sequences=True, use_peepholes=True, coupled_input_forget=True,
        recurrent_activation="hard_sigmoid", gate_initializers=peepholes, name="coupled",
    )  # fmt: skip
    backwards = GatedGRU(
        UNITS, return_sequences=True, reset_after=False, go_backwards=True, name="backwards"
    )
    bi = keras.layers.Bidirectional(GatedGRU(UNITS, return_sequences=True), name="bi")
    inputs = keras.Input((None, FEATURES))
    model = keras.Model(inputs, bi(backwards(coupled(inputs))))
    to_onnx(model, folder / "keras_gates.onnx", validate=False, print_fn=None)
    arrays, full, padded = {"mask": mask}, batch(1)[0], x
    for i, layer in enumerate([coupled, backwards, bi]):
        full, padded = _record(arrays, i, layer, full, padded, mask)
    np.savez(folder / "keras_gates.npz", **arrays)

    index = {
        name: [key for key, _ in recurrent_nodes(onnx.load(folder / f"{name}.onnx"))]
        for name in ("keras_export", "keras_gates")
    }
    assert index["keras_gates"] == OURS_NODES, index
    assert len(index["keras_export"]) == 2, index  # tf2onnx wrote native LSTM nodes
    (folder / "index.json").write_text(json.dumps(index))
