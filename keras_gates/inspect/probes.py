"""Concept probes: score every unit of every gated layer against per-step concept labels.

A concept is a label per time step, shaped like the batch's ``(batch, time)``: boolean (or 0/1
integers) for a binary concept ("inside a string literal"), float for a continuous one ("bracket
depth"). Every signal the trace records — ``hidden``, ``cell`` (LSTM) and each gate — of every
unit of every gated layer (both directions of a ``Bidirectional``) is scored on the steps that
count (the model's mask, and ``mask`` when given): ROC AUC for a binary concept, Pearson r for a
continuous one (:mod:`keras_gates.inspect.scores`). Numpy only after tracing, so every Keras
backend works.

Example:
    >>> result = probe(model, x, {"in_string": in_string})     # doctest: +SKIP
    >>> print(result.table())                                   # doctest: +SKIP
    >>> best = result.top("in_string", k=1)[0]                  # doctest: +SKIP
    >>> best.layer, best.signal, best.unit, best.score          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from keras_gates.inspect.scores import METRICS, average_ranks, pearson, roc_auc, strength
from keras_gates.inspect.stats import NON_GATE_KEYS, to_json_number
from keras_gates.inspect.trace import trace_model

PROBE_FORMAT = "keras-gates-probe/1"


@dataclass(frozen=True)
class ProbeRow:
    """One scored unit: ``score`` is the ROC AUC (``metric`` ``"auc"``) or Pearson r
    (``"pearson"``) of ``signal`` of unit ``unit`` of gated layer ``layer`` for ``concept``."""

    concept: str
    layer: str
    signal: str
    unit: int
    score: float
    metric: str


def concept_kind(name: str, labels: np.ndarray) -> str:
    """``"binary"`` for boolean or 0/1 integer labels, ``"continuous"`` for floats; else raise."""
    if labels.dtype == bool:
        return "binary"
    if np.issubdtype(labels.dtype, np.integer):
        if np.isin(labels, (0, 1)).all():
            return "binary"
        raise ValueError(
            f"Received integer labels for concept {name!r} with values other than 0 and 1 "
            f"(e.g. {labels[~np.isin(labels, (0, 1))].flat[0]}): expected booleans or 0/1 for "
            "a binary concept. Cast them to float for a continuous one."
        )
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all():
            raise ValueError(
                f"Received non-finite float labels for concept {name!r}: expected finite "
                "numbers. Exclude unknown steps with `mask` instead."
            )
        return "continuous"
    raise ValueError(
        f"Received labels of dtype {labels.dtype} for concept {name!r}: expected bool or 0/1 "
        "integers (binary concept) or floats (continuous concept)."
    )


def check_labels(labels: Mapping, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """``labels`` as ``{name: (batch, time) array}``, each checked against ``shape`` and given a
    known kind (:func:`concept_kind`); raise a ValueError naming the concept otherwise."""
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(
            f"Received `labels` of type {type(labels).__name__}: expected a non-empty dict "
            f"mapping each concept name to a {shape} (batch, time) array."
        )
    checked = {}
    for name, value in labels.items():
        value = np.asarray(value)
        if value.shape != tuple(shape):
            raise ValueError(
                f"Received labels of shape {value.shape} for concept {name!r}: expected "
                f"{tuple(shape)}, one label per (sample, time step) of the input batch."
            )
        concept_kind(name, value)
        checked[str(name)] = value
    return checked


@dataclass
class ProbeResult:
    """Scores of every (layer, signal, unit) for every concept (see :func:`probe`).

    Attributes:
        scores: ``{concept: {layer: {signal: (units,) array}}}``; NaN where undefined (Pearson r
            of a unit that never changes).
        metrics: ``{concept: "auc" | "pearson"}``.
        steps: ``{concept: number of (sample, step) pairs counted}`` (of the first layer).
        positives: ``{concept: steps inside the concept}`` (binary concepts only).
    """

    scores: dict[str, dict[str, dict[str, np.ndarray]]]
    metrics: dict[str, str]
    steps: dict[str, int]
    positives: dict[str, int]

    @property
    def concepts(self) -> list[str]:
        return list(self.scores)

    def top(self, concept: str, k: int = 5) -> list[ProbeRow]:
        """The ``k`` strongest units for ``concept``: by ``|AUC - 0.5|`` or ``|r|``, ties in layer,
        signal and unit order."""
        if concept not in self.scores:
            raise KeyError(
                f"Received unknown concept {concept!r}: expected one of {self.concepts}."
            )
        metric = self.metrics[concept]
        keys = [(layer, signal) for layer, per in self.scores[concept].items() for signal in per]
        blocks = [self.scores[concept][layer][signal] for layer, signal in keys]
        flat = np.concatenate(blocks)
        block = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
        unit = np.concatenate([np.arange(len(b)) for b in blocks])
        best = np.lexsort((unit, block, -strength(flat, metric)))[: max(int(k), 0)]
        return [
            ProbeRow(concept, *keys[block[i]], int(unit[i]), float(flat[i]), metric) for i in best
        ]

    def table(self, k: int = 5) -> str:
        """A fixed-width text table of the ``k`` strongest units per concept."""
        rows = [row for concept in self.concepts for row in self.top(concept, k)]
        header = ("concept", "metric", "layer", "signal", "unit", "score")
        cells = [
            (r.concept, r.metric, r.layer, r.signal, str(r.unit), f"{r.score:.3f}") for r in rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
        lines = [
            "  ".join(f"{c:<{w}}" for c, w in zip(cell, widths, strict=True)).rstrip()
            for cell in (header, *cells)
        ]
        return "\n".join(lines)

    def to_json(self, k: int = 5) -> dict:
        """A JSON-ready dict: per concept its metric, counts, top ``k`` rows and every score.

        ``{"format": "keras-gates-probe/1", "concepts": {NAME: {"metric": "auc" | "pearson",
        "steps": int, "positives": int | null, "top": [{"layer", "signal", "unit", "score"}],
        "scores": {LAYER: {SIGNAL: [float | null per unit]}}}}}`` (NaN is null).
        """
        return {
            "format": PROBE_FORMAT,
            "concepts": {
                concept: {
                    "metric": self.metrics[concept],
                    "steps": self.steps[concept],
                    "positives": self.positives.get(concept),
                    "top": [_row_json(row) for row in self.top(concept, k)],
                    "scores": {
                        layer: {
                            signal: [to_json_number(v) for v in values]
                            for signal, values in per.items()
                        }
                        for layer, per in self.scores[concept].items()
                    },
                }
                for concept in self.concepts
            },
        }


def _row_json(row: ProbeRow) -> dict:
    return {
        "layer": row.layer,
        "signal": row.signal,
        "unit": row.unit,
        "score": to_json_number(row.score),
    }


def signal_names(trace: Mapping[str, np.ndarray]) -> list[str]:
    """The per-unit signals of a layer trace: ``hidden``, ``cell`` (LSTM), then each gate."""
    first = [name for name in ("hidden", "cell") if name in trace]
    return first + [name for name in trace if name not in NON_GATE_KEYS]


def counted_steps(key: str, trace: Mapping, mask: np.ndarray | None) -> np.ndarray:
    """(batch, time) boolean of the steps of layer ``key`` that count: its trace mask and
    ``mask``; raise when ``mask`` does not fit the layer's time axis."""
    valid = np.asarray(trace["mask"], dtype=bool)
    if mask is None:
        return valid
    mask = np.asarray(mask)
    if mask.shape != valid.shape:
        raise ValueError(
            f"Received `mask` of shape {mask.shape}, but gated layer '{key}' runs over "
            f"{valid.shape} (batch, time) steps: pass one boolean per (sample, step)."
        )
    return valid & mask.astype(bool)


