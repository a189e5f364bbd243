"""An int8 LSTM that is faster than float32 at small batches and never slower at larger ones.

onnxruntime's ``DynamicQuantizeLSTM`` multiplies by 8-bit W and R each step, quantizing the
input and the hidden state at run time: 2-3.5x faster than the float32 ``LSTM`` at batch 1 from
128 units. From a few rows on, and at any batch for narrow layers, its per-step quantization of
``h`` costs more than the int8 product saves (0.9x float32 at batch 64 and 128 units, measured
on an AVX2 CPU without VNNI; :data:`UNITS_PER_INT8_ROW`). So from 64 units the node becomes

    If batch < float_from_batch(units):
        DynamicQuantizeLSTM(X with the padding zeroed, W.int8, R.int8, ...)
    else:
        LSTM(X, W.int8 * W.scale, R.int8 * R.scale, ...)     # float32 on the same 8-bit weights

Both branches read the same 8-bit initializers: the file holds each weight once. The float
branch's ``Cast * scale`` is folded by onnxruntime when the session starts (the weights are
then held in float32 too, and packed like the float32 export's). Narrower layers keep the
float32 ``LSTM`` on 8-bit constants only (``export/quantize.py``), as narrow GRUs do.

W ``[D, I, 4U]`` and R ``[D, U, 4U]`` have one scale per direction and gate row. One scale
per direction for R would be faster at batch 1 (onnxruntime then skips its per-column output
path on every step: 10% at 128 units), but on a trained character model (GatedLSTM(128)) it
took the error from 2.4% to 7.4% of the output range (4.4% with the clipping of least squared
error), so the rows keep their own scales.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .int8_ops import (
    MS_DOMAIN,
    batch_switch,
    branch,
    branch_outputs,
    dynamic_weight,
    float_weight,
    zero_padding,
)

# Where DynamicQuantizeLSTM beats the float32 LSTM (benchmarks/quantize.py --crossover; one
# thread, AVX2 without VNNI, 100 steps): below about units / 32 rows, never from 5 rows on
# (128 units: 1.92x at batch 1, 1.02x at 4, 0.97x at 5; 512 units: 3.35x at 1, 1.00x at 5), and
# at no batch below 64 units (0.72x at batch 1 for 32 units). README "int8 export" has the table.
UNITS_PER_INT8_ROW = 32
MAX_FLOAT_FROM_BATCH = 5


def float_from_batch(units: int) -> int:
    """The batch size from which the float32 ``LSTM`` is the faster one at ``units`` (1: at
    every batch)."""
    return max(1, min(MAX_FLOAT_FROM_BATCH, units // UNITS_PER_INT8_ROW))


def int8_lstm(
    node: onnx.NodeProto, w: np.ndarray, r: np.ndarray, name: str, threshold: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers replacing the ``LSTM`` ``node`` (W ``[D, 4U, I]``, R
    ``[D, 4U, U]`` in ONNX's layout): ``DynamicQuantizeLSTM`` below ``threshold`` rows."""
    inits = _weights(name, w, r)
    inputs = list(node.input) + [""] * (8 - len(node.input))
    small = _int8_branch(node, inputs, list(node.output), name)
    large = _float_branch(node, inputs, list(node.output), name)
    nodes, limit = batch_switch(name, inputs[0], list(node.output), threshold, small, large)
    return nodes, [*inits, limit]


def _weights(name: str, w: np.ndarray, r: np.ndarray) -> list[onnx.TensorProto]:
    """``<name>.{W,R}.{int8,scale,zero_point}`` in ``DynamicQuantizeLSTM``'s layout (``[D, in,
    4U]``), one scale per direction and gate row."""
    inits = []
    for key, array in (("W", w), ("R", r)):  # [D, 4U, in] -> [D, in, 4U]: rows become columns
        inits += dynamic_weight(f"{name}.{key}", np.transpose(array, (0, 2, 1)))
    return inits


def _int8_branch(
    node: onnx.NodeProto, inputs: list[str], outputs: list[str], name: str
) -> onnx.GraphProto:
    """``DynamicQuantizeLSTM`` on the input zeroed past each length."""
    lengths = inputs[4]
    nodes, x = ([], inputs[0]) if not lengths else zero_padding(f"{name}.int8", inputs[0], lengths)
    ins = [x, f"{name}.W.int8", f"{name}.R.int8", *inputs[3:8]]
    ins += [f"{name}.{k}.{p}" for k in ("W", "R") for p in ("scale", "zero_point")]
    outs = branch_outputs(outputs, "int8")
    lstm = helper.make_node("DynamicQuantizeLSTM", ins, outs, name=f"{name}.int8", domain=MS_DOMAIN)
    lstm.attribute.extend(a for a in node.attribute if a.name != "layout")
    return branch(f"{name}.int8", [*nodes, lstm], outs)


def _float_branch(
    node: onnx.NodeProto, inputs: list[str], outputs: list[str], name: str
) -> onnx.GraphProto:
    """The float32 ``LSTM`` on ``Transpose(Cast(<key>.int8) * <key>.scale)`` (folded)."""
    nodes, weights = [], []
    for key in ("W", "R"):  # [D, in, 4U] * [D, 1, 4U] -> [D, 4U, in]
        made, weight = float_weight(
            f"{name}.float.{key}", f"{name}.{key}.int8", f"{name}.{key}.scale", [1], [0, 2, 1]
        )
        nodes += made
        weights.append(weight)
    outs = branch_outputs(outputs, "float")
    lstm = helper.make_node("LSTM", [inputs[0], *weights, *inputs[3:8]], outs, name=f"{name}.float")
    lstm.attribute.extend(node.attribute)
    return branch(f"{name}.float", [*nodes, lstm], outs)
