"""keras_gates.interop checked against the frameworks the weights come from, on one backend.

Run by tests/test_interop.py in one child process per Keras backend (``KERAS_BACKEND``), with
torch on the path (tests/torch_cache.py) and ``KERAS_GATES_INTEROP_FILES`` naming the folder
where the parent wrote ONNX files exported by tf2onnx (Keras' own export) and by keras-gates,
with the inputs and the outputs of the Keras layers they came from (its ``write_onnx_files``).
The file name keeps pytest from collecting it in the main run, where torch is not installed.

Witnesses: PyTorch's own forward pass (packed sequences for padded batches), the original Keras
layers' outputs, onnxruntime running the file, and the torch weights sliced by hand.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from keras import ops

from keras_gates.interop import from_onnx, from_torch, to_torch
from tests.reference import FP32_ATOL

STEPS, FEATURES, UNITS = 6, 3, 4
LENGTHS = np.array([6, 4, 2])  # a padded batch; the full one is every row at 6 steps
# Pairwise coverage of (layers, bidirectional, bias), for each of LSTM and GRU.
MODULES = [(1, False, True), (1, True, False), (2, False, False), (2, True, True)]
CASES = [(kind, *case) for kind in ("LSTM", "GRU") for case in MODULES]


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, mask)``: a padded batch (zeros past each length) and its mask."""
    x = np.random.default_rng(seed).standard_normal((len(LENGTHS), STEPS, FEATURES))
    mask = np.arange(STEPS)[None, :] < LENGTHS[:, None]
    return (x * mask[..., None]).astype("float32"), mask


def apply(layers, x, mask=None) -> np.ndarray:
    for layer in layers:
        x = layer(x, mask=mask)
    return ops.convert_to_numpy(x)


# ----------------------------------------------------------------------------------- PyTorch
@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


def _module(torch, kind, num_layers, bidirectional, bias):
    torch.manual_seed(num_layers * 4 + bidirectional * 2 + bias)
    module = getattr(torch.nn, kind)(
        FEATURES, UNITS, num_layers=num_layers, bidirectional=bidirectional, bias=bias,
        batch_first=True,
    )  # fmt: skip
    return module.eval()


def _torch_outputs(torch, module, x, lengths=None) -> np.ndarray:
    """The module's output sequence; for ``lengths``, as a packed sequence (zeros past them)."""
    with torch.no_grad():
        if lengths is None:
            return module(torch.from_numpy(x))[0].numpy()
        rnn = torch.nn.utils.rnn
        packed = rnn.pack_padded_sequence(
            torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
        )
        out, _ = rnn.pad_packed_sequence(module(packed)[0], batch_first=True, total_length=STEPS)
        return out.numpy()


def _check_against_torch(torch, module, layers) -> None:
    x, mask = batch()
    full = np.random.default_rng(1).standard_normal(x.shape).astype("float32")
    np.testing.assert_allclose(
        apply(layers, full), _torch_outputs(torch, module, full), atol=FP32_ATOL
    )
    got, want = apply(layers, x, mask), _torch_outputs(torch, module, x, LENGTHS)
    np.testing.assert_allclose(got[mask], want[mask], atol=FP32_ATOL)  # padded steps: no output


@pytest.mark.parametrize("kind, num_layers, bidirectional, bias", CASES)
def test_torch_from_and_to(torch, kind, num_layers, bidirectional, bias):
    module = _module(torch, kind, num_layers, bidirectional, bias)
    layers = from_torch(module)
    assert len(layers) == num_layers
    assert all(type(layer).__name__ == ("Bidirectional" if bidirectional else f"Gated{kind}")
               for layer in layers)  # fmt: skip
    _check_against_torch(torch, module, layers)
    back = to_torch(layers)
    assert type(back) is type(module) and back.num_layers == num_layers and back.batch_first
    x = batch(2)[0]
    np.testing.assert_allclose(
        _torch_outputs(torch, back, x), _torch_outputs(torch, module, x), atol=FP32_ATOL
    )


