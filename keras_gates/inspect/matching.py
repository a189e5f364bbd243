"""Hypothesis matching as LSTMVis defines it (Strobelt et al., "LSTMVis", IEEE TVCG 2018).

Select a span of one sample and a threshold: the hypothesis is the set S of units whose
activation stays above the threshold at every step of the span (and, with ``off_before`` /
``off_after``, below it on that many steps just before / after it). The matches are the other
places in the batch where the same set is on: maximal runs of counted steps where every unit of S
is above the threshold. A match's score counts how precisely it is S that is on (in the spirit of
LSTMVis's ranking of matches by the cells on and off):

    score = |S| - mean over the run's steps of (number of units outside S above the threshold)

so a run where only the selected units are on scores ``|S|``. Matches are ranked by score, then
by how close their length is to the span's, then by (sample, start); runs overlapping the query
span itself are left out.

Example:
    >>> found = match(model, x, span=(0, 12, 20), threshold=0.5)   # doctest: +SKIP
    >>> found.units, found.matches[:3]                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from keras_gates.inspect.probes import counted_steps, signal_names
from keras_gates.inspect.trace import trace_model


@dataclass
class Match:
    """The result of :func:`match`.

    Attributes:
        layer: the gated layer searched (a :class:`GatedLayerRef` key).
        signal: the signal thresholded (``"hidden"``, ``"cell"`` or a gate).
        threshold: the activation threshold.
        span: the query ``(sample, start, stop)`` (steps ``start`` to ``stop - 1``).
        units: the selected units, ascending (empty: no unit stays on across the span).
        matches: up to ``k`` other runs ``(sample, start, stop, score)``, best first.
    """

    layer: str
    signal: str
    threshold: float
    span: tuple[int, int, int]
    units: list[int]
    matches: list[tuple[int, int, int, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        """A JSON-ready dict with the attributes above (spans as lists)."""
        return {
            "layer": self.layer,
            "signal": self.signal,
            "threshold": self.threshold,
            "span": list(self.span),
            "units": list(self.units),
            "matches": [list(m) for m in self.matches],
        }


def check_span(span, valid: np.ndarray) -> tuple[int, int, int]:
    """``span`` as ints, inside the batch and made of counted steps only; else a ValueError."""
    try:
        sample, start, stop = (int(v) for v in span)
    except (TypeError, ValueError):
        raise ValueError(
            f"Received `span`={span!r}: expected three integers (sample, start, stop)."
        ) from None
    batch, steps = valid.shape
    if not (0 <= sample < batch and 0 <= start < stop <= steps):
        raise ValueError(
            f"Received `span`={span!r}: expected 0 <= sample < {batch} and "
            f"0 <= start < stop <= {steps} (steps start..stop-1 of one sample)."
        )
    if not valid[sample, start:stop].all():
        raise ValueError(
            f"Received `span`={span!r}, which covers padded (masked) steps: select steps of "
            "the sequence itself."
        )
    return sample, start, stop


def selected_units(on: np.ndarray, span: tuple[int, int, int], off_before: int, off_after: int):
    """Units on at every step of ``span`` and off on the ``off_before``/``off_after`` steps
    around it (as many as the sequence has); ``on`` is (batch, time, units) booleans."""
    sample, start, stop = span
    keep = on[sample, start:stop].all(axis=0)
    keep &= ~on[sample, max(start - off_before, 0) : start].any(axis=0)
    keep &= ~on[sample, stop : stop + off_after].any(axis=0)
    return np.flatnonzero(keep)


def runs(active: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs of True in each row of (batch, time) ``active``: ``(sample, start, stop)``."""
    padded = np.pad(active.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    starts, stops = np.nonzero(edges == 1), np.nonzero(edges == -1)
    return list(zip(starts[0].tolist(), starts[1].tolist(), stops[1].tolist(), strict=True))


def match(
    model,
    x,
    span: tuple[int, int, int],
    threshold: float = 0.5,
    layer: str | None = None,
    signal: str = "hidden",
    k: int = 10,
    *,
    off_before: int = 0,
    off_after: int = 0,
    mask: np.ndarray | None = None,
    traces: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Match:
    """Find the units on across ``span`` and the ``k`` other places in ``x`` where they are on.

    Args:
        model: a Keras model with gated layers.
        x: the input batch.
        span: ``(sample, start, stop)``: steps ``start`` to ``stop - 1`` of sample ``sample``.
        threshold: a unit is on where its activation is above this (default 0.5).
        layer: the gated layer's key (see :func:`find_gated_layers`); default the first one.
        signal: ``"hidden"`` (default), ``"cell"`` (LSTM) or a gate name.
        k: how many matches to return (default 10).
        off_before, off_after: also require the units to be off on this many steps just before
            / after the span (default 0: no such condition).
        mask: optional (batch, time) booleans of the steps that count, on top of the model's.
        traces: the result of :func:`trace_model` on ``x``, when already computed.

    Returns:
        A :class:`Match`: ``units`` and ``matches`` as ``(sample, start, stop, score)``, best
        first; the score is defined in this module's docstring.
    """
    traces = trace_model(model, x) if traces is None else traces
    key = next(iter(traces)) if layer is None else layer
    if key not in traces:
        raise ValueError(f"Received `layer`={layer!r}: expected one of {list(traces)}.")
    trace = traces[key]
    if signal not in signal_names(trace):
        raise ValueError(
            f"Received `signal`={signal!r} for layer '{key}': expected one of "
            f"{signal_names(trace)}."
        )
    if min(off_before, off_after) < 0:
        raise ValueError(
            f"Received `off_before`={off_before}, `off_after`={off_after}: expected step counts "
            ">= 0."
        )
    valid = counted_steps(key, trace, mask)
    span = check_span(span, valid)
    on = (np.asarray(trace[signal]) > threshold) & valid[..., None]
    units = selected_units(on, span, off_before, off_after)
    found = Match(key, signal, float(threshold), span, units.tolist())
    if units.size:
        found.matches = _ranked_matches(on, units, span, k)
    return found


def _ranked_matches(on: np.ndarray, units: np.ndarray, span, k: int) -> list:
    others_on = on.sum(axis=-1) - on[..., units].sum(axis=-1)
    totals = np.pad(np.cumsum(others_on, axis=1), ((0, 0), (1, 0)))
    sample, start, stop = span
    found = []
    for row, first, end in runs(on[..., units].all(axis=-1)):
        if row == sample and first < stop and end > start:
            continue  # the query span itself
        score = len(units) - (totals[row, end] - totals[row, first]) / (end - first)
        found.append((row, first, end, float(score)))
    length = stop - start
    found.sort(key=lambda m: (-m[3], abs((m[2] - m[1]) - length), m[0], m[1]))
    return found[: max(int(k), 0)]
