"""What the int8 handlers share: symmetric per-row quantization, zeroing the padding, the
``If`` that runs an int8 design below a batch size and float32 on the same 8-bit weights from
there, and those float32 weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
LEVELS = 127  # folded weights: 8 bits
DYNAMIC_LEVELS = 63  # weights of the uint8 x int8 kernels: 7 bits (see export/quantize.py)


def quantize_rows(
    weight: np.ndarray, axis: int | tuple[int, ...], levels: int = LEVELS
) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 values, float32 scales)``, one symmetric scale per index of ``axis`` (or of the
    axes given): ``weight ~ values * scale`` with ``|values| <= levels``."""
    kept = axis if isinstance(axis, tuple) else (axis,)
    others = tuple(i for i in range(weight.ndim) if i not in kept)
    peak = np.abs(weight).max(axis=others, keepdims=True)
    scale = np.where(peak > 0, peak / levels, 1.0).astype(np.float32)
    return np.clip(np.round(weight / scale), -levels, levels).astype(np.int8), scale


def dynamic_weight(prefix: str, weight: np.ndarray) -> list[onnx.TensorProto]:
    """``<prefix>.int8``, ``.scale`` and ``.zero_point`` of ``weight`` ``[..., in, out]`` for the
    kernels that quantize their input at run time (``DynamicQuantizeLSTM``,
    ``DynamicQuantizeMatMul``): ``DYNAMIC_LEVELS``, one scale per output column (and leading
    index), zero points 0."""
    kept = tuple(i for i in range(weight.ndim) if i != weight.ndim - 2)
    values, scale = quantize_rows(weight, kept, DYNAMIC_LEVELS)
    scale = np.squeeze(scale, axis=-2)  # [..., out]
    return [
        numpy_helper.from_array(values, f"{prefix}.int8"),
        numpy_helper.from_array(scale, f"{prefix}.scale"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{prefix}.zero_point"),
    ]


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


def batch_switch(
    name: str,
    x: str,
    outputs: list[str],
    threshold: int,
    small: onnx.GraphProto,
    large: onnx.GraphProto,
) -> tuple[list[onnx.NodeProto], onnx.TensorProto]:
    """Nodes making ``outputs`` with ``small`` when ``x`` (``[T, B, ...]``) has fewer than
    ``threshold`` rows, else with ``large`` (graphs from :func:`branch`), and the threshold's
    initializer."""
    make = helper.make_node
    batch, below, limit = f"{name}.switch.rows", f"{name}.switch.below", f"{name}.float_from_batch"
    nodes = [
        make("Shape", [x], [batch], name=batch, start=1, end=2),
        make("Less", [batch, limit], [f"{below}.1"], name=f"{below}.1"),
        make("Squeeze", [f"{below}.1"], [below], name=below),
        make(
            "If",
            [below],
            [o for o in outputs if o],
            name=name,
            then_branch=small,
            else_branch=large,
        ),
    ]
    return nodes, numpy_helper.from_array(np.array([threshold], np.int64), limit)


def branch_outputs(outputs: list[str], branch: str) -> list[str]:
    """The names a branch gives ``outputs`` (empty ones stay empty)."""
    return [f"{o}.{branch}" if o else "" for o in outputs]


def branch(name: str, nodes: list[onnx.NodeProto], outputs: list[str]) -> onnx.GraphProto:
    """One branch of :func:`batch_switch`: ``nodes`` making ``outputs`` (branch names)."""
    values = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs if o]
    return helper.make_graph(nodes, name, [], values)


def float_weight(name: str, values: str, scale: str, axes: list[int], perm: list[int]):
    """Nodes making float32 ``name`` = ``Transpose(Cast(values) * Unsqueeze(scale, axes),
    perm)`` of 8-bit initializers (folded once when the session starts), and ``name``."""
    make = helper.make_node
    nodes = [
        make("Cast", [values], [f"{name}.cast"], name=f"{name}.cast", to=TensorProto.FLOAT),
        make("Constant", [], [f"{name}.axes"], name=f"{name}.axes", value_ints=axes),
        make("Unsqueeze", [scale, f"{name}.axes"], [f"{name}.scale"], name=f"{name}.scale"),
        make("Mul", [f"{name}.cast", f"{name}.scale"], [f"{name}.mul"], name=f"{name}.mul"),
        make("Transpose", [f"{name}.mul"], [name], name=name, perm=perm),
    ]
    return nodes, name
