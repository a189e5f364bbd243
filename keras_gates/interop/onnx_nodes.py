"""ONNX ``LSTM``/``GRU`` nodes to gated layers, gate by gate.

A node's ``W`` ``[D, G*H, I]``, ``R`` ``[D, G*H, H]``, ``B`` ``[D, 2*G*H]`` (input then recurrent
biases) and LSTM ``P`` ``[D, 3*H]`` stack the gates in ONNX's orders (``gates.ONNX_LSTM`` ``iofc``,
``gates.ONNX_GRU`` ``zrh``, ``gates.ONNX_LSTM_PEEPHOLES``). The weights must be stored in the file
(initializers, or ``Constant`` nodes); only ``onnx`` is imported, not TensorFlow or onnxruntime.
What a gated layer cannot compute (``clip``, activations outside
``keras_gates.export.activations.KERAS_TO_ONNX``, an LSTM whose ``g`` and ``h`` differ, a stored
non-zero initial state) is refused naming the node and the attribute.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_gates import gates as gate_orders
from keras_gates.export.activations import KERAS_TO_ONNX
from keras_gates.quantization import quantization_mode

from .layers import bidirectional, gated_layer, rows_to_gates

RECURRENT_OPS = ("LSTM", "GRU")
ONNX_ORDERS = {"LSTM": gate_orders.ONNX_LSTM, "GRU": gate_orders.ONNX_GRU}
# The operators' inputs, by position (ONNX LSTM/GRU signatures; P is LSTM only).
INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
# (recurrent_activation, activation[, activation]) per direction when `activations` is absent.
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}
# ONNX RNN activations that read `activation_alpha`/`activation_beta`, with the values
# onnxruntime uses when those lists are absent; each list is consumed in order by the functions
# that take it (see keras_gates.export.activations.activation_attributes).
PARAMETERS = {
    "affine": (1.0, 0.0),
    "leakyrelu": (0.01, None),
    "thresholdedrelu": (1.0, None),
    "scaledtanh": (1.0, 1.0),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0, None),
}


class OnnxImportError(ValueError):
    """A node from_onnx cannot map to a gated layer; the message names the node and attribute."""


def node_key(node: Any, index: int) -> str:
    """The name ``from_onnx`` files a node under: its name, or ``"<op>_<position>"``."""
    return node.name or f"{node.op_type}_{index}"


def layer_name(key: str) -> str:
    """A Keras layer name for the node ``key`` (``/LSTM_1`` -> ``LSTM_1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_.") or "recurrent"


def load(path: str | os.PathLike) -> Any:
    """The ``onnx.ModelProto`` at ``path``, or a clear error."""
    try:
        import onnx
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "from_onnx needs the onnx package: pip install onnx (it is in the keras-gates "
            "[export] and [serve] extras).",
            name="onnx",
        ) from err
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file '{path}' does not exist or is not a file.")
    try:
        return onnx.load(os.fspath(path))
    except Exception as err:  # onnx raises DecodeError and friends for what is not ONNX
        raise ValueError(f"'{path}' is not an ONNX model ({err}); pass a .onnx file.") from err


def stored_values(graph: Any) -> dict[str, np.ndarray]:
    """``{tensor name: array}`` for initializers, ``Constant`` outputs and ``Identity`` of those."""
    from onnx import helper, numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # topologically sorted: one pass sees every chain of Identity
        if node.op_type == "Constant" and len(node.attribute) == 1:
            value = helper.get_attribute_value(node.attribute[0])
            if hasattr(value, "dims"):  # a TensorProto ("value")
                value = numpy_helper.to_array(value)
            values[node.output[0]] = np.asarray(value)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def recurrent_nodes(model: Any) -> list[tuple[str, Any]]:
    """``[(key, node)]`` for every LSTM/GRU node of the main graph, in graph order."""
    return [
        (node_key(node, index), node)
        for index, node in enumerate(model.graph.node)
        if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx")
    ]


