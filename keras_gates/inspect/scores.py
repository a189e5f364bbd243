"""How well each unit's activation tells a concept: ROC AUC and Pearson r for all units at once.

Both take ``values`` shaped ``(steps, units)`` (one row per counted time step) and one label per
step, and return one score per unit, vectorised over units (one sort of the whole matrix, no
Python loop over units):

- :func:`roc_auc` for a binary concept: the probability that a step inside the concept has a
  higher activation than a step outside it, ties counting one half (Mann-Whitney U / (n₊ n₋)).
  0.5 is chance; 1 means the unit is high exactly inside, 0 exactly outside: both are a perfect
  detector, so units are ranked by :func:`strength` ``|AUC - 0.5|``.
- :func:`pearson` for a continuous one: the correlation coefficient r, ranked by ``|r|``.
"""

from __future__ import annotations

import numpy as np

#: Score name of each concept kind.
METRICS = {"binary": "auc", "continuous": "pearson"}


def average_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..n along the last axis of ``values`` (units, steps), ties sharing their mean rank.

    Returns the ranks in sorted order and that order (``argsort`` along the last axis).
    """
    order = np.argsort(values, axis=-1)
    ordered = np.take_along_axis(values, order, axis=-1)
    count = values.shape[-1]
    steps = np.arange(count, dtype=np.int32)
    starts_group = np.ones(ordered.shape, bool)
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=starts_group[:, 1:])
    ends_group = np.ones(ordered.shape, bool)
    ends_group[:, :-1] = starts_group[:, 1:]
    first = np.maximum.accumulate(np.where(starts_group, steps, np.int32(0)), axis=-1)
    last = np.where(ends_group, steps, np.int32(count))[:, ::-1]
    last = np.minimum.accumulate(last, axis=-1)[:, ::-1]
    return (first + last) * 0.5 + 1.0, order


def roc_auc(values: np.ndarray, labels: np.ndarray, ranked=None) -> np.ndarray:
    """ROC AUC of every column of ``values`` (steps, units) against boolean ``labels`` (steps,).

    AUC = (R₊ - n₊(n₊ + 1)/2) / (n₊ n₋), with R₊ the sum of the positive steps' ranks.
    ``ranked``: :func:`average_ranks` of ``values.T`` when already computed (the one sort is
    most of the cost, and it serves every concept).
    """
    labels = np.asarray(labels, dtype=bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"Received labels with {positives} positive and {negatives} negative steps: the ROC "
            "AUC needs both. Label a batch where the concept is present and absent."
        )
    if ranked is None:
        ranked = average_ranks(np.ascontiguousarray(np.asarray(values).T))
    ranks, order = ranked
    positive_rank_sum = (ranks * labels[order]).sum(axis=-1)
    return (positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def pearson(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pearson r of every column of ``values`` (steps, units) with ``targets`` (steps,).

    r = Σ (x - x̄)(y - ȳ) / √(Σ (x - x̄)² Σ (y - ȳ)²); NaN for a unit that never changes.
    """
    x = np.asarray(values, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    y = y - y.mean()
    if not np.any(y):
        raise ValueError(
            "Received continuous labels that are the same at every counted step: Pearson r "
            "needs them to vary. Label a batch where the concept changes."
        )
    x = x - x.mean(axis=0)
    spread = np.sqrt((x * x).sum(axis=0) * (y * y).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y[:, None]).sum(axis=0) / spread


def strength(scores: np.ndarray, metric: str) -> np.ndarray:
    """How strongly each unit tells the concept: ``|AUC - 0.5|`` or ``|r|`` (NaN becomes -1,
    ranked last)."""
    scores = np.asarray(scores, dtype=np.float64)
    distance = np.abs(scores - 0.5) if metric == "auc" else np.abs(scores)
    return np.where(np.isnan(distance), -1.0, distance)
