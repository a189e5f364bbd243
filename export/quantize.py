"""The quantize stage: the float ONNX model -> the same model with its weights stored in 8 bits.

One handler per operator type, registered with ``@quantizes(op_type)``; each takes one node and
the float initializers and returns the nodes that replace it with their 8-bit initializers (or
``None`` to leave the node as it is). The designs were measured (``benchmarks/quantize.py``,
README "int8 export"), one thread, 100 steps:

- ``LSTM`` (:mod:`.lstm_int8`), from 64 units -> an ``If`` on the batch size: below a few rows
  onnxruntime's ``DynamicQuantizeLSTM`` (W and R in 8 bits per gate row, the input and the
  hidden state quantized at run time; 2-3.5x faster at batch 1), from there the float32
  ``LSTM`` on the same 8-bit weights (where the int8 kernel is slower than float32); narrower,
  the same ``LSTM`` node on folded 8-bit weights, as below for the GRU.
- ``GRU`` (onnxruntime has no int8 GRU kernel), two designs by width:
  - from ``LOOP_MIN_UNITS`` (384) units, a ``Loop`` of int8 steps (:mod:`.gru_loop`): the input
    projection for all steps and ``h @ R`` each step through ``DynamicQuantizeMatMul``; 1.6x
    faster than float32 at batch 1 and 512 units, but its ~15 nodes a step cost more than a
    narrow float32 step (3.6x slower at 128 units, batch 1). Below 1024 units it sits behind
    the same ``If`` as the LSTM: from a few rows the float32 ``GRU`` on its 8-bit weights runs;
  - below, the same ``GRU`` node whose W and R are ``Cast(int8) * scale`` of 8-bit
    initializers: onnxruntime folds the constants once when the session starts and the node
    runs (and packs its weights) as in float32: the file is ~0.28x, the speed that of float32.
  Also measured and dropped: an int8 input projection ahead of a ``GRU`` whose W is the
  identity (1.4-4x slower: the node still multiplies by a 3U x 3U identity every step), and
  ``DequantizeLinear`` weights (not folded by onnxruntime, so not packed: up to 25% slower).
- ``MatMul`` with a constant 2-D weight (``Dense``) -> ``DynamicQuantizeMatMul``.
- ``Conv`` (``Conv1D``), ``Gemm`` and ``Gather`` on a constant table (``Embedding``) -> the
  same node reading ``Cast * scale`` of an 8-bit initializer (folded at session start).

Every weight gets one symmetric scale per output row. The kernels that quantize activations at
run time (``DynamicQuantizeLSTM``, ``DynamicQuantizeMatMul``) multiply ``uint8`` activations by
``int8`` weights; on CPUs without VNNI (AVX2) they sum pairs of products in 16 bits, which
saturate with full-range weights (measured: 6-15% of the output range off, what
``quantize_dynamic``'s defaults give). Their weights are ``int8`` in ``[-63, 63]`` (7 bits, like
``quantize_dynamic(reduce_range=True)``): as fast, 1% off. ``uint8`` weights (zero point 128)
would not saturate either but take a 35% slower ``uint8 x uint8`` kernel. The folded weights
(GRU, Conv, Gemm, Gather) are ``int8`` in ``[-127, 127]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ExportError
from .gru_loop import LOOP_MIN_UNITS, int8_gru
from .gru_loop import float_from_batch as gru_float_from_batch
from .int8_ops import MS_DOMAIN, dynamic_weight, quantize_rows
from .lstm_int8 import float_from_batch, int8_lstm

MODES = ("int8",)
DEFAULT_INT8_TOLERANCE = 0.02  # max abs error of the int8 file, relative to each output's range


@dataclasses.dataclass(frozen=True)
class Replacement:
    """What one handler puts in place of one node."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    kind: str  # how the node is quantized, for the metadata
    float_from_batch: int | None = None  # it runs float32 from this batch size on


@dataclasses.dataclass(frozen=True)
class Quantized:
    """The quantize stage's value: the 8-bit model and what was quantized (for the metadata)."""

    model: onnx.ModelProto
    mode: str
    nodes: dict[str, str]  # node name -> how it was quantized
    float_bytes: int
    bytes: int
    float_from_batch: int | None  # from this batch size every node runs float32 (8-bit weights)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "nodes": self.nodes,
            "float32_bytes": self.float_bytes,
            "bytes": self.bytes,
            "weights": "int8, one scale per output row; in [-63, 63] for the int8 kernels",
            "activations": "quantized at run time (DynamicQuantizeLSTM, DynamicQuantizeMatMul); "
            "other nodes compute in float32 from their 8-bit weights",
            "float_from_batch": self.float_from_batch,
        }