def from_onnx(path: str | os.PathLike) -> dict[str, keras.layers.Layer]:
    """Gated layers computing the ``LSTM`` and ``GRU`` nodes of an ONNX file.

    Every node of the main graph (from ``torch.onnx.export``, tf2onnx, Keras' ONNX export or
    ``keras-gates export``) becomes a built ``GatedLSTM``/``GatedGRU`` with
    ``return_sequences=True``: ``direction="reverse"`` gives ``go_backwards=True`` (whose outputs,
    as for every Keras layer running backwards, come last step first: ``y[:, ::-1]`` aligns them
    with the node's ``Y``), ``"bidirectional"`` a ``keras.layers.Bidirectional`` (``[forward,
    backward]`` concatenated, the node's ``Y`` as ``(batch, time, 2 * hidden)``). GRU
    ``linear_before_reset=1`` is ``reset_after=True`` (``R``'s bias its ``recurrent_bias``), ``0``
    the ``reset_after=False`` form (the two biases summed); LSTM biases are summed,
    ``input_forget=1`` is ``coupled_input_forget=True`` and non-zero peepholes ``use_peepholes``.
    The layers take batch-first input whatever the node's ``layout``; ``sequence_lens`` becomes
    the ``mask`` of a call and ``initial_h``/``initial_c`` its ``initial_state`` (zeros if not
    given). Recurrent layers exported as ``Loop`` or ``Scan`` nodes are not read.

    Args:
        path: The ``.onnx`` file.

    Returns:
        ``{node name: layer}`` in graph order (an unnamed node is ``"<op>_<position>"``).

    Raises:
        OnnxImportError: A node that no gated layer computes, naming the node and attribute.
    """
    return model_layers(load(path), path)


def model_layers(model: Any, path: str | os.PathLike) -> dict[str, keras.layers.Layer]:
    """:func:`from_onnx` of a loaded ``onnx.ModelProto`` (``path`` names it in errors)."""
    quantized = "DynamicQuantizeLSTM" in _op_types(model.graph)  # ours, or quantize_dynamic's
    if quantized or quantization_mode(model) is not None:
        raise OnnxImportError(
            f"'{path}' is an int8 export: its recurrent layers run on 8-bit weights "
            "(DynamicQuantizeLSTM, an int8 Loop, weights computed from 8-bit constants), which "
            "are not read gate by gate. Inspect the float32 export or the .keras model instead."
        )
    nodes = recurrent_nodes(model)
    if not nodes:
        found = sorted({node.op_type for node in model.graph.node})
        raise OnnxImportError(
            f"'{path}' has no LSTM or GRU node (its operators: {', '.join(found) or 'none'}). A "
            "recurrent layer exported as a Loop or Scan cannot be read gate by gate; export it "
            "with native LSTM/GRU nodes (keras-gates export, torch.onnx.export)."
        )
    stored = stored_values(model.graph)
    return {key: node_layer(node, key, stored) for key, node in nodes}


