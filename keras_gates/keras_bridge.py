"""The bridge between the gated layers and the stock ``keras.layers.LSTM``/``GRU``: the same
configuration, the weights split into gates or fused back in Keras' order (``gates.py``)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gates import gates as gate_orders

# Arguments every gated layer has and the stock layers do not.
_GATED_ARGUMENTS = ("frozen_gates", "gate_initializers")


def from_keras(cls: type, layer: keras.layers.Layer) -> Any:
    """``cls`` (GatedLSTM or GatedGRU) configured as the built stock ``layer``, its weights copied
    gate by gate (and its state, for a stateful layer)."""
    if not isinstance(layer, cls.keras_class):
        raise TypeError(
            f"{cls.__name__}.from_keras expects a keras.layers.{cls.keras_class.__name__}, "
            f"got {type(layer).__name__}."
        )
    if not layer.built:
        raise ValueError(f"Layer {layer.name!r} is not built yet: call it on data first.")
    config = {k: v for k, v in layer.get_config().items() if k != "implementation"}
    gated = cls.from_config(config)
    input_dim = layer.cell.kernel.shape[0]
    batch = layer.states[0].shape[0] if layer.stateful else None
    gated.build((batch, None, input_dim))
    gated.set_gate_weights(_split_keras_weights(layer, cls.keras_order))
    if layer.stateful:
        for mine, theirs in zip(gated.states, layer.states):
            mine.assign(theirs.value)
    return gated


def to_keras(gated: Any) -> keras.layers.Layer:
    """The stock Keras layer equivalent to the built ``gated`` layer, where one exists."""
    blockers = [a for a in gated.gated_only_arguments if getattr(gated, a)]
    if blockers:
        raise ValueError(
            f"keras.layers.{gated.keras_class.__name__} has no equivalent of "
            f"{', '.join(f'{b}=True' for b in blockers)}; keep the gated layer instead."
        )
    drop = {*_GATED_ARGUMENTS, *gated.gated_only_arguments}
    config = {k: v for k, v in gated.get_config().items() if k not in drop}
    layer = gated.keras_class.from_config(config)
    batch = gated.states[0].shape[0] if gated.stateful else None
    layer.build((batch, None, gated.cell.input_dim))
    _assign_keras_weights(layer, gated.get_gate_weights(), gated.keras_order)
    return layer


def _keras_bias_rows(layer) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not layer.use_bias:
        return None, None
    bias = ops.convert_to_numpy(layer.cell.bias)
    return (bias[0], bias[1]) if bias.ndim == 2 else (bias, None)


def _split_keras_weights(layer, gate_names) -> dict[str, dict[str, np.ndarray]]:
    parts = {
        "kernel": ops.convert_to_numpy(layer.cell.kernel),
        "recurrent_kernel": ops.convert_to_numpy(layer.cell.recurrent_kernel),
    }
    bias, recurrent_bias = _keras_bias_rows(layer)
    if bias is not None:
        parts["bias"] = bias
    if recurrent_bias is not None:
        parts["recurrent_bias"] = recurrent_bias
    per_part = {part: gate_orders.split(value, gate_names) for part, value in parts.items()}
    return {gate: {part: per_part[part][gate] for part in per_part} for gate in gate_names}


def _assign_keras_weights(layer, weights, gate_names) -> None:
    def fused(part):
        return gate_orders.fuse({g: weights[g][part] for g in gate_names}, gate_names)

    layer.cell.kernel.assign(fused("kernel"))
    layer.cell.recurrent_kernel.assign(fused("recurrent_kernel"))
    if layer.use_bias:
        bias = fused("bias")
        if "recurrent_bias" in weights[gate_names[0]]:
            bias = np.stack([bias, fused("recurrent_bias")])
        layer.cell.bias.assign(bias)
