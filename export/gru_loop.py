"""An int8 GRU that onnxruntime runs natively: one ``Loop`` of int8 steps instead of a ``GRU``.

onnxruntime has no int8 GRU kernel. From ``LOOP_MIN_UNITS`` units a step's float32 matrix-vector
product with R costs more than the ``Loop``'s own overhead (~15 small nodes a step), so the node
becomes (measured with ``benchmarks/quantize.py``):

    X_proj = DynamicQuantizeMatMul(X masked past each length, W^T) + W_b   # all steps at once
    Loop t < T:
        r_h = DynamicQuantizeMatMul(h, R^T) + R_b                           # int8, per step
        z, r = sigmoid(X_proj[t]_z + r_h_z), sigmoid(X_proj[t]_r + r_h_r)
        n = tanh(X_proj[t]_h + r * r_h_h)
        h = where(t < length, n + z * (h - n), h);  Y[t] = where(t < length, h, 0)

which is ONNX's ``GRU`` with ``linear_before_reset=1`` (Keras ``reset_after=True``) and the
default activations, one direction forward. Other nodes keep the folded ``GRU``. As for the
LSTM, an ``If`` runs the ``Loop`` below :func:`float_from_batch` rows and the float32 ``GRU`` on
the same 8-bit weights from there, where the ``Loop`` would be slower.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .int8_ops import (
    MS_DOMAIN,
    batch_switch,
    branch,
    branch_outputs,
    dynamic_weight,
    float_weight,
    zero_padding,
)

LOOP_MIN_UNITS = 384  # measured: the Loop is slower at batch 1 up to ~320 units
# The Loop beats the float32 GRU below about units / 128 - 1 rows (benchmarks/quantize.py
# --crossover --kind GRU; one thread, AVX2 without VNNI): 384 units 1.24x at batch 1, 1.04x at
# 2, 1.00x at 3; 512 units 1.28x at 2, 1.06x at 3, 0.99x at 4; 768 units 1.09x at 4, 0.93x at
# 5. From there the float32 GRU on the same 8-bit weights runs (0.99-1.00x at batch 4 to 64).
UNITS_PER_INT8_ROW = 128
LOOP_ALWAYS_UNITS = 1024  # from here the Loop won at every batch measured (1.10x at batch 64)
_DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh"]


def eligible(node: onnx.NodeProto, w: np.ndarray) -> bool:
    """A forward ``GRU`` with ``linear_before_reset=1``, default activations, no clip."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    direction = attrs.get("direction", b"forward")
    return (
        w.shape[0] == 1
        and (direction.decode() if isinstance(direction, bytes) else direction) == "forward"
        and attrs.get("linear_before_reset", 0) == 1
        and activations in ([], _DEFAULT_ACTIVATIONS)
        and "clip" not in attrs
        and not attrs.get("layout", 0)
    )