def _op_types(graph: Any) -> set[str]:
    """The operators of ``graph`` and of its nodes' subgraphs (``If`` branches, ``Loop`` bodies)."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found |= _op_types(sub)
    return found


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    def text(value):
        return value.decode() if isinstance(value, bytes) else value

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {
        k: [text(v) for v in vs] if isinstance(vs, list) else text(vs) for k, vs in values.items()
    }


def _inputs(node: Any, key: str, stored: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | str]:
    """``{input name: array}`` for stored inputs, ``{name: tensor name}`` for run-time ones."""
    found = {}
    for name, tensor in zip(INPUTS, node.input):
        if tensor:
            found[name] = stored[tensor] if tensor in stored else tensor
    for name in ("W", "R", "B", "P"):
        if isinstance(found.get(name), str):
            raise OnnxImportError(
                f"Node {key!r} ({node.op_type}): input {name} ({found[name]!r}) is computed at "
                "run time, not stored in the file; from_onnx reads weights stored as "
                "initializers or Constant nodes (export with constant folding on)."
            )
    for name in ("initial_h", "initial_c"):
        if not isinstance(found.get(name, ""), str) and np.any(found[name]):
            raise OnnxImportError(
                f"Node {key!r} ({node.op_type}): input {name} is a stored non-zero state; the "
                "layer starts from zeros. Pass it as the call's `initial_state` instead."
            )
    return found


def _refuse(node: Any, key: str, attribute: str, value: Any, why: str) -> OnnxImportError:
    return OnnxImportError(
        f"Node {key!r} ({node.op_type}): cannot map attribute `{attribute}`={value!r}: {why}."
    )


def _keras_activation(name: str, alphas: list, betas: list) -> str | None:
    """The Keras activation computing the ONNX function ``name``, consuming its parameters."""
    alpha, beta = PARAMETERS.get(name.lower(), (None, None))
    if alpha is not None and alphas:
        alpha = float(alphas.pop(0))
    if beta is not None and betas:
        beta = float(betas.pop(0))
    for keras_name, onnx_act in KERAS_TO_ONNX.items():
        if onnx_act.name.lower() != name.lower():
            continue
        if all(
            (want is None) == (got is None) and (want is None or abs(want - got) < 1e-6)
            for want, got in ((onnx_act.alpha, alpha), (onnx_act.beta, beta))
        ):
            return keras_name
    return None


def _activations(node: Any, key: str, attrs: dict, count: int) -> list[dict[str, str]]:
    """Per direction ``{"recurrent_activation": ..., "activation": ...}``, or refuse."""
    per = len(DEFAULT_ACTIVATIONS[node.op_type])
    names = list(attrs.get("activations", DEFAULT_ACTIVATIONS[node.op_type] * count))
    if len(names) != per * count:
        raise _refuse(node, key, "activations", names, f"expected {per * count} functions")
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    mapped = [_keras_activation(name, alphas, betas) for name in names]
    result = []
    for d in range(count):
        functions = mapped[d * per : (d + 1) * per]
        if None in functions:
            unknown = names[d * per + functions.index(None)]
            raise _refuse(
                node,
                key,
                "activations",
                names,
                f"{unknown!r} with these parameters is not one of the layers' activations "
                f"({', '.join(f'{a.name} ({k})' for k, a in KERAS_TO_ONNX.items())})",
            )
        if len(set(functions[1:])) > 1:
            raise _refuse(
                node,
                key,
                "activations",
                names,
                "the LSTM cell activation g and the output activation h differ; a gated LSTM "
                "uses `activation` for both",
            )
        result.append({"recurrent_activation": functions[0], "activation": functions[1]})
    return result


def _check_attributes(node: Any, key: str, attrs: dict) -> int:
    """Refuse what no gated layer computes; return the number of directions."""
    if "clip" in attrs:
        raise _refuse(node, key, "clip", attrs["clip"], "the gated layers do not clip cell inputs")
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise _refuse(node, key, "direction", direction, "expected forward/reverse/bidirectional")
    return 2 if direction == "bidirectional" else 1


def node_layer(node: Any, key: str, stored: Mapping[str, np.ndarray]) -> keras.layers.Layer:
    """The gated layer (or ``Bidirectional``) computing one LSTM/GRU node."""
    attrs = _attributes(node)
    count = _check_attributes(node, key, attrs)
    activations = _activations(node, key, attrs, count)
    inputs = _inputs(node, key, stored)
    kind = node.op_type
    w = np.asarray(inputs["W"], np.float32)
    units, input_dim = int(inputs["R"].shape[-1]), int(w.shape[-1])
    if w.shape[0] != count:
        direction = attrs.get("direction", "forward")
        raise _refuse(node, key, "direction", direction, f"W holds {w.shape[0]} directions")
    if attrs.get("hidden_size", units) != units:
        shape = f"R has shape {inputs['R'].shape}"
        raise _refuse(node, key, "hidden_size", attrs["hidden_size"], shape)
    layers = []
    for d in range(count):
        weights, config = _direction(kind, attrs, inputs, d, units)
        config.update(activations[d])
        if d == 1 or attrs.get("direction") == "reverse":
            config["go_backwards"] = True
        if count == 1:
            config["name"] = layer_name(key)
        layers.append(gated_layer(kind, units, input_dim, weights, **config))
    return layers[0] if count == 1 else bidirectional(*layers, name=layer_name(key))


def _direction(kind: str, attrs: dict, inputs: dict, d: int, units: int) -> tuple[dict, dict]:
    """``({gate: {part: array}}, layer config)`` of direction ``d``."""
    stacked = {"kernel": inputs["W"][d], "recurrent_kernel": inputs["R"][d]}
    config: dict[str, Any] = {"use_bias": "B" in inputs}
    if "B" in inputs:
        size = len(ONNX_ORDERS[kind]) * units
        bias, recurrent_bias = inputs["B"][d][:size], inputs["B"][d][size:]
        if kind == "GRU" and attrs.get("linear_before_reset", 0):
            stacked["bias"], stacked["recurrent_bias"] = bias, recurrent_bias
        else:  # LSTM, and GRU without linear_before_reset: both biases are only ever added
            stacked["bias"] = bias + recurrent_bias
    if kind == "GRU":
        config["reset_after"] = bool(attrs.get("linear_before_reset", 0))
        return rows_to_gates(stacked, ONNX_ORDERS[kind]), config
    weights = rows_to_gates(stacked, ONNX_ORDERS[kind])
    peepholes = inputs.get("P")
    if peepholes is not None and np.any(peepholes[d]):
        order = gate_orders.ONNX_LSTM_PEEPHOLES
        for gate, p in rows_to_gates({"peephole": peepholes[d]}, order).items():
            weights[gate]["peephole"] = p["peephole"]
        config["use_peepholes"] = True
    if attrs.get("input_forget", 0):  # f = 1 - i: ONNX ignores the forget gate's weights
        config["coupled_input_forget"] = True
        del weights["forget"]
    return weights, config
