"""What the int8 handlers share: symmetric per-row quantization, zeroing the padding."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

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
    """Nodes zeroing ``x`` ``[T, B, I]`` past each row's ``lengths`` (int32), and the result's
    name: the input is quantized with one scale per tensor, which garbage in the padding (even
    inf or NaN) would widen."""
    p = f"{name}.pad_mask"
    make = helper.make_node
    one = numpy_helper.from_array(np.array([1], np.int32))
    nodes = [
        make("Shape", [x], [f"{p}.shape"], name=f"{p}.shape", start=0, end=2),
        make("ConstantOfShape", [f"{p}.shape"], [f"{p}.ones"], name=f"{p}.ones", value=one),
        make("Constant", [], [f"{p}.axis0"], name=f"{p}.axis0", value_int=0),
        make("CumSum", [f"{p}.ones", f"{p}.axis0"], [f"{p}.t"], name=f"{p}.t", exclusive=1),
        make("Less", [f"{p}.t", lengths], [f"{p}.valid"], name=f"{p}.valid"),  # [T, B]
        make("Constant", [], [f"{p}.axis2"], name=f"{p}.axis2", value_ints=[2]),
        make("Unsqueeze", [f"{p}.valid", f"{p}.axis2"], [p], name=p),
        make("Constant", [], [f"{p}.zero"], name=f"{p}.zero", value_float=0.0),
        make("Where", [p, x, f"{p}.zero"], [f"{name}.X"], name=f"{name}.X"),
    ]
    return nodes, f"{name}.X"
