"""Drop one native ONNX ``LSTM``/``GRU`` node into each cut of the tf2onnx graph.

Each cut left the graph with an extra output per RNN input (``X``, ``seq_lens``, ``h0``, ``c0``)
and an extra input per RNN output (``Y``, ``Y_h``, ``Y_c``). The node connects them; the extra
inputs/outputs are removed, nodes are sorted topologically and the internal names are replaced
by the final ones. :func:`build_onnx` is the exporter's splice stage: splice, rename, then shape
inference and the producer fields.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper, numpy_helper

from keras_gates.version import __version__

from .activations import activation_attributes
from .cutting import Converted
from .handlers import Cut
from .rnn_weights import stack_directions


def build_onnx(converted: Converted) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The finished ONNX model of ``converted`` (whose model it splices in place) and the gate
    layout of every node by name."""
    layouts = splice(converted.model, converted.cuts)
    rename_tensors(converted.model.graph, converted.rename)
    return finish(converted.model), layouts


def finish(onnx_model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference, IR version onnxruntime/Triton accept, producer fields."""
    onnx_model.producer_name = "keras-gates"
    onnx_model.producer_version = __version__
    onnx_model.ir_version = onnx.helper.find_min_ir_version_for(
        list(onnx_model.opset_import), ignore_unknown=True
    )
    del onnx_model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(onnx_model, strict_mode=True)


def rnn_node(
    cut: Cut, prefix: str
) -> tuple[onnx.NodeProto, list[onnx.TensorProto], dict[str, Any]]:
    """The RNN node of ``cut``, its weight initializers and its gate layout (for metadata).

    ``prefix`` names the node and its initializers (``<prefix>.W``...): the layer name, made
    unique when a shared layer is called more than once.
    """
    layers = cut.weight_layers
    directions = [cut.handler.direction_weights(layer) for layer in layers]
    arrays = stack_directions(directions)
    inits = [numpy_helper.from_array(a, f"{prefix}.{key}") for key, a in arrays.items()]
    names = {key: f"{prefix}.{key}" for key in arrays}
    handler = cut.handler
    inputs = [cut.tensor("X"), names["W"], names["R"], names["B"], cut.tensor("seq_lens")]
    inputs += [cut.tensor(f"{s}0") if cut.has_initial else "" for s in handler.state_names]
    inputs += handler.optional_inputs(names)
    while inputs and inputs[-1] == "":
        inputs.pop()
    outputs = [cut.tensor(p) if p in cut.outputs else "" for p in handler.onnx_outputs]
    while outputs and outputs[-1] == "":
        outputs.pop()
    attrs = {
        "hidden_size": cut.units,
        "direction": cut.direction,
        **activation_attributes([d.activations for d in directions]),
        **cut.handler.node_attributes(cut.cells[0] if cut.cells else cut.layer),
    }
    node = helper.make_node(handler.op_type, inputs, outputs, name=prefix, **attrs)
    layout = {
        "op_type": handler.op_type,
        "direction": cut.direction,
        "hidden_size": cut.units,
        "gate_order": list(handler.gate_order),
        "initializers": names,
        "attributes": {k: v for k, v in attrs.items() if k != "hidden_size"},
    }
    return node, inits, layout


def splice(model: onnx.ModelProto, cuts: list[Cut]) -> dict[str, Any]:
    """Insert the RNN nodes in place; returns the gate layout of every cut by layer name."""
    graph = model.graph
    layouts = {}
    cut_inputs, cut_outputs = set(), set()
    for cut in cuts:
        prefix = cut.name
        if prefix in layouts:  # a shared layer: one node per call
            prefix = f"{prefix}.call{cut.index}"
        node, inits, layouts[prefix] = rnn_node(cut, prefix)
        graph.node.append(node)
        graph.initializer.extend(inits)
        cut_inputs.update(cut.tensor(o) for o in cut.outputs)
        opened = ("X", "seq_lens", *(f"{s}0" for s in cut.handler.state_names))
        cut_outputs.update(cut.tensor(p) for p in opened)
    _keep(graph.input, lambda v: v.name not in cut_inputs)
    _keep(
        graph.output,  # kg_keep_*: kept lengths inputs alive through tf2onnx, not outputs
        lambda v: v.name not in cut_outputs and not v.name.startswith("kg_keep_"),
    )
    topological_sort(graph)
    return layouts


def _keep(container: Any, predicate) -> None:
    kept = [item for item in container if predicate(item)]
    del container[:]
    container.extend(kept)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs."""
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    deps = [_node_inputs(node) for node in graph.node]
    order, state = [], [0] * len(graph.node)  # 0 new, 1 on the stack, 2 placed
    for root in range(len(graph.node)):
        if state[root]:
            continue
        state[root] = 1
        stack = [(root, 0)]
        while stack:
            j, pos = stack.pop()
            if pos == len(deps[j]):
                state[j] = 2
                order.append(graph.node[j])
                continue
            stack.append((j, pos + 1))
            k = produced_by.get(deps[j][pos])
            if k is not None and state[k] == 1 and k != j:
                raise ValueError(f"The spliced ONNX graph has a cycle through {deps[j][pos]!r}.")
            if k is not None and state[k] == 0:
                state[k] = 1
                stack.append((k, 0))
    nodes = [onnx.NodeProto() for _ in order]
    for new, old in zip(nodes, order):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(nodes)


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs of ``node`` including outer tensors its subgraphs (Loop/If bodies) read."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in sub.node:
                names.extend(_node_inputs(inner))
    return names


def rename_tensors(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename tensors everywhere in ``graph`` (inputs, outputs, nodes, value_info)."""
    if not mapping:
        return
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """``{op_type: count}`` over the main graph."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