Handler = Callable[[onnx.NodeProto, "Weights"], Replacement | None]
_HANDLERS: dict[str, Handler] = {}


def quantizes(op_type: str) -> Callable[[Handler], Handler]:
    """Decorator: the function quantizes nodes of ``op_type``."""

    def register(handler: Handler) -> Handler:
        _HANDLERS[op_type] = handler
        return handler

    return register


def check_mode(quantize: Any) -> str | None:
    """``quantize`` if it is ``None`` or a supported mode, else a clear error."""
    if quantize is None or quantize in MODES:
        return quantize
    raise ExportError(
        f"Received an invalid value for argument `quantize`, expected one of {list(MODES)} or "
        f"None (float32), got {quantize!r}."
    )


def check_tolerance(tolerance: Any) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance <= 0:
        raise ExportError(
            "Received an invalid value for argument `int8_tolerance`, expected a positive number "
            f"(a fraction of each output's range, default {DEFAULT_INT8_TOLERANCE}), got "
            f"{tolerance!r}."
        )
    return float(tolerance)


class Weights:
    """The float initializers of a graph by name."""

    def __init__(self, graph: onnx.GraphProto):
        self._protos = {init.name: init for init in graph.initializer}

    def get(self, name: str, ndim: int | None = None) -> np.ndarray | None:
        """The float32 array of initializer ``name`` (of rank ``ndim``), else ``None``."""
        proto = self._protos.get(name)
        if proto is None or proto.data_type != TensorProto.FLOAT:
            return None
        array = numpy_helper.to_array(proto)
        return array if ndim is None or array.ndim == ndim else None


