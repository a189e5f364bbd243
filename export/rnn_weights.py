"""Gate weights of a gated layer as the W/R/B(/P) inputs of an ONNX LSTM/GRU operator.

Keras stores a gate's kernel as ``(input_dim, units)``; ONNX wants ``(units, input_dim)`` per gate,
stacked along axis 0 in the operator's gate order (LSTM ``iofc``, GRU ``zrh``), with one leading
axis per direction. Gate orders come from :mod:`keras_gates.gates`; nothing here slices by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from keras_gates import gates as gate_orders

from .activations import OnnxActivation, to_onnx_activation


@dataclasses.dataclass
class DirectionWeights:
    """W ``(G*U, I)``, R ``(G*U, U)``, B ``(2*G*U,)``, P ``(P*U,)`` (``P`` peephole gates) or
    ``None``, activations."""

    W: np.ndarray
    R: np.ndarray
    B: np.ndarray
    P: np.ndarray | None
    activations: list[OnnxActivation]


def _part(weights: dict, gate: str, part: str, shape: tuple[int, ...]) -> np.ndarray:
    """``weights[gate][part]`` as float32, zeros where the gate does not own that part."""
    value = weights.get(gate, {}).get(part)
    return np.zeros(shape, np.float32) if value is None else np.asarray(value, np.float32)


def _stack(weights: dict, part: str, order: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Gates of ``part`` fused along axis 0 in ``order``; kernels transposed to ``(U, I)``."""
    per_gate = {g: _part(weights, g, part, shape) for g in order}
    if len(shape) == 2:
        per_gate = {g: w.T for g, w in per_gate.items()}
    return gate_orders.fuse(per_gate, order, axis=0)


def _input_dim_and_units(layer: Any, weights: dict) -> tuple[int, int]:
    """``(input_dim, units)`` read from any gate's kernel."""
    kernel = next(parts["kernel"] for parts in weights.values() if "kernel" in parts)
    return int(kernel.shape[0]), int(layer.units)


def lstm_direction(layer: Any) -> DirectionWeights:
    """ONNX LSTM weights of one ``GatedLSTM`` (one direction)."""
    weights = layer.get_gate_weights()
    input_dim, units = _input_dim_and_units(layer, weights)
    order = gate_orders.ONNX_LSTM
    bias = _stack(weights, "bias", order, (units,))
    peephole = None
    if getattr(layer, "use_peepholes", False):
        peephole = _stack(weights, "peephole", gate_orders.ONNX_LSTM_PEEPHOLES, (units,))
    return DirectionWeights(
        W=_stack(weights, "kernel", order, (input_dim, units)),
        R=_stack(weights, "recurrent_kernel", order, (units, units)),
        B=np.concatenate([bias, np.zeros_like(bias)]),
        P=peephole,
        activations=_activations(layer, ("recurrent_activation", "activation", "activation")),
    )


def gru_direction(layer: Any) -> DirectionWeights:
    """ONNX GRU weights of one ``GatedGRU`` (``linear_before_reset = reset_after``)."""
    weights = layer.get_gate_weights()
    input_dim, units = _input_dim_and_units(layer, weights)
    order = gate_orders.ONNX_GRU
    return DirectionWeights(
        W=_stack(weights, "kernel", order, (input_dim, units)),
        R=_stack(weights, "recurrent_kernel", order, (units, units)),
        B=np.concatenate(
            [
                _stack(weights, "bias", order, (units,)),
                _stack(weights, "recurrent_bias", order, (units,)),
            ]
        ),
        P=None,
        activations=_activations(layer, ("recurrent_activation", "activation")),
    )


def _activations(layer: Any, arguments: tuple[str, ...]) -> list[OnnxActivation]:
    """ONNX activations for ``(f, g[, h])`` read from the layer's activation arguments."""
    return [
        to_onnx_activation(getattr(layer, arg), layer_name=layer.name, argument=arg)
        for arg in arguments
    ]


def stack_directions(directions: list[DirectionWeights]) -> dict[str, np.ndarray]:
    """``{"W", "R", "B"[, "P"]}`` with the leading ``num_directions`` axis ONNX expects."""
    arrays = {
        key: np.stack([getattr(d, key) for d in directions]).astype(np.float32)
        for key in ("W", "R", "B")
    }
    if any(d.P is not None for d in directions):
        size = len(gate_orders.ONNX_LSTM_PEEPHOLES) * directions[0].R.shape[1]
        arrays["P"] = np.stack(
            [d.P if d.P is not None else np.zeros(size, np.float32) for d in directions]
        ).astype(np.float32)
    return arrays