def probe(
    model,
    x,
    labels: Mapping[str, np.ndarray],
    mask: np.ndarray | None = None,
    *,
    traces: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> ProbeResult:
    """Score every unit of every gated layer of ``model`` on ``x`` against concept ``labels``.

    Args:
        model: a Keras model with gated layers (also nested or inside ``Bidirectional``).
        x: the input batch.
        labels: ``{concept: (batch, time) array}``: bool or 0/1 (binary, scored by ROC AUC) or
            float (continuous, scored by Pearson r).
        mask: optional (batch, time) booleans; False steps are not counted, on top of the steps
            the model masks itself (``Masking``, ``Embedding(mask_zero=True)``).
        traces: the result of :func:`trace_model` on ``x``, when already computed.

    Returns:
        A :class:`ProbeResult`; ``.top(concept, k)`` ranks units by ``|AUC - 0.5|`` or ``|r|``.
    """
    traces = trace_model(model, x) if traces is None else traces
    first = next(iter(traces.values()))
    labels = check_labels(labels, np.shape(first["mask"]))
    metrics = {name: METRICS[concept_kind(name, value)] for name, value in labels.items()}
    scores = {name: {} for name in labels}
    steps, positives = {}, {}
    for key, trace in traces.items():
        valid = counted_steps(key, trace, mask)
        targets = {name: _counted_labels(name, key, value, valid) for name, value in labels.items()}
        for name, target in targets.items():
            steps.setdefault(name, len(target))
            if metrics[name] == "auc":
                positives.setdefault(name, int(target.astype(bool).sum()))
            scores[name][key] = {}
        for signal in signal_names(trace):
            values = np.asarray(trace[signal])[valid]
            ranked = None
            if "auc" in metrics.values():  # one sort serves every binary concept
                ranked = average_ranks(np.ascontiguousarray(values.T))
            for name, target in targets.items():
                scores[name][key][signal] = _score(name, key, values, target, metrics[name], ranked)
    return ProbeResult(scores, metrics, steps, positives)


def _counted_labels(name: str, key: str, value: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if valid.shape != value.shape:
        raise ValueError(
            f"Received labels of shape {value.shape} for concept {name!r}, but gated layer "
            f"'{key}' runs over {valid.shape} (batch, time) steps."
        )
    return value[valid]


def _score(concept: str, key: str, values, target, metric: str, ranked) -> np.ndarray:
    try:
        if metric == "auc":
            return roc_auc(values, target, ranked=ranked)
        return pearson(values, target)
    except ValueError as err:
        raise ValueError(f"Concept {concept!r} on layer '{key}': {err}") from None