def quantize(onnx_model: onnx.ModelProto, mode: str) -> Quantized:
    """A copy of ``onnx_model`` with the weights of its handled nodes in 8 bits."""
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    graph, weights = model.graph, Weights(model.graph)
    nodes, inits, kinds, float_from = [], [], {}, []
    for node in graph.node:
        handler = _HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        replacement = handler(node, weights) if handler else None
        if replacement is None:
            nodes.append(node)
            continue
        nodes.extend(replacement.nodes)
        inits.extend(replacement.initializers)
        kinds[node.name or node.output[0]] = replacement.kind
        if replacement.float_from_batch is not None:
            float_from.append(replacement.float_from_batch)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    _drop_unused_initializers(graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    size = model.ByteSize()
    return Quantized(model, mode, kinds, onnx_model.ByteSize(), size, max(float_from, default=None))


def _folded(name: str, weight: np.ndarray, axis: int) -> tuple[str, Replacement]:
    """The float tensor ``Cast(<name>.int8) * <name>.scale`` standing for initializer ``name``
    (its name, and the nodes and 8-bit initializers making it): constants onnxruntime folds
    once when the session starts."""
    values, scale = quantize_rows(weight, axis)
    q, s, cast, out = f"{name}.int8", f"{name}.scale", f"{name}.cast", f"{name}.from_int8"
    inits = [numpy_helper.from_array(values, q), numpy_helper.from_array(scale, s)]
    nodes = [
        helper.make_node("Cast", [q], [cast], name=cast, to=TensorProto.FLOAT),
        helper.make_node("Mul", [cast, s], [out], name=out),
    ]
    return out, Replacement(nodes, inits, "")


def _with_folded(
    node: onnx.NodeProto, weights: Weights, slots: dict[int, int], kind: str
) -> Replacement | None:
    """``node`` reading ``Cast * scale`` of 8-bit copies of its constant inputs (``{input
    position: axis of one scale per index}``)."""
    parts, found = [], {}
    for position, axis in slots.items():
        if position >= len(node.input):
            continue
        array = weights.get(node.input[position])
        if array is None or array.ndim <= axis or array.size < 2:
            continue
        found[position], part = _folded(node.input[position], array, axis)
        parts.append(part)
    if not found:
        return None
    new = onnx.NodeProto()
    new.CopyFrom(node)
    for position, name in found.items():
        new.input[position] = name
    nodes = [n for p in parts for n in p.nodes] + [new]
    return Replacement(nodes, [i for p in parts for i in p.initializers], kind)


@quantizes("LSTM")
def _lstm(node: onnx.NodeProto, weights: Weights) -> Replacement | None:
    """From 64 units ``DynamicQuantizeLSTM`` below a few rows and the float32 ``LSTM`` on the
    same 8-bit weights from there (:mod:`.lstm_int8`); narrower, the same ``LSTM`` node with W
    ``[D, 4U, I]`` and R ``[D, 4U, U]`` 8-bit per gate row (the int8 kernel is slower there)."""
    w, r = (weights.get(node.input[i], ndim=3) for i in (1, 2))
    if w is None or r is None or any(a.name == "layout" and a.i for a in node.attribute):
        return None
    threshold = float_from_batch(r.shape[2])
    if threshold == 1:
        return _with_folded(node, weights, {1: 1, 2: 1}, "LSTM, 8-bit W and R")
    nodes, inits = int8_lstm(node, w, r, node.name or node.output[0], threshold)
    kind = f"DynamicQuantizeLSTM below batch {threshold}, else LSTM on the 8-bit weights"
    return Replacement(nodes, inits, kind, threshold)


@quantizes("GRU")
def _gru(node: onnx.NodeProto, weights: Weights) -> Replacement | None:
    """From ``LOOP_MIN_UNITS`` units a ``Loop`` of int8 steps (:mod:`.gru_loop`) where the node
    allows it, below a few rows up to 1024 units (float32 on the same 8-bit weights from there),
    else the same ``GRU`` node with W ``[D, 3U, I]`` and R ``[D, 3U, U]`` 8-bit per gate row."""
    w, r = (weights.get(node.input[i], ndim=3) for i in (1, 2))
    b = weights.get(node.input[3], ndim=2) if len(node.input) > 3 and node.input[3] else None
    if w is not None and r is not None and r.shape[2] >= LOOP_MIN_UNITS:
        threshold = gru_float_from_batch(r.shape[2])
        loop = int8_gru(node, w, r, b, node.name or node.output[0], threshold)
        kind = "Loop of int8 GRU steps"
        if threshold is not None:
            kind += f" below batch {threshold}, else GRU on the 8-bit weights"
        if loop is not None:
            return Replacement(loop[0], loop[1], kind, threshold)
    return _with_folded(node, weights, {1: 1, 2: 1}, "GRU, 8-bit W and R")


@quantizes("MatMul")
def _matmul(node: onnx.NodeProto, weights: Weights) -> Replacement | None:
    """``DynamicQuantizeMatMul`` for ``x @ kernel`` with a constant 2-D kernel (``Dense``)."""
    kernel = weights.get(node.input[1], ndim=2)
    if kernel is None or weights.get(node.input[0]) is not None:
        return None
    name = node.name or node.output[0]
    inits = dynamic_weight(f"{name}.B", kernel)
    new = helper.make_node(
        "DynamicQuantizeMatMul",
        [node.input[0], f"{name}.B.int8", f"{name}.B.scale", f"{name}.B.zero_point"],
        list(node.output),
        name=name,
        domain=MS_DOMAIN,
    )
    return Replacement([new], inits, "DynamicQuantizeMatMul")


@quantizes("Conv")
def _conv(node: onnx.NodeProto, weights: Weights) -> Replacement | None:
    """The same ``Conv``; its kernel ``[M, C, k...]`` 8-bit per output channel."""
    return _with_folded(node, weights, {1: 0}, "Conv, 8-bit kernel")


@quantizes("Gemm")
def _gemm(node: onnx.NodeProto, weights: Weights) -> Replacement | None:
    """The same ``Gemm``; its constant B 8-bit per output column (per row when transposed)."""
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return _with_folded(node, weights, {1: 0 if trans_b else 1}, "Gemm, 8-bit B")


@quantizes("Gather")
def _gather(node: onnx.NodeProto, weights: Weights) -> Replacement | None:
    """The same ``Gather`` on a constant table of rank 2 (``Embedding``), 8-bit per row."""
    if weights.get(node.input[0], ndim=2) is None:
        return None
    if any(a.name == "axis" and a.i != 0 for a in node.attribute):
        return None
    return _with_folded(node, weights, {0: 0}, "Gather, 8-bit table")


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in _all_inputs(node)}
    used.update(o.name for o in graph.output)
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _all_inputs(node: onnx.NodeProto) -> list[str]:
    names = list(node.input)
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in sub.node:
                names.extend(_all_inputs(inner))
    return names
