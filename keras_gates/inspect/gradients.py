"""How far back gradients reach: ‖∂y/∂x_t‖ and ‖∂h_T/∂s_t‖ against the lag T - t.

Pascanu, Mikolov & Bengio (2013) plot these by hand; here they are one call for any Keras model
(``SimpleRNN``, stock ``LSTM``/``GRU``, gated layers, ``Bidirectional``, nested models).

- :func:`gradient_flow`: for the model output y at the last valid step, the Frobenius norm of the
  Jacobian ∂y_b/∂x_{b,t} (output components × input features) per sample b and step t.
- :func:`state_gradient_flow`: for every recurrent layer, the norm of ∂h_T/∂s_t, where h_T is the
  layer's hidden state after its last valid step and s_t its whole state after step t (h, and c
  for an LSTM; lag 0 is therefore ‖[I 0]‖ = √units). The layer's own cell is run over the inputs
  the model gives it, with a zero perturbation added to the state after every step; the
  gradient with respect to those perturbations is ∂h_T/∂s_t for all t at once.

Both are computed by automatic differentiation on the active Keras backend (``GradientTape``,
``jax.vjp`` or ``torch.autograd``, see :mod:`keras_gates.inspect.autodiff`) with batched
vector–Jacobian products: the batch is repeated once per output component (``copies``), each
copy gets a one-hot cotangent, and one backward pass gives every row of the Jacobian for every
step. Lags count valid steps back from each sample's last valid step (masked steps carry the
state unchanged and are left out, as in :mod:`keras_gates.inspect.horizon`); the curve is the mean
over the samples that have a step at that lag. The *reach* is the first lag at which the mean
norm falls below ``fraction`` (default 1e-3) of its value at lag 0 ("≥ T", censored, if never).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import keras
import numpy as np

from keras_gates import _internals
from keras_gates.inspect import autodiff
from keras_gates.inspect.horizon import lag_below
from keras_gates.inspect.trace import (
    BIDIRECTIONAL_DIRECTIONS,
    GatedLayerRef,
    capture_layer_calls,
    check_input_shape,
    combine_masks,
    input_mask_from_value,
)
from keras_gates.stateful import states_preserved

DEFAULT_FRACTION = 1e-3
MAX_COPIES_BATCH = 4096  # rows per backward pass (batch × output components)

# owner (model or layer) -> {key: compiled function}; an entry goes when its owner goes.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(owner, key: tuple, build: Callable) -> Callable:
    """A compiled gradient function kept per model/layer (and shape), so repeated analyses
    (GateMonitor, every epoch) do not trace and compile it again (``tf.function``, ``jax.jit``;
    PyTorch runs eagerly). Held outside the owner,
    so Keras never tracks or saves it."""
    functions = _COMPILED.setdefault(owner, {})
    if key not in functions:
        functions[key] = build()
    return functions[key]


def find_recurrent_layers(model: keras.layers.Layer, prefix: str = "") -> list[GatedLayerRef]:
    """Every ``keras.layers.RNN`` of ``model`` (gated or not), keyed like ``find_gated_layers``."""
    if isinstance(model, keras.layers.RNN):
        return [GatedLayerRef(prefix + model.name, model)]
    refs = []
    for layer in getattr(model, "layers", None) or []:
        if isinstance(layer, keras.layers.RNN):
            refs.append(GatedLayerRef(prefix + layer.name, layer))
        elif isinstance(layer, keras.layers.Bidirectional):
            children = (layer.forward_layer, layer.backward_layer)
            refs.extend(
                GatedLayerRef(f"{prefix}{layer.name}/{direction}", child, layer, direction)
                for direction, child in zip(BIDIRECTIONAL_DIRECTIONS, children, strict=True)
            )
        elif getattr(layer, "layers", None):
            refs.extend(find_recurrent_layers(layer, prefix=f"{prefix}{layer.name}/"))
    return refs


def _check_sequences(model, x) -> np.ndarray:
    if isinstance(x, (list, tuple, dict)):
        raise ValueError(
            f"Received {type(x).__name__} input: `gradient_flow` differentiates with respect to "
            "one (batch, time, features) float array. Pass a single-input model's batch."
        )
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(
            f"Received an invalid value for argument `x`, expected a float array of shape "
            f"(batch, time, features, ...), got shape {x.shape}. Token ids (2D) have no "
            "gradient: use `state_gradient_flow` for models that embed them."
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"Received `x` of dtype {x.dtype}: the gradient with respect to the input needs "
            "float values (cast with x.astype('float32'))."
        )
    check_input_shape(model, x)
    return x


def check_fraction(fraction: float) -> float:
    """Validate the gradient-reach threshold (a number in (0, 1)) and return it as a float."""
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"Received an invalid value for argument `fraction`, expected a number in (0, 1) "
            f"(e.g. 1e-3), got {fraction}."
        )
    return fraction


def model_mask(model, x: np.ndarray, mask_value: float | None = None) -> np.ndarray:
    """(batch, time) mask of ``x``'s valid steps: the mask the model gives its first recurrent
    layer that reads the input's time axis (``Masking``, ...), and ``mask_value``'s."""
    derived = None if mask_value is None else input_mask_from_value(x, mask_value)
    refs = find_recurrent_layers(model)
    captured = capture_layer_calls(model, x, refs) if refs else {}
    for ref in refs:
        record = captured[ref.key]
        if np.shape(record["inputs"])[:2] == x.shape[:2] and record["mask"] is not None:
            return combine_masks(ref.key, record["mask"], derived)
    return np.ones(x.shape[:2], bool) if derived is None else derived


def lag_profile(norms: np.ndarray, mask: np.ndarray, fraction: float) -> dict:
    """Per-sample norms (batch, time) at valid steps → the curve against lag and the reach."""
    lags = np.cumsum(mask[:, ::-1], axis=1)[:, ::-1] - 1  # valid steps after t
    span = max(int(mask.sum(axis=1).max()), 1)
    per_sample = np.full((mask.shape[0], span), np.nan)
    rows, steps = np.nonzero(mask)
    per_sample[rows, lags[rows, steps]] = norms[rows, steps]
    counts = (~np.isnan(per_sample)).sum(axis=0)
    mean = np.full(span, np.nan)
    has = counts > 0
    mean[has] = np.nansum(per_sample, axis=0)[has] / counts[has]
    relative = mean / mean[0] if mean[0] > 0 else np.full(span, np.nan)
    reach, censored = lag_below(relative, fraction)
    return {
        "lags": np.arange(span),
        "mean": mean,
        "relative": relative,
        "per_sample": per_sample,
        "samples": counts,
        "fraction": fraction,
        "reach": float(reach),
        "reach_censored": bool(censored),
    }


def _output_at_last_step(y, mask, steps: int):
    """Model output per sample as (batch, components): a sequence output (batch, time, ...)
    is taken at each sample's last valid step (``mask``: (batch, time) booleans)."""
    ops = keras.ops
    last = steps - 1 - ops.argmax(ops.cast(ops.flip(mask, axis=1), "int32"), axis=1)
    flat = []
    for out in y if isinstance(y, (list, tuple)) else [y]:
        if len(out.shape) >= 3 and out.shape[1] == steps:
            out = ops.reshape(out, (-1, steps, int(np.prod(out.shape[2:]))))
            out = ops.sum(out * ops.one_hot(last, steps, dtype=out.dtype)[:, :, None], axis=1)
        flat.append(ops.reshape(out, (-1, int(np.prod(out.shape[1:])))))
    return ops.concatenate(flat, axis=1) if len(flat) > 1 else flat[0]


def _input_function(model, steps: int):
    """∂⟨y_last, cotangent⟩/∂x for a batch repeated once per output component in the chunk."""

    def forward(x_rep, mask_rep):
        return _output_at_last_step(model(x_rep, training=False), mask_rep, steps)

    return autodiff.vjp_function(forward, model.variables)


def _batched_vjp_norms(model, x: np.ndarray, mask: np.ndarray, copies: int, chunk: int):
    """Σ over output components k of ‖∂y_k/∂x‖² per (sample, step), one backward pass per chunk
    of components (copy k of the batch gets the one-hot cotangent e_k); returns the root."""
    batch, steps = x.shape[:2]
    grad = _cached(model, ("input", steps), lambda: _input_function(model, steps))
    total = np.zeros(x.shape[:2])
    for start in range(0, copies, chunk):
        ks = np.arange(start, min(start + chunk, copies))
        x_rep = np.tile(x, (len(ks),) + (1,) * (x.ndim - 1))
        mask_rep = np.tile(mask, (len(ks), 1))
        onehot = np.repeat(np.eye(copies)[ks], batch, axis=0)
        with states_preserved(model):  # every chunk starts from the model's current state
            g = grad(x_rep, (mask_rep,), onehot).astype(np.float64)
        g = g.reshape(len(ks), batch, *g.shape[1:])
        total += np.square(g).sum(axis=(0, *range(3, g.ndim)))
    return np.sqrt(total)


def _stateful(model) -> bool:
    layers = _internals.flatten_layers(model, include_self=True)
    return any(getattr(layer, "stateful", False) for layer in layers)


def gradient_flow(
    model: keras.Model,
    x,
    mask: np.ndarray | None = None,
    mask_value: float | None = None,
    fraction: float = DEFAULT_FRACTION,
) -> dict:
    """‖∂y/∂x_t‖ against lag for the model output y: how far back the output's gradient reaches.

    Args:
        model: any built single-input Keras model over (batch, time, features) float inputs.
        x: the input batch.
        mask: optional (batch, time) booleans of the valid steps; default the mask the model
            computes itself (``Masking``, ...) combined with ``mask_value``'s.
        mask_value: optional padding value of ``x`` (as ``keras.layers.Masking``).
        fraction: the reach is the first lag where the mean norm < fraction × its lag-0 value.

    Returns:
        ``{"lags": (L,), "mean": (L,), "relative": mean / mean[0], "per_sample": (batch, L)
        (NaN where a sample has no step at that lag), "samples": (L,), "fraction", "reach",
        "reach_censored", "outputs": components of y}``.
    """
    fraction = check_fraction(fraction)
    x = _check_sequences(model, x)
    if mask is None:
        mask = model_mask(model, x, mask_value)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"Received `mask` of shape {mask.shape}: expected (batch, time) = {x.shape[:2]}."
        )
    with states_preserved(model):
        probe = _output_at_last_step(
            model(x, training=False), keras.ops.convert_to_tensor(mask), x.shape[1]
        )
    copies = int(probe.shape[-1])
    chunk = 1 if _stateful(model) else max(1, MAX_COPIES_BATCH // len(x))
    norms = _batched_vjp_norms(model, x, mask, copies, chunk)
    return {**lag_profile(norms, mask, fraction), "outputs": copies}


def _layer_inputs(ref: GatedLayerRef, record: dict, derived) -> tuple:
    layer = ref.layer
    inputs = record["inputs"]
    inputs = np.asarray(inputs[0] if isinstance(inputs, list) else inputs)
    fits = derived is not None and inputs.shape[:2] == derived.shape
    mask = combine_masks(ref.key, record["mask"], derived if fits else None)
    mask = np.ones(inputs.shape[:2], bool) if mask is None else mask
    state = record["initial_state"]
    if state is None and getattr(layer, "stateful", False) and layer.states is not None:
        state = [keras.ops.convert_to_numpy(v.value) for v in layer.states]
    if state is None:
        state = layer.cell.get_initial_state(batch_size=inputs.shape[0])
    state = [np.asarray(keras.ops.convert_to_numpy(s)) for s in keras.tree.flatten(state)]
    if layer.go_backwards:  # processing order: lags count back from the step processed last
        inputs, mask = inputs[:, ::-1], mask[:, ::-1]
    return inputs, mask, state


def _state_function(layer, sizes: tuple[int, ...]):
    """∂⟨h_T, cotangent⟩/∂δ: the cell runs in Keras' backend loop with a perturbation δ_t
    (zero) added to the state after every step; masked steps carry the state unchanged."""
    ops, cell, dtype = keras.ops, layer.cell, layer.compute_dtype
    structure = cell.get_initial_state(batch_size=1)
    bounds = [int(b) for b in np.cumsum(sizes)[:-1]]

    def forward(deltas, x_rep, m_rep, *s0):
        features = x_rep.shape[-1]

        def step(inputs_t, carry):
            x_t, m_t, d_t = ops.split(inputs_t, [features, features + 1], axis=-1)
            _, new = cell(x_t, keras.tree.pack_sequence_as(structure, carry), training=False)
            pieces = ops.split(d_t, bounds, axis=-1) if bounds else [d_t]
            states = [
                ops.where(m_t > 0.5, n, c) + p
                for n, c, p in zip(keras.tree.flatten(new), carry, pieces, strict=True)
            ]
            return states[0], states

        inputs = [
            ops.cast(x_rep, dtype),
            ops.cast(m_rep, dtype)[:, :, None],
            ops.cast(deltas, dtype),
        ]
        s0 = [ops.cast(s, dtype) for s in s0]
        return _internals.rnn_loop(step, ops.concatenate(inputs, axis=-1), s0)[2][0]

    return autodiff.vjp_function(forward, layer.variables)


def _state_norms(layer, inputs: np.ndarray, mask: np.ndarray, state: list) -> np.ndarray:
    """‖∂h_T/∂s_t‖_F per (sample, step) of processing order, one batched backward pass per
    chunk of hidden units (the batch repeated once per unit, one-hot cotangents)."""
    sizes = tuple(int(s.shape[-1]) for s in state)
    grad = _cached(layer, ("state", sizes), lambda: _state_function(layer, sizes))
    units, (batch, steps) = sizes[0], inputs.shape[:2]
    chunk = max(1, MAX_COPIES_BATCH // batch)
    total = np.zeros((batch, steps))
    for start in range(0, units, chunk):
        ks = np.arange(start, min(start + chunk, units))
        deltas = np.zeros((len(ks) * batch, steps, sum(sizes)), np.float32)
        x_rep = np.tile(inputs, (len(ks), 1, 1))
        m_rep = np.tile(mask, (len(ks), 1))
        s0 = [np.tile(s, (len(ks), 1)) for s in state]
        onehot = np.repeat(np.eye(units)[ks], batch, axis=0)
        g = grad(deltas, (x_rep, m_rep, *s0), onehot).astype(np.float64)
        total += np.square(g.reshape(len(ks), batch, steps, -1)).sum(axis=(0, 3))
    return np.sqrt(total)


def state_gradient_flow(
    model: keras.layers.Layer,
    x,
    mask_value: float | None = None,
    fraction: float = DEFAULT_FRACTION,
    refs: list[GatedLayerRef] | None = None,
) -> dict[str, dict]:
    """‖∂h_T/∂s_t‖ against lag for every recurrent layer of ``model`` (any ``keras.layers.RNN``).

    Args:
        model: a built Keras model (or one recurrent layer).
        x: the model input (what the model takes; token ids are fine here).
        mask_value: optional padding value of ``x`` (see ``trace_model``).
        fraction: the reach is the first lag where the mean norm < fraction × its lag-0 value.
        refs: the layers to analyse; default :func:`find_recurrent_layers` of ``model``.

    Returns:
        ``{ref.key: {"lags", "mean", "relative", "per_sample", "samples", "fraction", "reach",
        "reach_censored", "state_size": total state width}}``, lags in each layer's processing
        order (reversed for ``go_backwards``).
    """
    fraction = check_fraction(fraction)
    refs = find_recurrent_layers(model) if refs is None else list(refs)
    if not refs:
        raise ValueError(
            f"Model '{model.name}' has no recurrent layer (keras.layers.RNN: SimpleRNN, LSTM, "
            "GRU, GatedLSTM, GatedGRU, ...): there is no state gradient to measure."
        )
    check_input_shape(model, x)
    derived = None
    if mask_value is not None:
        derived = input_mask_from_value(np.asarray(x), mask_value)
    captured = capture_layer_calls(model, x, refs)
    result = {}
    for ref in refs:
        inputs, mask, state = _layer_inputs(ref, captured[ref.key], derived)
        norms = _state_norms(ref.layer, inputs, mask, state)
        result[ref.key] = {
            **lag_profile(norms, mask, fraction),
            "state_size": int(sum(s.shape[-1] for s in state)),
        }
    return result
