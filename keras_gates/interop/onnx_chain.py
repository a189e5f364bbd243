"""The recurrent nodes of an ONNX file as one Keras model, for ``keras-gates inspect``.

The model runs the file's LSTM/GRU nodes alone: the input goes to the first node, and each later
node reads the previous one's output, as long as the graph itself connects them that way (only
reshaping operators between them) and the sizes match. The first node that reads something else
ends the chain; it and the nodes after it are reported, not inspected.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from .onnx_nodes import load, model_layers, recurrent_nodes

# Operators that only move a node's Y into the next node's X layout.
RESHAPING = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast", "Flatten")
# Also these where Y has one direction (they pick direction 0 of Y).
PICKING = ("Gather", "Slice")


def _bidirectional(node: Any) -> bool:
    return any(a.name == "direction" and a.s == b"bidirectional" for a in node.attribute)


def feeds(graph: Any, source: Any, target: Any) -> bool:
    """Whether ``target``'s input X is ``source``'s output Y, reshaped only."""
    producers = {out: node for node in graph.node for out in node.output}
    passing = RESHAPING if _bidirectional(source) else RESHAPING + PICKING
    tensor = target.input[0]
    while tensor != source.output[0]:
        node = producers.get(tensor)
        if node is None or node.op_type not in passing:
            return False
        tensor = node.input[0]
    return True


def _output_size(layer: Any) -> int:
    inner = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
    return int(inner.units) * (2 if inner is not layer else 1)


def _input_size(layer: Any) -> int:
    inner = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
    return int(inner.cell.input_dim)


def recurrent_model(path: str | os.PathLike) -> tuple[keras.Model, list[str]]:
    """``(model, notes)``: a ``keras.Sequential`` of the chain of recurrent nodes that starts at
    the file's first one (batch-first input), and one line per node left out, saying why."""
    onnx_model = load(path)
    layers = model_layers(onnx_model, path)
    nodes = recurrent_nodes(onnx_model)
    chain, notes = [layers[nodes[0][0]]], []
    for (key, node), (previous_key, previous) in zip(nodes[1:], nodes):
        reason = None
        if notes:
            reason = "the chain of recurrent nodes ended before it"
        elif not feeds(onnx_model.graph, previous, node):
            reason = f"it does not read {previous_key!r}'s output (only reshaped) as its input"
        elif _input_size(layers[key]) != _output_size(chain[-1]):
            reason = f"its input size differs from {previous_key!r}'s output size"
        if reason:
            notes.append(f"node {key!r} is not inspected: {reason}")
        else:
            chain.append(layers[key])
    inputs = keras.Input((None, _input_size(chain[0])), name="input")
    return keras.Sequential([inputs, *chain], name="onnx_recurrent_nodes"), notes
