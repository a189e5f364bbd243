"""Export Keras models with gated layers to ONNX (native LSTM/GRU nodes) and run them."""

from .errors import ExportError
from .exporter import ExportResult, to_onnx
from .predictor import Predictor, Stream
from keras_gates.signature import METADATA_KEY, FeedError, Signature, TensorSpec, read_signature
from .triton import write_triton_repo
from .validate import ValidationError, ValidationResult

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
