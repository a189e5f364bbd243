"""``torch.nn.LSTM``/``torch.nn.GRU`` to gated layers and back, gate by gate.

PyTorch fuses a layer's gates in ``weight_ih_l{k}`` ``(G*H, I)``, ``weight_hh_l{k}`` ``(G*H, H)``,
``bias_ih_l{k}`` and ``bias_hh_l{k}`` (``_reverse`` for the backward direction), in its orders
``gates.TORCH_LSTM`` (``ifgo``) and ``gates.TORCH_GRU`` (``rzn``). An LSTM's two biases are only
ever added, so the gated LSTM holds their sum; PyTorch's GRU is Keras' ``reset_after=True`` form,
its ``bias_hh`` the gated GRU's ``recurrent_bias``. torch is imported only by :func:`to_torch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_gates import gates as gate_orders

from .layers import bidirectional, directions, gated_layer, gates_to_rows, kind_of, rows_to_gates

TORCH_ORDERS = {"LSTM": gate_orders.TORCH_LSTM, "GRU": gate_orders.TORCH_GRU}
# What the gated layers compute and torch.nn.LSTM/GRU always compute.
TORCH_ACTIVATIONS = {"recurrent_activation": "sigmoid", "activation": "tanh"}


def _kind(module: Any) -> str:
    kind = type(module).__name__
    mode = getattr(module, "mode", None)
    if mode in ("LSTM", "GRU") and kind in ("LSTM", "GRU"):
        return kind
    raise TypeError(
        f"from_torch expects a torch.nn.LSTM or torch.nn.GRU, got {type(module).__name__}. "
        "Convert each recurrent submodule of a larger model on its own."
    )


def _array(module: Any, name: str) -> np.ndarray:
    return getattr(module, name).detach().cpu().numpy().astype(np.float32)


def _direction_weights(module: Any, kind: str, suffix: str) -> dict[str, dict[str, np.ndarray]]:
    """One direction of one torch layer (``suffix`` like ``"_l0"`` or ``"_l1_reverse"``)."""
    stacked = {
        "kernel": _array(module, f"weight_ih{suffix}"),
        "recurrent_kernel": _array(module, f"weight_hh{suffix}"),
    }
    if module.bias:
        bias = _array(module, f"bias_ih{suffix}")
        recurrent_bias = _array(module, f"bias_hh{suffix}")
        if kind == "LSTM":  # i, f, g, o each see b_ih + b_hh, nothing else
            stacked["bias"] = bias + recurrent_bias
        else:  # reset_after: b_hh is multiplied by the reset gate with h U
            stacked["bias"], stacked["recurrent_bias"] = bias, recurrent_bias
    return rows_to_gates(stacked, TORCH_ORDERS[kind])


def from_torch(module: Any) -> list[keras.layers.Layer]:
    """Gated layers computing what a ``torch.nn.LSTM`` or ``torch.nn.GRU`` computes.

    One layer per torch layer (``num_layers``), ``keras.layers.Bidirectional`` (outputs
    ``[forward, backward]`` concatenated) for a bidirectional module, all with
    ``return_sequences=True``. Applied in order to a batch-first ``(batch, time, features)``
    input they give the module's output sequence (with ``batch_first=False`` the module takes
    ``(time, batch, features)``: transpose its input, the layers take batch first). Padding:
    pass ``mask`` to each layer where PyTorch takes a packed sequence. Dropout between torch
    layers applies in training only and is not carried over.

    Args:
        module: A ``torch.nn.LSTM`` (without ``proj_size``) or ``torch.nn.GRU``.

    Returns:
        A list of ``num_layers`` built layers (``GatedLSTM``/``GatedGRU``, or ``Bidirectional``).
    """
    kind = _kind(module)
    if getattr(module, "proj_size", 0):
        raise ValueError(
            f"Received a torch.nn.LSTM with proj_size={module.proj_size}: the gated layers have "
            "no projected hidden state (h = (o * tanh(c)) @ W_hr). Convert an LSTM built "
            "with proj_size=0."
        )
    units, input_dim = int(module.hidden_size), int(module.input_size)
    config = {"use_bias": bool(module.bias), **TORCH_ACTIVATIONS}
    if kind == "GRU":
        config["reset_after"] = True
    layers = []
    for k in range(module.num_layers):
        weights = _direction_weights(module, kind, f"_l{k}")
        forward = gated_layer(kind, units, input_dim, weights, **config)
        if module.bidirectional:
            backward_weights = _direction_weights(module, kind, f"_l{k}_reverse")
            backward = gated_layer(
                kind, units, input_dim, backward_weights, go_backwards=True, **config
            )
            layers.append(bidirectional(forward, backward))
        else:
            layers.append(forward)
        input_dim = units * (2 if module.bidirectional else 1)
    return layers


def _to_torch_check(layers: Sequence[Any]) -> tuple[str, dict]:
    """``(kind, torch constructor arguments)`` of ``layers``, or raise saying what cannot map."""
    if not layers:
        raise ValueError("to_torch received no layers; pass the list from_torch returned.")
    unbuilt = [layer.name for layer in layers if not layer.built]
    if unbuilt:
        raise ValueError(f"to_torch received layers not built yet {unbuilt}: call them on data.")
    kinds = {kind_of(layer) for layer in layers}
    if len(kinds) != 1:
        raise ValueError(f"to_torch needs layers of one kind (all LSTM or all GRU), got {kinds}.")
    kind = kinds.pop()
    first = directions(layers[0])
    settings = {
        "input_size": int(first[0].cell.input_dim),
        "hidden_size": int(first[0].units),
        "num_layers": len(layers),
        "bias": bool(first[0].cell.use_bias),
        "batch_first": True,
        "bidirectional": len(first) == 2,
    }
    input_dim = settings["input_size"]
    for layer in layers:
        _check_torch_layer(layer, kind, settings, input_dim)
        input_dim = settings["hidden_size"] * (2 if settings["bidirectional"] else 1)
    return kind, settings


def _check_torch_layer(layer: Any, kind: str, settings: dict, input_dim: int) -> None:
    parts = directions(layer)
    wanted = {
        "units": settings["hidden_size"],
        "use_bias": settings["bias"],
        **TORCH_ACTIVATIONS,
        **({"reset_after": True} if kind == "GRU" else {}),
        **({"use_peepholes": False, "coupled_input_forget": False} if kind == "LSTM" else {}),
    }
    problems = []
    if (len(parts) == 2) != settings["bidirectional"]:
        problems.append("Bidirectional and unidirectional layers mixed")
    if len(parts) == 2 and layer.merge_mode != "concat":
        problems.append(f"merge_mode={layer.merge_mode!r} (PyTorch concatenates)")
    if len(parts) == 1 and parts[0].go_backwards:
        problems.append("go_backwards=True outside Bidirectional")
    for part in parts:
        if int(part.cell.input_dim) != input_dim:
            problems.append(f"input size {part.cell.input_dim}, expected {input_dim}")
        for key, value in wanted.items():
            got = getattr(part, key)
            got = keras.activations.serialize(got) if callable(got) else got
            if got != value:
                problems.append(f"{key}={got!r} (PyTorch's is {value!r})")
    if problems:
        raise ValueError(
            f"Layer {layer.name!r} has no torch.nn.{kind} equivalent: {'; '.join(problems)}. "
            "to_torch takes layers as from_torch returns them."
        )


def to_torch(layers: Sequence[keras.layers.Layer]) -> Any:
    """The ``torch.nn.LSTM``/``torch.nn.GRU`` (``batch_first=True``) computing what ``layers``
    applied in order compute: the inverse of :func:`from_torch`.

    The layers must be all ``GatedLSTM`` or all ``GatedGRU`` (``reset_after=True``), built, of one
    size and bias setting, with PyTorch's activations, each feeding the next, all ``Bidirectional``
    (``merge_mode="concat"``) or none. An LSTM bias goes to ``bias_ih`` (``bias_hh`` is zero).
    """
    kind, settings = _to_torch_check(layers)
    try:
        import torch
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "to_torch needs PyTorch: pip install torch (or keras-gates[torch]).", name="torch"
        ) from err

    module = getattr(torch.nn, kind)(**settings)
    state = {}
    for k, layer in enumerate(layers):
        for part, suffix in zip(directions(layer), (f"_l{k}", f"_l{k}_reverse")):
            state.update(_torch_state(part.get_gate_weights(), kind, suffix, settings["bias"]))
    module.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()})
    return module.eval()


def _torch_state(weights: dict, kind: str, suffix: str, bias: bool) -> dict[str, np.ndarray]:
    order = TORCH_ORDERS[kind]
    state = {
        f"weight_ih{suffix}": gates_to_rows(weights, "kernel", order),
        f"weight_hh{suffix}": gates_to_rows(weights, "recurrent_kernel", order),
    }
    if bias:
        state[f"bias_ih{suffix}"] = gates_to_rows(weights, "bias", order)
        state[f"bias_hh{suffix}"] = (
            gates_to_rows(weights, "recurrent_bias", order)
            if kind == "GRU"
            else np.zeros_like(state[f"bias_ih{suffix}"])
        )
    return state