def float_from_batch(units: int) -> int | None:
    """The batch size from which the float32 ``GRU`` is the faster one at ``units`` (``None``:
    at no batch)."""
    if units >= LOOP_ALWAYS_UNITS:
        return None
    return max(1, units // UNITS_PER_INT8_ROW - 1)


def int8_gru(
    node: onnx.NodeProto,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None,
    name: str,
    threshold: int | None,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None:
    """``If`` the batch has fewer than ``threshold`` rows the ``Loop`` of int8 steps, else the
    float32 ``GRU`` on the same 8-bit weights (no threshold: the ``Loop`` alone); ``None`` when
    ``node`` is not :func:`eligible`."""
    if not eligible(node, w):
        return None
    if threshold is None:
        return int8_loop(node, w, r, b, name)
    outputs = list(node.output)
    looped = onnx.NodeProto()
    looped.CopyFrom(node)
    del looped.output[:]
    looped.output.extend(branch_outputs(outputs, "int8"))
    nodes, inits = int8_loop(looped, w, r, b, name)
    stored = {i.name: i for i in inits}
    nodes = _branch_local([stored[f"{name}.{k}.int8"] for k in ("W", "R")], nodes)
    small = branch(f"{name}.int8", nodes, list(looped.output))
    large = _float_branch(node, outputs, name)
    switch, limit = batch_switch(name, node.input[0], outputs, threshold, small, large)
    return switch, [*inits, limit]


def _branch_local(
    weights: list[onnx.TensorProto], nodes: list[onnx.NodeProto]
) -> list[onnx.NodeProto]:
    """``nodes`` reading ``<weight>.local``, a ``Reshape`` of each weight to its own shape that
    onnxruntime folds into the branch. Read two scopes up (main graph -> ``If`` -> ``Loop``
    body), the weights are not packed and every step repacks them (measured at 512 units, batch
    1: 10.4 ms against 4.5 ms, float32 7.6 ms)."""
    renames, made = {}, []
    for weight in weights:
        local, shape = f"{weight.name}.local", f"{weight.name}.local_shape"
        dims = numpy_helper.from_array(np.array(weight.dims, np.int64))
        made += [
            helper.make_node("Constant", [], [shape], name=shape, value=dims),
            helper.make_node("Reshape", [weight.name, shape], [local], name=local),
        ]
        renames[weight.name] = local
    for node in nodes:
        _rename_inputs(node, renames)
    return [*made, *nodes]


def _rename_inputs(node: onnx.NodeProto, renames: dict[str, str]) -> None:
    for i, name in enumerate(node.input):
        node.input[i] = renames.get(name, name)
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            for inner in attr.g.node:
                _rename_inputs(inner, renames)


def _float_branch(node: onnx.NodeProto, outputs: list[str], name: str) -> onnx.GraphProto:
    """The float32 ``GRU`` on the Loop's 8-bit W and R (``[in, 3U]`` -> ``[1, 3U, in]``) and its
    two biases, folded when the session starts."""
    make = helper.make_node
    p = f"{name}.float"
    nodes, weights = [], []
    for key in ("W", "R"):
        made, weight = float_weight(
            f"{p}.{key}.2d", f"{name}.{key}.int8", f"{name}.{key}.scale", [0], [1, 0]
        )
        nodes += [*made, make("Unsqueeze", [weight, f"{name}.axis0"], [f"{p}.{key}"])]
        weights.append(f"{p}.{key}")
    nodes += [
        make("Concat", [f"{name}.W.bias", f"{name}.R.bias"], [f"{p}.B.1d"], axis=0),
        make("Unsqueeze", [f"{p}.B.1d", f"{name}.axis0"], [f"{p}.B"]),
    ]
    inputs = list(node.input) + [""] * (6 - len(node.input))
    outs = branch_outputs(outputs, "float")
    gru = make("GRU", [inputs[0], *weights, f"{p}.B", *inputs[4:6]], outs, name=p)
    gru.attribute.extend(node.attribute)
    return branch(p, [*nodes, gru], outs)


def int8_loop(
    node: onnx.NodeProto, w: np.ndarray, r: np.ndarray, b: np.ndarray | None, name: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers of the ``Loop`` design computing ``node`` (an
    :func:`eligible` one)."""
    units = r.shape[2]
    bias = np.zeros(6 * units, np.float32) if b is None else b[0]
    p = name
    inits = []
    for key, weight, part in (("W", w[0], bias[: 3 * units]), ("R", r[0], bias[3 * units :])):
        inits += dynamic_weight(f"{p}.{key}", weight.T)  # [in, 3U]
        inits.append(numpy_helper.from_array(part.astype(np.float32), f"{p}.{key}.bias"))
    inits += [
        numpy_helper.from_array(np.array([units] * 3, np.int64), f"{p}.gates"),
        numpy_helper.from_array(np.array([units], np.int64), f"{p}.units"),
        numpy_helper.from_array(np.array(0.0, np.float32), f"{p}.zero"),
        numpy_helper.from_array(np.array([0], np.int64), f"{p}.axis0"),
        numpy_helper.from_array(np.array([1], np.int64), f"{p}.axis1"),
    ]
    inputs = list(node.input) + [""] * (6 - len(node.input))
    lengths, initial = inputs[4], inputs[5]
    make = helper.make_node
    nodes, x = ([], inputs[0]) if not lengths else zero_padding(p, inputs[0], lengths)
    nodes += [
        make(
            "DynamicQuantizeMatMul",
            [x, *(f"{p}.W.{k}" for k in ("int8", "scale", "zero_point", "bias"))],
            [f"{p}.x_proj"],
            name=f"{p}.x_proj",
            domain=MS_DOMAIN,
        ),
        make("Shape", [x], [f"{p}.steps1"], name=f"{p}.steps1", start=0, end=1),
        make("Squeeze", [f"{p}.steps1"], [f"{p}.steps"], name=f"{p}.steps"),
    ]
    if initial:
        nodes.append(make("Squeeze", [initial, f"{p}.axis0"], [f"{p}.h0"], name=f"{p}.h0"))
    else:
        nodes += [
            make("Shape", [x], [f"{p}.batch"], name=f"{p}.batch", start=1, end=2),
            make("Concat", [f"{p}.batch", f"{p}.units"], [f"{p}.h0_shape"], axis=0),
            make("ConstantOfShape", [f"{p}.h0_shape"], [f"{p}.h0"], name=f"{p}.h0"),
        ]
    if lengths:
        nodes += [
            make("Cast", [lengths], [f"{p}.len64"], name=f"{p}.len64", to=TensorProto.INT64),
            make("Unsqueeze", [f"{p}.len64", f"{p}.axis1"], [f"{p}.lens"], name=f"{p}.lens"),
        ]
    outputs = list(node.output) + [""] * (2 - len(node.output))
    wants_y = bool(outputs[0])
    body = _body(p, units, bool(lengths), wants_y)
    loop_out = [f"{p}.h_last", *([f"{p}.ys"] if wants_y else [])]
    nodes.append(make("Loop", [f"{p}.steps", "", f"{p}.h0"], loop_out, name=f"{p}.loop", body=body))
    if outputs[1]:
        last = make("Unsqueeze", [f"{p}.h_last", f"{p}.axis0"], [outputs[1]], name=outputs[1])
        nodes.append(last)
    if wants_y:
        nodes.append(make("Unsqueeze", [f"{p}.ys", f"{p}.axis1"], [outputs[0]], name=outputs[0]))
    return nodes, inits


def _body(p: str, units: int, masked: bool, wants_y: bool) -> onnx.GraphProto:
    """One step: ``(t, cond, h) -> (cond, h', [y])``."""
    make = helper.make_node
    s = f"{p}.step"
    nodes = [
        make("Gather", [f"{p}.x_proj", f"{s}.t"], [f"{s}.x"], axis=0),
        make(
            "DynamicQuantizeMatMul",
            [f"{s}.h", *(f"{p}.R.{k}" for k in ("int8", "scale", "zero_point", "bias"))],
            [f"{s}.rh"],
            domain=MS_DOMAIN,
        ),
        make("Split", [f"{s}.x", f"{p}.gates"], [f"{s}.xz", f"{s}.xr", f"{s}.xh"], axis=1),
        make("Split", [f"{s}.rh", f"{p}.gates"], [f"{s}.hz", f"{s}.hr", f"{s}.hh"], axis=1),
        make("Add", [f"{s}.xz", f"{s}.hz"], [f"{s}.z_in"]),
        make("Sigmoid", [f"{s}.z_in"], [f"{s}.z"]),
        make("Add", [f"{s}.xr", f"{s}.hr"], [f"{s}.r_in"]),
        make("Sigmoid", [f"{s}.r_in"], [f"{s}.r"]),
        make("Mul", [f"{s}.r", f"{s}.hh"], [f"{s}.r_hh"]),
        make("Add", [f"{s}.xh", f"{s}.r_hh"], [f"{s}.n_in"]),
        make("Tanh", [f"{s}.n_in"], [f"{s}.n"]),
        make("Sub", [f"{s}.h", f"{s}.n"], [f"{s}.h_minus_n"]),
        make("Mul", [f"{s}.z", f"{s}.h_minus_n"], [f"{s}.z_diff"]),
        make("Add", [f"{s}.n", f"{s}.z_diff"], [f"{s}.h_new"]),
        make("Identity", [f"{s}.cond"], [f"{s}.cond_out"]),
    ]
    if masked:
        nodes += [
            make("Less", [f"{s}.t", f"{p}.lens"], [f"{s}.valid"]),
            make("Where", [f"{s}.valid", f"{s}.h_new", f"{s}.h"], [f"{s}.h_out"]),
        ]
        if wants_y:
            nodes.append(make("Where", [f"{s}.valid", f"{s}.h_new", f"{p}.zero"], [f"{s}.y"]))
    else:
        nodes.append(make("Identity", [f"{s}.h_new"], [f"{s}.h_out"]))
        if wants_y:
            nodes.append(make("Identity", [f"{s}.h_new"], [f"{s}.y"]))
    state = [None, units]
    inputs = [
        helper.make_tensor_value_info(f"{s}.t", TensorProto.INT64, []),
        helper.make_tensor_value_info(f"{s}.cond", TensorProto.BOOL, []),
        helper.make_tensor_value_info(f"{s}.h", TensorProto.FLOAT, state),
    ]
    outputs = [
        helper.make_tensor_value_info(f"{s}.cond_out", TensorProto.BOOL, []),
        helper.make_tensor_value_info(f"{s}.h_out", TensorProto.FLOAT, state),
    ]
    if wants_y:
        outputs.append(helper.make_tensor_value_info(f"{s}.y", TensorProto.FLOAT, state))
    return helper.make_graph(nodes, f"{p}.step", inputs, outputs)
