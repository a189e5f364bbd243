"""How several requests share one model call: the batch layout both servers use.

``keras-gates serve`` (:class:`~keras_gates.serving.batcher.Batcher`) and the Triton
Python-backend ``model.py`` (which gets a copy of this file beside it, ``keras_gates_batching.py``)
batch requests the same way, with these functions as their two hooks (LitServe's ``batch`` and
``unbatch``):

* :func:`batch_key`: requests share a call only when their keys are equal: every non-batch dim
  matches, except the time axis (axis 1) of the inputs that may be right-padded.
* :func:`concat_feeds` (``batch``): the requests' feeds stacked along axis 0; a padded input is
  right-padded with zeros along axis 1 to the longest request first (:func:`pad_concat`).
* :func:`split_rows` (``unbatch``): the call's outputs cut back to each request's rows, and the
  per-step outputs to each request's time length.

Which inputs may be padded is the signature's decision
(:func:`keras_gates.signature.padded_inputs`): padding is exact only where each row's lengths
input keeps the padded steps out of the result. Only the standard library and numpy are imported.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

Feeds = Mapping[str, np.ndarray]


def batch_key(feeds: Feeds, padded: Collection[str] = ()) -> tuple:
    """What requests sharing a call must agree on: each input's name and dims past the batch axis,
    the time axis (axis 1) left out for the inputs in ``padded``."""
    return tuple(
        (name, feeds[name].shape[2:] if name in padded else feeds[name].shape[1:])
        for name in sorted(feeds)
    )


def group_by_key(parts: Sequence[Feeds], padded: Collection[str] = ()) -> list[list[int]]:
    """Indices of ``parts`` grouped by :func:`batch_key`, each group in arrival order, groups in
    the order of their first request."""
    groups: dict[tuple, list[int]] = {}
    for i, feeds in enumerate(parts):
        groups.setdefault(batch_key(feeds, padded), []).append(i)
    return list(groups.values())


def pad_concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Stack along axis 0, right-padding axis 1 with zeros to the longest part."""
    steps = max(p.shape[1] for p in parts)
    if all(p.shape[1] == steps for p in parts):
        return np.concatenate(parts)
    first = parts[0]
    out = np.zeros((sum(p.shape[0] for p in parts), steps, *first.shape[2:]), first.dtype)
    row = 0
    for p in parts:
        out[row : row + p.shape[0], : p.shape[1]] = p
        row += p.shape[0]
    return out


def concat_feeds(parts: Sequence[Feeds], padded: Collection[str] = ()) -> dict[str, np.ndarray]:
    """One call's feeds from requests with equal :func:`batch_key`: stacked along axis 0, the
    inputs in ``padded`` right-padded to the longest first."""
    if len(parts) == 1:
        return dict(parts[0])
    return {
        name: pad_concat([p[name] for p in parts])
        if name in padded
        else np.concatenate([p[name] for p in parts])
        for name in parts[0]
    }  # fmt: skip


def split_rows(
    outputs: Feeds,
    rows: Sequence[int],
    steps: Sequence[int | None],
    per_step: Collection[str] = (),
) -> list[dict[str, np.ndarray]]:
    """The outputs of one call cut back per request: request ``i`` gets the next ``rows[i]`` rows
    of every output, and of each output in ``per_step`` its first ``steps[i]`` steps (axis 1)."""
    if len(rows) == 1:
        return [dict(outputs)]
    results, offset = [], 0
    for count, length in zip(rows, steps, strict=True):
        part = {}
        for name, value in outputs.items():
            piece = value[offset : offset + count]
            if name in per_step and length is not None and piece.shape[1] != length:
                piece = piece[:, :length]
            part[name] = piece
        results.append(part)
        offset += count
    return results


def rows_of(feeds: Feeds) -> int:
    """The batch size (axis 0) of a request's feeds."""
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def steps_of(feeds: Feeds, sequence: str | None) -> int | None:
    """The time length (axis 1) of input ``sequence`` in a request (``None`` without one)."""
    if sequence is None or sequence not in feeds or feeds[sequence].ndim < 2:
        return None
    return int(feeds[sequence].shape[1])


__all__ = [
    "batch_key",
    "concat_feeds",
    "group_by_key",
    "pad_concat",
    "rows_of",
    "split_rows",
    "steps_of",
]
