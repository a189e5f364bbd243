"""Trace every gated layer of a whole model.

The model is run once on the input batch while each gated layer (and each ``Bidirectional``
wrapping one) records the inputs, mask and initial state it is called with; each layer is then
traced on exactly those inputs with ``layer.trace``. This finds the mask the model itself gives the
layer (from ``Masking``, ``Embedding(mask_zero=True)`` or any other mask-producing layer), works for
functional, ``Sequential``, nested and subclassed models. Recording shadows each layer's ``call``
for one model call, which relies on how ``Layer.__call__`` finds ``call``: that one reliance on
Keras internals is :func:`keras_gates._internals.shadowed_calls`.
"""

from __future__ import annotations

import contextlib
import inspect as pyinspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import keras
import numpy as np

from keras_gates import _internals
from keras_gates.inspect.stats import activation_range
from keras_gates.stateful import states_preserved

BIDIRECTIONAL_DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True)
class GatedLayerRef:
    """Where a gated layer sits in a model.

    Attributes:
        key: unique name used in every result: the layer name, prefixed by the names of the
            enclosing models (``"encoder/gated_lstm"``); a layer inside ``Bidirectional`` is
            ``"<bidirectional name>/forward"`` or ``"<bidirectional name>/backward"``.
        layer: the gated layer (has ``trace``, ``get_gate_weights`` and ``gate_names``).
        wrapper: the ``Bidirectional`` holding it, or None.
        direction: ``"forward"``/``"backward"`` inside ``Bidirectional``, else None.
    """

    key: str
    layer: keras.layers.Layer
    wrapper: keras.layers.Layer | None = None
    direction: str | None = None


def is_gated(layer: object) -> bool:
    """True for a layer exposing the keras-gates inspection API (GatedLSTM, GatedGRU, ...)."""
    return (
        callable(getattr(layer, "trace", None))
        and callable(getattr(layer, "get_gate_weights", None))
        and getattr(layer, "gate_names", None) is not None
    )


def gate_value_ranges(layer: keras.layers.Layer) -> dict[str, tuple[float, float]]:
    """Value range of each gate's activation: ``activation`` for the candidate, else
    ``recurrent_activation`` (see :func:`keras_gates.inspect.stats.activation_range`)."""
    gate_activation = getattr(layer, "recurrent_activation", None)
    candidate_activation = getattr(layer, "activation", None)
    return {
        gate: activation_range(candidate_activation if gate == "candidate" else gate_activation)
        for gate in layer.gate_names
    }


def find_gated_layers(model: keras.layers.Layer, prefix: str = "") -> list[GatedLayerRef]:
    """Every gated layer of ``model``, depth first, in layer order (see :class:`GatedLayerRef`)."""
    if is_gated(model):
        return [GatedLayerRef(prefix + model.name, model)]
    refs = []
    for layer in getattr(model, "layers", None) or []:
        if is_gated(layer):
            refs.append(GatedLayerRef(prefix + layer.name, layer))
        elif isinstance(layer, keras.layers.Bidirectional):
            refs.extend(_bidirectional_refs(layer, prefix))
        elif getattr(layer, "layers", None):
            refs.extend(find_gated_layers(layer, prefix=f"{prefix}{layer.name}/"))
    return refs


def _bidirectional_refs(wrapper: keras.layers.Bidirectional, prefix: str) -> list[GatedLayerRef]:
    children = (wrapper.forward_layer, wrapper.backward_layer)
    return [
        GatedLayerRef(f"{prefix}{wrapper.name}/{direction}", child, wrapper, direction)
        for direction, child in zip(BIDIRECTIONAL_DIRECTIONS, children, strict=True)
        if is_gated(child)
    ]


def check_input_shape(model: keras.layers.Layer, x) -> None:
    """Raise a ValueError naming both shapes when array ``x`` does not fit a one-input model."""
    inputs = getattr(model, "inputs", None) if isinstance(model, keras.Model) else None
    if not inputs or isinstance(x, (list, tuple, dict)):
        return
    if len(inputs) != 1:
        raise ValueError(
            f"Model '{model.name}' takes {len(inputs)} inputs but one array was given: pass a "
            "list or dict of arrays, one per model input."
        )
    expected = tuple(inputs[0].shape)
    shape = tuple(np.shape(x))
    fits = len(shape) == len(expected) and all(
        e is None or e == s for e, s in zip(expected, shape, strict=True)
    )
    if not fits:
        wanted = "(" + ", ".join("any" if e is None else str(e) for e in expected) + ")"
        raise ValueError(
            f"Received input of shape {shape}, which does not fit model '{model.name}': expected "
            f"{wanted}. Pass a batch shaped like the model's input."
        )


