"""Gated layers built from another framework's fused weights, and read back into them.

PyTorch and ONNX store a recurrent layer's weights the same way: per gate a ``(units, input)``
block, the gates stacked along axis 0 in the framework's order (``keras_gates.gates``). keras-gates
keeps per gate a ``(input, units)`` kernel. These helpers move between the two layouts; every
gate order comes from :mod:`keras_gates.gates`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_gates import gates as gate_orders
from keras_gates.gru import GatedGRU
from keras_gates.lstm import GatedLSTM

# Per-gate part -> whether it is a matrix (transposed between the two layouts).
_MATRICES = ("kernel", "recurrent_kernel")

GATED_CLASSES = {"LSTM": GatedLSTM, "GRU": GatedGRU}


def rows_to_gates(
    stacked: Mapping[str, np.ndarray], order: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """``{part: rows}`` (gates stacked along axis 0 in ``order``, matrices ``(units, in)``) to
    ``{gate: {part: array}}`` in keras-gates' layout (matrices ``(in, units)``)."""
    per_gate: dict[str, dict[str, np.ndarray]] = {gate: {} for gate in order}
    for part, value in stacked.items():
        for gate, block in gate_orders.split(np.asarray(value, np.float32), order, axis=0).items():
            per_gate[gate][part] = block.T if part in _MATRICES else block
    return per_gate


def gates_to_rows(
    weights: Mapping[str, Mapping[str, np.ndarray]], part: str, order: Sequence[str]
) -> np.ndarray:
    """``part`` of every gate in ``order``, stacked along axis 0 (matrices as ``(units, in)``)."""
    blocks = {gate: np.asarray(weights[gate][part], np.float32) for gate in order}
    if part in _MATRICES:
        blocks = {gate: block.T for gate, block in blocks.items()}
    return gate_orders.fuse(blocks, order, axis=0)


def gated_layer(
    kind: str,
    units: int,
    input_dim: int,
    weights: Mapping[str, Mapping[str, np.ndarray]],
    **config: Any,
) -> keras.layers.Layer:
    """A built ``GatedLSTM``/``GatedGRU`` (``kind``) returning sequences, holding ``weights``."""
    layer = GATED_CLASSES[kind](units, return_sequences=True, **config)
    layer.build((None, None, input_dim))
    layer.set_gate_weights(weights)
    return layer


def bidirectional(
    forward: keras.layers.Layer, backward: keras.layers.Layer, name: str | None = None
) -> Any:
    """``keras.layers.Bidirectional`` over two built gated layers (``backward`` runs backwards),
    outputs concatenated ``[forward, backward]`` as PyTorch and ONNX lay them out."""
    wrapper = keras.layers.Bidirectional(
        forward, backward_layer=backward, merge_mode="concat", name=name
    )
    input_dim = forward.cell.input_dim
    weights = (forward.get_gate_weights(), backward.get_gate_weights())
    wrapper.build((None, None, input_dim))
    wrapper.forward_layer.set_gate_weights(weights[0])
    wrapper.backward_layer.set_gate_weights(weights[1])
    return wrapper


def directions(layer: Any) -> list[Any]:
    """The gated layers of ``layer``: ``[layer]``, or ``[forward, backward]`` of a
    ``Bidirectional``."""
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


def kind_of(layer: Any) -> str:
    """``"LSTM"`` or ``"GRU"`` for a gated layer (or ``Bidirectional`` over one), else raise."""
    inner = directions(layer)[0]
    for kind, cls in GATED_CLASSES.items():
        if isinstance(inner, cls):
            return kind
    raise TypeError(
        f"Expected a GatedLSTM or GatedGRU layer (or keras.layers.Bidirectional over one), got "
        f"{type(inner).__name__} ({getattr(inner, 'name', inner)!r})."
    )
