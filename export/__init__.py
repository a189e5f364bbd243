"""Export Keras models with gated layers to ONNX (native LSTM/GRU nodes) and run them.

``to_onnx`` and ``ExportResult`` load the exporter (TensorFlow, tf2onnx) on first use, so that
``Predictor`` and ``write_triton_repo`` run without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from keras_gates.signature import METADATA_KEY, FeedError, Signature, TensorSpec, read_signature

from .errors import ExportError, ValidationError
from .predictor import Predictor, Stream
from .triton import write_triton_repo
from .validation_result import ValidationResult

if TYPE_CHECKING:
    from .exporter import ExportResult, to_onnx

_EXPORTER = ("ExportResult", "to_onnx")

__all__ = [
    "METADATA_KEY",
    "ExportError",
    "ExportResult",
    "FeedError",
    "Predictor",
    "Signature",
    "Stream",
    "TensorSpec",
    "ValidationError",
    "ValidationResult",
    "read_signature",
    "to_onnx",
    "write_triton_repo",
]


def __getattr__(name: str):
    if name in _EXPORTER:
        return getattr(importlib.import_module("keras_gates.export.exporter"), name)
    raise AttributeError(f"module 'keras_gates.export' has no attribute {name!r}")
