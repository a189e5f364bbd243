"""The PyTorch gate orders in keras_gates/gates.py, checked against torch.nn.LSTM/GRU themselves:
weights taken from PyTorch with ``gates.split(..., TORCH_*)`` give a gated layer that computes
what PyTorch computes. Also ``gates.reorder`` between two real layouts."""

from __future__ import annotations

import numpy as np
import pytest
from keras.ops import convert_to_numpy as to_numpy

from keras_gates import GatedGRU, GatedLSTM, gates
from tests.reference import FP32_ATOL

# torch and TensorFlow stay out of one process: where torch is not in the venv (make test puts it
# in tests/torch_cache.py's folder), this file runs in the PyTorch child of tests/test_backends.py.
torch = pytest.importorskip(
    "torch", reason="torch is not in this venv; tests/test_backends.py runs this file on PyTorch"
)

X = np.random.default_rng(5).standard_normal((3, 7, 4)).astype("float32")


def _torch_weights(module, order) -> dict[str, dict[str, np.ndarray]]:
    """``{gate: {part: array}}`` in keras-gates' (input, units) layout from a 1-layer module."""
    parts = {
        "kernel": module.weight_ih_l0.detach().numpy().T,
        "recurrent_kernel": module.weight_hh_l0.detach().numpy().T,
        "bias": module.bias_ih_l0.detach().numpy(),
        "recurrent_bias": module.bias_hh_l0.detach().numpy(),
    }
    split = {part: gates.split(value, order) for part, value in parts.items()}
    return {gate: {part: split[part][gate] for part in parts} for gate in order}


def test_torch_gru_order():
    torch.manual_seed(0)
    reference = torch.nn.GRU(4, 5, batch_first=True)
    want = reference(torch.from_numpy(X))[0].detach().numpy()
    layer = GatedGRU(5, return_sequences=True)  # reset_after: PyTorch's formulation
    layer.build(X.shape)
    layer.set_gate_weights(_torch_weights(reference, gates.TORCH_GRU))
    np.testing.assert_allclose(to_numpy(layer(X)), want, atol=FP32_ATOL)


def test_torch_lstm_order():
    torch.manual_seed(0)
    reference = torch.nn.LSTM(4, 5, batch_first=True)
    want = reference(torch.from_numpy(X))[0].detach().numpy()
    weights = _torch_weights(reference, gates.TORCH_LSTM)
    for parts in weights.values():  # PyTorch has two bias vectors where Keras has their sum
        parts["bias"] = parts["bias"] + parts.pop("recurrent_bias")
    layer = GatedLSTM(5, return_sequences=True)
    layer.build(X.shape)
    layer.set_gate_weights(weights)
    np.testing.assert_allclose(to_numpy(layer(X)), want, atol=FP32_ATOL)


def test_reorder_between_torch_and_keras_gru_layouts():
    torch.manual_seed(1)
    module = torch.nn.GRU(4, 5)
    fused_torch = module.weight_ih_l0.detach().numpy().T  # (4, 15) in PyTorch's r, z, n
    keras_layout = gates.reorder(fused_torch, gates.TORCH_GRU, gates.KERAS_GRU)
    per_gate = gates.split(fused_torch, gates.TORCH_GRU)
    np.testing.assert_array_equal(keras_layout, gates.fuse(per_gate, gates.KERAS_GRU))
    np.testing.assert_array_equal(keras_layout[:, :5], per_gate["update"])
    back = gates.reorder(keras_layout, gates.KERAS_GRU, gates.TORCH_GRU)
    np.testing.assert_array_equal(back, fused_torch)
