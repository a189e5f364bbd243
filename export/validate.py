"""Prove an export right: onnxruntime against Keras on random (or given) inputs.

Runs the exported model and the Keras model at two batch sizes and two sequence lengths (full
``lengths``, no padding), and for streaming exports also runs each sequence in two chunks carrying
the state and compares the final states with the whole run. Reports the max abs error per output.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from .errors import ExportError
from .signature import Signature


class ValidationError(ExportError):
    """The exported model disagrees with Keras beyond the tolerance."""


@dataclasses.dataclass
class ValidationResult:
    """Max abs error per (output, batch, time); ``passed`` when all are within ``atol``."""

    atol: float
    rows: list[tuple[str, int, int, float]]

    @property
    def max_error(self) -> float:
        return max((r[3] for r in self.rows), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(np.isfinite(r[3]) and r[3] <= self.atol for r in self.rows)

    def table(self) -> str:
        width = max([len("output"), *(len(r[0]) for r in self.rows)])
        lines = [f"{'output':<{width}}  batch  time  max_abs_error  ok"]
        for name, batch, time, err in self.rows:
            ok = "yes" if err <= self.atol else "NO"
            lines.append(f"{name:<{width}}  {batch:>5}  {time:>4}  {err:>13.3e}  {ok}")
        lines.append(f"tolerance {self.atol:g}: {'passed' if self.passed else 'FAILED'}")
        return "\n".join(lines)

    def to_json(self) -> str:
        worst: dict[str, float] = {}
        for name, _, _, err in self.rows:
            worst[name] = max(worst.get(name, 0.0), float(err))
        return json.dumps({"atol": self.atol, "passed": self.passed, "max_abs_error": worst})


def _session(onnx_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _feeds(signature: Signature, inputs: list[np.ndarray], states: dict | None = None) -> dict:
    """ONNX feeds for the model inputs (in order): full lengths, zero (or given) states."""
    data = [t for t in signature.inputs if t.role in ("sequence", "other")]
    feeds = {t.name: x for t, x in zip(data, inputs)}
    batch = inputs[0].shape[0]
    sequences = [x for t, x in zip(data, inputs) if t.role == "sequence"] or inputs
    if signature.lengths_input:
        time = sequences[0].shape[1] if sequences[0].ndim > 1 else 1
        feeds[signature.lengths_input] = np.full(batch, time, np.int32)
    for spec in signature.inputs_with("state"):
        zeros = np.zeros((batch, spec.shape[1]), np.float32)
        feeds[spec.name] = (states or {}).get(spec.name, zeros)
    return feeds


def keras_outputs(model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Keras outputs (flat), leaving the states of stateful layers as they were."""
    stateful = [layer for layer in _all_layers(model) if getattr(layer, "stateful", False)]
    saved = [[v.numpy() for v in layer.states] for layer in stateful if layer.states]
    for layer in stateful:
        layer.reset_states()
    try:
        outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    finally:
        for layer, values in zip(stateful, saved):
            for variable, value in zip(layer.states, values):
                variable.assign(value)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [np.asarray(o) for o in outputs]


def _all_layers(model: Any) -> list[Any]:
    return list(model._flatten_layers(include_self=False))


def validate(
    model: Any,
    onnx_bytes: bytes,
    signature: Signature,
    samples: list[list[np.ndarray]],
    atol: float,
) -> ValidationResult:
    """Compare onnxruntime with Keras on every sample (a list of model inputs)."""
    session = _session(onnx_bytes)
    names = [t.name for t in signature.outputs if t.role == "output"]
    rows = []
    for inputs in samples:
        expected = keras_outputs(model, inputs)
        got = session.run(names, _feeds(signature, inputs))
        batch, time = inputs[0].shape[0], (inputs[0].shape[1] if inputs[0].ndim > 1 else 0)
        for name, e, g in zip(names, expected, got):
            rows.append((name, batch, time, _max_error(e, g)))
        if signature.streaming:
            rows.extend(_chunked_rows(session, signature, inputs))
    return ValidationResult(atol=atol, rows=rows)


def _chunked_rows(session: Any, signature: Signature, inputs: list[np.ndarray]) -> list:
    """States after two chunks vs after the whole sequence."""
    pairs = signature.state_pairs
    outs = [o for _, o in pairs]
    whole = session.run(outs, _feeds(signature, inputs))
    split = max(1, inputs[0].shape[1] // 2)
    first = session.run(outs, _feeds(signature, [x[:, :split] for x in inputs]))
    states = {i: v for (i, _), v in zip(pairs, first)}
    second = session.run(outs, _feeds(signature, [x[:, split:] for x in inputs], states))
    batch, time = inputs[0].shape[:2]
    return [
        (f"{name} (2 chunks)", batch, time, _max_error(w, s))
        for name, w, s in zip(outs, whole, second)
    ]


def _max_error(expected: np.ndarray, got: np.ndarray) -> float:
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    if expected.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(expected - got))) if expected.size else 0.0
