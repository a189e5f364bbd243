"""What the int8 handlers share: symmetric per-row quantization, zeroing the padding."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

MS_DOMAIN = "com.microsoft"
LEVELS = 127  # folded weights: 8 bits
DYNAMIC_LEVELS = 63  # weights of the uint8 x int8 kernels: 7 bits (see export/quantize.py)


def quantize_rows(
    weight: np.ndarray, axis: int, levels: int = LEVELS
) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 values, float32 scales)``, one symmetric scale per index of ``axis``:
    ``weight ~ values * scale`` with ``|values| <= levels``."""
    others = tuple(i for i in range(weight.ndim) if i != axis)
    peak = np.abs(weight).max(axis=others, keepdims=True)
    scale = np.where(peak > 0, peak / levels, 1.0).astype(np.float32)
    return np.clip(np.round(weight / scale), -levels, levels).astype(np.int8), scale


def zero_padding(name: str, x: str, lengths: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes zeroing ``x`` ``[T, B, I]`` past each row's length, and the result's name: the
    input is quantized with one scale per tensor, which garbage in the padding would widen."""
    p = f"{name}.pad_mask"
    make = helper.make_node
    nodes = [
        make("Shape", [x], [f"{p}.shape"], name=f"{p}.shape", start=0, end=1),
        make("Squeeze", [f"{p}.shape"], [f"{p}.steps"], name=f"{p}.steps"),
        make("Constant", [], [f"{p}.zero"], name=f"{p}.zero", value_int=0),
        make("Constant", [], [f"{p}.one"], name=f"{p}.one", value_int=1),
        make("Range", [f"{p}.zero", f"{p}.steps", f"{p}.one"], [f"{p}.t"], name=f"{p}.t"),
        make("Constant", [], [f"{p}.axis1"], name=f"{p}.axis1", value_ints=[1]),
        make("Unsqueeze", [f"{p}.t", f"{p}.axis1"], [f"{p}.tcol"], name=f"{p}.tcol"),
        make("Cast", [lengths], [f"{p}.lengths"], name=f"{p}.lengths", to=TensorProto.INT64),
        make("Less", [f"{p}.tcol", f"{p}.lengths"], [f"{p}.valid"], name=f"{p}.valid"),
        make("Cast", [f"{p}.valid"], [f"{p}.float"], name=f"{p}.float", to=TensorProto.FLOAT),
        make("Constant", [], [f"{p}.axis2"], name=f"{p}.axis2", value_ints=[2]),
        make("Unsqueeze", [f"{p}.float", f"{p}.axis2"], [p], name=p),
        make("Mul", [x, p], [f"{name}.X"], name=f"{name}.X"),
    ]
    return nodes, f"{name}.X"
