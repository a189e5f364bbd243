"""Class labels of a model's outputs, for the classification extension of both servers.

An export records them in the ONNX metadata (``keras_gates.labels``: ``{output: [label, ...]}``,
from ``to_onnx(..., labels=...)`` or ``keras-gates export --labels FILE``); the Triton repository
writes each labelled output's list as a label file (Triton's format: one label per line, line
``i`` naming class ``i``) named by ``label_filename`` in ``config.pbtxt``. Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

LABELS_KEY = "keras_gates.labels"

Labels = dict[str, tuple[str, ...]]


def resolve_labels(labels: Sequence[str] | Mapping[str, Sequence[str]] | None, outputs) -> Labels:
    """``labels`` checked against the model's ``outputs`` (``(name, classes or None)`` pairs,
    ``classes`` the size of the last axis): a list names the classes of the one output, a
    mapping those of the outputs it names."""
    if labels is None:
        return {}
    widths = dict(outputs)
    if isinstance(labels, Mapping):
        chosen = dict(labels)
    elif isinstance(labels, Sequence) and not isinstance(labels, str | bytes):
        if len(widths) != 1:
            raise ValueError(
                f"Received `labels` as a list, but the model has {len(widths)} outputs "
                f"({', '.join(widths)}); pass a dict {{output name: [label, ...]}} instead."
            )
        chosen = {next(iter(widths)): labels}
    else:
        raise ValueError(
            "Received an invalid value for argument `labels`, expected a list of strings or a "
            f"dict {{output name: [label, ...]}}, got {type(labels).__name__}."
        )
    found: Labels = {}
    for name, values in chosen.items():
        if name not in widths:
            raise ValueError(
                f"Received labels for {name!r}, which is not an output of the model; expected "
                f"one of {', '.join(widths)}."
            )
        values = _checked(name, values)
        classes = widths[name]
        if classes is not None and len(values) != classes:
            raise ValueError(
                f"Received {len(values)} labels for output {name!r}, expected {classes} (its "
                "last axis: label i names class i)."
            )
        found[name] = values
    return found


def _checked(name: str, values) -> tuple[str, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValueError(f"Received labels for output {name!r} that are not a list of strings.")
    bad = [v for v in values if not isinstance(v, str) or "\n" in v or "\r" in v]
    if bad or not values:
        example = f" (e.g. {bad[0]!r:.40})" if bad else ""
        raise ValueError(
            f"Received labels for output {name!r} that are not a non-empty list of one-line "
            f"strings{example}."
        )
    return tuple(values)


def labels_to_json(labels: Labels) -> str:
    return json.dumps({name: list(values) for name, values in labels.items()}, sort_keys=True)


def labels_from_json(text: str) -> Labels:
    """The labels a model's metadata records (``{}`` when the entry is not a mapping of lists)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    return {
        name: tuple(values)
        for name, values in doc.items()
        if isinstance(values, list) and all(isinstance(v, str) for v in values)
    }


def read_label_file(path: str | Path) -> tuple[str, ...]:
    """A label file as Triton reads it: one label per line (the last line's newline optional)."""
    return tuple(Path(path).read_text(encoding="utf-8").splitlines())


def label_file_text(values: Sequence[str]) -> str:
    return "".join(f"{v}\n" for v in values)
