"""Recurrent models from PyTorch and ONNX as gated layers, gate by gate, and back to PyTorch.

- :func:`from_torch`: a ``torch.nn.LSTM``/``torch.nn.GRU`` as a list of gated layers;
  :func:`to_torch` builds the module back.
- :func:`from_onnx`: every ``LSTM``/``GRU`` node of an ONNX file as a gated layer.

The layers then open like any other (``get_gate_weights``, ``keras_gates.inspect``). torch and
onnx are imported only when a function needs them; neither needs TensorFlow.
"""

from __future__ import annotations

from .onnx_nodes import OnnxImportError, from_onnx
from .torch_modules import from_torch, to_torch

__all__ = ["OnnxImportError", "from_onnx", "from_torch", "to_torch"]
