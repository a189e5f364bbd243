"""Keras activations as the activation names (and alpha/beta) of the ONNX LSTM/GRU operators."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ExportError


@dataclasses.dataclass(frozen=True)
class OnnxActivation:
    """One ONNX RNN activation. ``alpha``/``beta`` are ``None`` where the function takes none."""

    name: str
    alpha: float | None = None
    beta: float | None = None


# Keras activation name -> the ONNX RNN activation computing the same function.
# hard_sigmoid: Keras 3 uses relu6(x + 3) / 6, i.e. clip(x / 6 + 0.5, 0, 1).
KERAS_TO_ONNX = {
    "sigmoid": OnnxActivation("Sigmoid"),
    "tanh": OnnxActivation("Tanh"),
    "relu": OnnxActivation("Relu"),
    "hard_sigmoid": OnnxActivation("HardSigmoid", 1.0 / 6.0, 0.5),
    "linear": OnnxActivation("Affine", 1.0, 0.0),
    "softsign": OnnxActivation("Softsign"),
    "softplus": OnnxActivation("Softplus"),
    "elu": OnnxActivation("Elu", 1.0),
    "leaky_relu": OnnxActivation("LeakyRelu", 0.2),
}


def keras_activation_name(fn: Any) -> str:
    """The registered Keras name of an activation callable (``"tanh"``), or its repr."""
    import keras

    if isinstance(fn, str):
        return fn
    try:
        name = keras.activations.serialize(fn)
    except (ValueError, TypeError):
        return repr(fn)
    if isinstance(name, dict):  # a serialised custom object
        return str(name.get("config", name))
    return str(name)


def to_onnx_activation(fn: Any, *, layer_name: str, argument: str) -> OnnxActivation:
    """Map a Keras activation to its ONNX RNN equivalent, or fail naming the layer and argument."""
    name = keras_activation_name(fn)
    if name not in KERAS_TO_ONNX:
        raise ExportError(
            f"Layer {layer_name!r}: received an activation the ONNX LSTM/GRU operators cannot "
            f"express for argument `{argument}`, got {name!r}; expected one of "
            f"{sorted(KERAS_TO_ONNX)}. Use one of those activations to export this layer."
        )
    return KERAS_TO_ONNX[name]


def activation_attributes(per_direction: list[list[OnnxActivation]]) -> dict[str, list]:
    """``activations``/``activation_alpha``/``activation_beta`` node attributes.

    onnxruntime consumes ``activation_alpha``/``activation_beta`` only for the functions that
    take them, in order (measured: listing a placeholder alpha for ``Sigmoid`` shifts the values
    of later functions), so only those values are listed.
    """
    flat = [act for direction in per_direction for act in direction]
    attrs: dict[str, list] = {"activations": [act.name for act in flat]}
    alphas = [act.alpha for act in flat if act.alpha is not None]
    betas = [act.beta for act in flat if act.beta is not None]
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs
