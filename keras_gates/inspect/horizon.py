"""Memory horizon from the gates: how much of each unit's state survives from step s to step t.

A gated layer carries its state through one *hold* gate: the LSTM cell state through the forget
gate (``c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t``; with ``coupled_input_forget`` the forget gate is
``1 - i_t``), the GRU hidden state through the update gate (Keras convention,
``h_t = z_t ⊙ h_{t-1} + (1 - z_t) ⊙ n_t``). The fraction of the state at step s still present at
step t > s is the product of the hold gate over (s, t]::

    R[s, t] = ∏_{s < k ≤ t} hold_k

Masked steps: Keras carries the state unchanged through a masked (padded) step, so its factor is 1
and it does not count as a lag step either: lags are counted in valid steps, in the order the layer
processes them (reversed for ``go_backwards``, i.e. the backward half of a ``Bidirectional``).
A lag of L therefore means "L valid steps later", whatever padding lies in between.

The summary per unit is the *memory half-life*: the smallest lag L >= 1 at which the mean
retention over all (sample, start step) pairs falls below 0.5, and the *1/e lag* (below 1/e).
A unit that never falls below the threshold within the longest lag the batch allows (T - 1 for
T valid steps) is *censored*: its value is reported as T with ``censored`` True ("≥ T").

Everything here works on plain numpy arrays (a ``layer.trace`` output); see
:mod:`keras_gates.inspect.gradients` for the gradient side.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

HALF = 0.5
INV_E = float(np.exp(-1.0))
CHUNK_VALUES = 1 << 22  # float64 values per working array of retention_curve (32 MiB)


def hold_gate_name(layer) -> str:
    """The gate through which ``layer`` carries its state: ``"forget"`` (LSTM), ``"update"``
    (GRU), or ``"1 - input"`` for an LSTM with ``coupled_input_forget``."""
    names = tuple(getattr(layer, "gate_names", None) or ())
    if "forget" in names:
        return "1 - input" if getattr(layer, "coupled_input_forget", False) else "forget"
    if "update" in names:
        return "update"
    raise ValueError(
        f"Received layer '{getattr(layer, 'name', layer)}' of type {type(layer).__name__}: "
        "retention needs a gated layer with a forget gate (GatedLSTM) or an update gate "
        "(GatedGRU). For any recurrent layer use `gradient_flow`/`state_gradient_flow`."
    )


def hold_factors(trace: Mapping[str, np.ndarray], gate: str) -> np.ndarray:
    """The per-step retention factor (batch, time, units) of a layer trace for ``gate``
    (a :func:`hold_gate_name` value)."""
    if gate == "1 - input":
        return 1.0 - np.asarray(trace["input"], dtype=np.float64)
    if gate not in trace:
        raise ValueError(
            f"Received a trace without the '{gate}' gate (it has {sorted(trace)}): pass the "
            "output of `layer.trace` for the layer whose hold gate this is."
        )
    return np.asarray(trace[gate], dtype=np.float64)


def _check(hold: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    hold = np.asarray(hold, dtype=np.float64)
    if hold.ndim != 3:
        raise ValueError(
            f"Received `hold` of shape {hold.shape}: expected a 3D array (batch, time, units) "
            "of hold-gate values, e.g. `layer.trace(x)['forget']`."
        )
    if mask is None:
        return hold, np.ones(hold.shape[:2], dtype=bool)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != hold.shape[:2]:
        raise ValueError(
            f"Received `mask` of shape {mask.shape}: expected (batch, time) = {hold.shape[:2]} "
            f"to match `hold` of shape {hold.shape}."
        )
    return hold, mask


def retention_matrix(hold: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``R[b, s, t, u]``: the fraction of unit u's state at step s still carried at step t.

    Args:
        hold: (batch, time, units) hold-gate values in processing order (:func:`hold_factors`).
        mask: optional (batch, time) booleans; a masked step's factor is 1 (state carried).

    Returns:
        float64 (batch, time, time, units): the product of ``hold`` over the valid steps in
        (s, t] for t >= s (1 on the diagonal), NaN for t < s. Memory grows as time²: use
        :func:`retention_curve` for long sequences.
    """
    hold, mask = _check(hold, mask)
    factors = np.where(mask[..., None], hold, 1.0)
    batch, steps, units = hold.shape
    result = np.full((batch, steps, steps, units), np.nan)
    for s in range(steps):  # multiply forward (a cumulative-product ratio would divide by 0)
        running = np.ones((batch, units))
        result[:, s, s] = running
        for t in range(s + 1, steps):
            running = running * factors[:, t]
            result[:, s, t] = running
    return result


def _compact(hold: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid steps of every sample moved to the front (order kept); the rest set to 1."""
    order = np.argsort(~mask, axis=1, kind="stable")
    compact = np.take_along_axis(hold, order[..., None], axis=1)
    lengths = mask.sum(axis=1)
    compact[np.arange(hold.shape[1])[None, :] >= lengths[:, None]] = 1.0
    return compact, lengths


def retention_curve(hold: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Mean retention against lag (in valid steps), per unit.

    Args:
        hold: (batch, time, units) hold-gate values in processing order (:func:`hold_factors`).
        mask: optional (batch, time) booleans of the valid steps.

    Returns:
        ``{"lags": (L,), "mean": (L, units), "per_sample": (batch, L, units), "pairs": (L,)}``
        with L = the longest valid length: ``mean[l, u]`` averages ``R[s, s + l]`` over every
        (sample, valid start step) pair that has l more valid steps, ``per_sample`` over the
        start steps of one sample (NaN where the sample is shorter), ``pairs`` counts the pairs.
    """
    hold, mask = _check(hold, mask)
    compact, lengths = _compact(hold, mask)
    batch, _, units = hold.shape
    span = max(int(lengths.max()) if batch else 0, 1)
    per_sample = np.full((batch, span, units), np.nan)
    sums = np.zeros((span, units))
    pairs = np.zeros(span, dtype=np.int64)
    chunk = max(1, CHUNK_VALUES // (span * units))  # bounds the working memory
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        _accumulate(compact[rows, :span], lengths[rows], per_sample[rows], sums, pairs)
    mean = np.full((span, units), np.nan)
    mean[pairs > 0] = sums[pairs > 0] / pairs[pairs > 0, None]
    return {"lags": np.arange(span), "mean": mean, "per_sample": per_sample, "pairs": pairs}


def _accumulate(compact, lengths, per_sample, sums, pairs) -> None:
    """Add one chunk of samples to the per-lag sums (``per_sample`` is filled in place)."""
    span = compact.shape[1]
    running = np.ones(compact.shape)  # running[b, s] = R[s, s + lag] in compact steps
    for lag in range(span):
        if lag:
            running = running[:, :-1] * compact[:, lag:]
        valid = np.arange(span - lag)[None, :] + lag < lengths[:, None]  # (chunk, span - lag)
        counts = valid.sum(axis=1)
        totals = np.einsum("bs,bsu->bu", valid.astype(np.float64), running)
        has = counts > 0
        per_sample[has, lag] = totals[has] / counts[has, None]
        sums[lag] += totals.sum(axis=0)
        pairs[lag] += counts.sum()


def lag_below(curve: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """First lag >= 1 at which each column of ``curve`` (lags, ...) is below ``threshold``.

    Returns ``(lags, censored)``: float arrays of the trailing shape; a column that never falls
    below gets ``len(curve)`` (the lag bound: "≥ T") with ``censored`` True; a column with no data
    (all NaN) gets NaN.
    """
    curve = np.asarray(curve, dtype=np.float64)
    below = curve[1:] < threshold
    found = below.any(axis=0)
    first = np.argmax(below, axis=0) + 1
    lags = np.where(found, first, len(curve)).astype(np.float64)
    empty = np.all(np.isnan(curve), axis=0) | (len(curve) < 1)
    lags[empty] = np.nan
    return lags, ~found & ~empty


def processing_order(layer, trace: Mapping[str, np.ndarray], values: np.ndarray):
    """``values`` and the trace's mask in the order ``layer`` processes steps (reversed for
    ``go_backwards``: ``layer.trace`` indexes step t as the one that read ``x[:, t]``)."""
    mask = trace.get("mask")
    if getattr(layer, "go_backwards", False):
        values = values[:, ::-1]
        mask = None if mask is None else np.asarray(mask)[:, ::-1]
    return values, mask


def layer_retention(layer, trace: Mapping[str, np.ndarray]) -> dict:
    """Retention curve, half-life and 1/e lag per unit of one gated layer's trace.

    Returns:
        :func:`retention_curve`'s arrays plus ``"gate"`` (:func:`hold_gate_name`),
        ``"half_life"``/``"e_lag"`` (units,) with ``"half_life_censored"``/``"e_lag_censored"``
        (see :func:`lag_below`), and ``"max_lag"``.
    """
    gate = hold_gate_name(layer)
    hold, mask = processing_order(layer, trace, hold_factors(trace, gate))
    curve = retention_curve(hold, mask)
    half, half_censored = lag_below(curve["mean"], HALF)
    e_lag, e_censored = lag_below(curve["mean"], INV_E)
    return {
        **curve,
        "gate": gate,
        "half_life": half,
        "half_life_censored": half_censored,
        "e_lag": e_lag,
        "e_lag_censored": e_censored,
        "max_lag": int(len(curve["lags"]) - 1),
    }


def median_lag(values: np.ndarray, censored: np.ndarray) -> tuple[float, bool]:
    """The lower median of per-unit lags (one unit's value), and whether it is censored.

    A censored unit ("≥ T") ranks above every measured one; the median is censored exactly when
    the unit it falls on is. NaN (no data) units are left out; all NaN gives (NaN, False).
    """
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan"), False
    flags = np.asarray(censored, dtype=bool)[keep]
    order = np.lexsort((values[keep], flags))  # measured first, ascending; censored last
    pick = order[(keep.sum() - 1) // 2]
    return float(values[keep][pick]), bool(flags[pick])


def memory_retention(
    model,
    x,
    mask_value: float | None = None,
    traces: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, dict]:
    """:func:`layer_retention` for every gated layer of ``model`` on the batch ``x``.

    Args:
        model: a built Keras model with GatedLSTM/GatedGRU layers (also in ``Bidirectional``).
        x: the model input.
        mask_value: optional padding value of ``x`` (see ``trace_model``).
        traces: ``trace_model`` output to reuse (skips tracing again).

    Returns:
        ``{layer key: layer_retention(...)}``.
    """
    from keras_gates.inspect.trace import find_gated_layers, trace_model

    refs = find_gated_layers(model)
    if not refs:
        raise ValueError(
            f"Model '{model.name}' has no gated layer (GatedLSTM/GatedGRU): retention is a "
            "product of forget/update gates, which a SimpleRNN or stock LSTM/GRU does not expose. "
            "Convert them with GatedLSTM.from_keras/GatedGRU.from_keras, or measure "
            "`gradient_flow`/`state_gradient_flow`, which work for any recurrent layer."
        )
    if traces is None:
        traces = trace_model(model, x, mask_value=mask_value, refs=refs)
    return {ref.key: layer_retention(ref.layer, traces[ref.key]) for ref in refs}
