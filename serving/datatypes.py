"""The Open Inference Protocol's vocabulary: datatypes (their numpy dtypes and onnxruntime type
names) and how tensor shapes are written.

The one place these live; the codecs (HTTP, gRPC), the documents, validation and the runtime read
them.
"""

from __future__ import annotations

import numpy as np

# Open Inference Protocol datatype <-> numpy dtype (BYTES is not a numeric tensor: never a model
# input here, but the codec must name it to reject it clearly).
V2_TO_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items()}
ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def protocol_shape(shape: tuple[int | None, ...]) -> list[int]:
    """A model tensor's shape (``None`` for a free dim) as the protocol's metadata writes it:
    ``-1`` for free dims.

    A ``[batch]`` tensor (``shape == (None,)``, such as ``lengths``) is advertised as ``[-1, 1]``:
    Triton needs at least one dim besides the batch, so the repository ``--triton-repo`` writes
    gives it ``dims: [1]`` with ``reshape: { shape: [] }``, and both servers speak the same shapes.
    """
    if shape == (None,):
        return [-1, 1]
    return [-1 if d is None else d for d in shape]