def test_torch_gate_is_a_slice_of_the_fused_weight(torch):
    """PyTorch's ifgo (LSTM) and rzn (GRU) read by hand: the gate's rows of the fused weight."""
    lstm = _module(torch, "LSTM", 2, True, True)
    layer = from_torch(lstm)[1].backward_layer  # layer 1, reverse direction
    weights = layer.get_gate_weights()
    w_ih, b_ih, b_hh = (
        getattr(lstm, f"{name}_l1_reverse").detach().numpy()
        for name in ("weight_ih", "bias_ih", "bias_hh")
    )
    np.testing.assert_array_equal(weights["forget"]["kernel"], w_ih[UNITS : 2 * UNITS].T)
    np.testing.assert_array_equal(weights["output"]["kernel"], w_ih[3 * UNITS :].T)
    np.testing.assert_allclose(weights["candidate"]["bias"], (b_ih + b_hh)[2 * UNITS : 3 * UNITS])
    gru = _module(torch, "GRU", 1, False, True)
    weights = from_torch(gru)[0].get_gate_weights()
    w_hh = gru.weight_hh_l0.detach().numpy()
    np.testing.assert_array_equal(weights["update"]["recurrent_kernel"], w_hh[UNITS : 2 * UNITS].T)
    np.testing.assert_array_equal(weights["reset"]["recurrent_kernel"], w_hh[:UNITS].T)
    np.testing.assert_array_equal(
        weights["candidate"]["recurrent_bias"], gru.bias_hh_l0.detach().numpy()[2 * UNITS :]
    )


def test_torch_refusals(torch):
    with pytest.raises(ValueError, match="proj_size=2"):
        from_torch(torch.nn.LSTM(FEATURES, UNITS, proj_size=2))
    with pytest.raises(TypeError, match="torch.nn.LSTM or torch.nn.GRU, got RNN"):
        from_torch(torch.nn.RNN(FEATURES, UNITS))
    lstm, gru = from_torch(torch.nn.LSTM(FEATURES, UNITS)), from_torch(torch.nn.GRU(UNITS, UNITS))
    with pytest.raises(ValueError, match="one kind"):
        to_torch([*lstm, *gru])


@pytest.mark.parametrize("kind, num_layers, bidirectional, bias", CASES[::3])
def test_torch_onnx_export(torch, tmp_path, kind, num_layers, bidirectional, bias):
    """torch.onnx.export's nodes, read back: the torch module's outputs again."""
    module = _module(torch, kind, num_layers, bidirectional, bias)
    path = tmp_path / "torch.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and batch notices
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, STEPS, FEATURES),), str(path), dynamo=False)
    layers = from_onnx(path)
    assert len(layers) == num_layers, list(layers)
    _check_against_torch(torch, module, list(layers.values()))


# ----------------------------------------------------------------- ONNX files of the parent
def onnx_folder() -> Path:
    folder = os.environ.get("KERAS_GATES_INTEROP_FILES")
    if not folder:
        pytest.fail("KERAS_GATES_INTEROP_FILES is not set: tests/test_interop.py sets it")
    return Path(folder)


def check_onnx_files(folder: Path) -> None:
    """Every node of every file in ``folder`` (tests/test_interop.py writes them) read by from_onnx
    computes what the Keras layer it was exported from computed, on a padded and a full batch."""
    index = json.loads((folder / "index.json").read_text())
    for name, expected_nodes in index.items():
        layers = from_onnx(folder / f"{name}.onnx")
        assert list(layers) == expected_nodes, (name, list(layers))
        arrays = np.load(folder / f"{name}.npz")
        for i, layer in enumerate(layers.values()):
            for case in ("full", "padded"):
                mask = arrays["mask"] if case == "padded" else None
                got = apply([layer], arrays[f"x_{case}_{i}"], mask)
                np.testing.assert_allclose(
                    got, arrays[f"y_{case}_{i}"], atol=FP32_ATOL, err_msg=f"{name} {i} {case}"
                )


def test_onnx_files_of_tf2onnx_and_keras_gates():
    check_onnx_files(onnx_folder())