def input_mask_from_value(x: np.ndarray, mask_value: float) -> np.ndarray:
    """(batch, time) mask of the steps where the input is not entirely ``mask_value``.

    Same rule as ``keras.layers.Masking``: a step is padding when every feature equals the value;
    for 2-D input (token ids) a step is padding when the id equals the value.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"Received `mask_value`={mask_value} for an input of shape {x.shape}: a mask value "
            "needs (batch, time, ...) input. Drop `mask_value` or pass sequences."
        )
    padded = x == mask_value
    if x.ndim > 2:
        padded = padded.all(axis=tuple(range(2, x.ndim)))
    return ~padded


@contextlib.contextmanager
def _recording_calls(layers: Sequence[keras.layers.Layer]) -> Iterator[dict[int, dict]]:
    """Make each layer record the arguments of its first ``call`` (keyed by ``id(layer)``)."""
    records: dict[int, dict] = {}
    with _internals.shadowed_calls(layers, lambda layer, call: _recorder(layer, call, records)):
        yield records


def _recorder(layer: keras.layers.Layer, call, records: dict[int, dict]):
    signature = pyinspect.signature(call)
    first = next(iter(signature.parameters))

    def recording_call(*args, **kwargs):
        if id(layer) not in records:
            bound = signature.bind(*args, **kwargs).arguments
            record = _concrete(
                {
                    "inputs": bound[first],
                    "mask": bound.get("mask"),
                    "initial_state": bound.get("initial_state"),
                }
            )
            if record is not None:
                records[id(layer)] = record
        return call(*args, **kwargs)

    return recording_call


def _concrete(record: dict) -> dict | None:
    """``record`` with numpy values, or None for a symbolic call (a model building itself by
    tracing its ``call`` on placeholders), which has no values to trace."""
    try:
        return {key: _to_numpy(value) for key, value in record.items()}
    except Exception:  # each backend signals a symbolic tensor with its own error type
        return None


def _to_numpy(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_to_numpy(v) for v in value]
    return keras.ops.convert_to_numpy(value)


def capture_layer_calls(model: keras.Model, x, refs: Sequence[GatedLayerRef]) -> dict[str, dict]:
    """Run ``model(x)`` once; return per ref key the numpy inputs, mask and initial state."""
    watched = [ref.layer for ref in refs] + [ref.wrapper for ref in refs if ref.wrapper]
    with states_preserved(model), _recording_calls(watched) as records:
        model(x, training=False)
    captured = {}
    for ref in refs:
        record = records.get(id(ref.layer)) or _from_wrapper(ref, records)
        if record is None:
            raise ValueError(
                f"Gated layer '{ref.key}' was not called when running the model on the input, "
                "so it cannot be traced. Inspect a model whose call uses every gated layer."
            )
        captured[ref.key] = record
    return captured


def _from_wrapper(ref: GatedLayerRef, records: dict[int, dict]) -> dict | None:
    """Inputs of a Bidirectional child when the wrapper took a fused path without calling it."""
    record = records.get(id(ref.wrapper)) if ref.wrapper is not None else None
    if record is None:
        return None
    state = record["initial_state"]
    if state is not None:
        half = len(state) // 2
        state = state[:half] if ref.direction == "forward" else state[half:]
    return {**record, "initial_state": state}


def combine_masks(key: str, captured, derived: np.ndarray | None):
    """The mask of gated layer ``key``: the one Keras passed it (``captured``, the sequences'
    when a list) and the one derived from ``mask_value`` (``derived``), both where both exist."""
    if isinstance(captured, list):  # a mask per input tensor: the sequences' comes first
        captured = captured[0] if captured else None
    if derived is None:
        return None if captured is None else np.asarray(captured).astype(bool)
    if captured is None:
        return derived
    captured = np.asarray(captured).astype(bool)
    if captured.shape != derived.shape:
        raise ValueError(
            f"Received `mask_value` giving a mask of shape {derived.shape}, but gated layer "
            f"'{key}' sees sequences masked with shape {captured.shape}. Use `mask_value` only "
            "when the gated layers read the model input's time axis."
        )
    return captured & derived


def trace_model(
    model: keras.Model,
    x,
    mask_value: float | None = None,
    refs: Sequence[GatedLayerRef] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-timestep gate activations of every gated layer of ``model`` on the batch ``x``.

    Args:
        model: a built Keras model (or a single gated layer).
        x: the model input (numpy array, or the list/dict the model takes).
        mask_value: optional; steps where the input equals this value everywhere are treated as
            padding (like ``keras.layers.Masking``), on top of any mask the model computes itself.
        refs: the layers to trace; default :func:`find_gated_layers` of ``model``.

    Returns:
        ``{ref.key: layer.trace(...)}``: per gate a (batch, time, units) array, plus ``"hidden"``,
        ``"cell"`` (LSTM) and the (batch, time) boolean ``"mask"`` of the steps that count.
        A layer the model calls more than once (shared) is traced on its first call.
    """
    refs = find_gated_layers(model) if refs is None else list(refs)
    if not refs:
        raise ValueError(
            f"Model '{model.name}' has no gated layer (GatedLSTM/GatedGRU, also inside "
            "Bidirectional or nested models): there is nothing to inspect."
        )
    check_input_shape(model, x)
    if mask_value is not None and isinstance(x, (list, tuple, dict)):
        raise ValueError(
            f"Received `mask_value`={mask_value} with {type(x).__name__} input: a mask value "
            "needs the model's single (batch, time, ...) array. Drop `mask_value` and mask in "
            "the model (Masking, Embedding(mask_zero=True))."
        )
    derived = None if mask_value is None else input_mask_from_value(x, mask_value)
    captured = capture_layer_calls(model, x, refs)
    traces = {}
    for ref in refs:
        record = captured[ref.key]
        mask = combine_masks(ref.key, record["mask"], derived)
        trace = ref.layer.trace(record["inputs"], mask=mask, initial_state=record["initial_state"])
        traces[ref.key] = {key: np.asarray(value) for key, value in trace.items()}
    return traces
