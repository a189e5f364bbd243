"""Prove an export right: onnxruntime against Keras on random (or given) inputs.

Runs the exported model and the Keras model at two batch sizes and two sequence lengths (full
``lengths``), then, for every sequence input with a lengths input, a *padded* batch: rows of
different lengths with garbage in the padding, each row compared with that row run alone through
Keras (:mod:`.padded`). An input whose padded rows differ is not an export failure but a property
of the model (a 'same' convolution or pooling, attention or global pooling over time reads the
padding): the result lists it in ``refusals`` and the exporter marks the input as refusing
padding. Streaming exports also run each sequence in two chunks carrying the state. Reports the
max abs error per output and case.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from keras_gates.signature import Signature

from .errors import ValidationError
from .padded import padded_rows
from .samples import keras_outputs, onnx_feeds
from .validation_result import Row, ValidationResult, max_error


def run(
    model: Any,
    onnx_bytes: bytes,
    signature: Signature,
    samples: list[list[np.ndarray]],
    atol: float,
    padded: bool = True,
    rtol: float | None = None,
    baseline: ValidationResult | None = None,
) -> ValidationResult:
    """Compare onnxruntime with Keras on every sample (a list of model inputs), then on padded
    batches against each row alone (``padded=False`` skips those).

    A quantized export passes ``rtol`` (its tolerance relative to each output's range in Keras)
    and ``baseline``, the float32 export's result on the same samples: its refusals stand (the
    padding of an input is a property of the model, not of the int8 weights)."""
    session = _session(onnx_bytes)
    names = [t.name for t in signature.outputs if t.role == "output"]
    rows, ranges = [], {}
    for inputs in samples:
        expected = keras_outputs(model, inputs)
        got = session.run(names, onnx_feeds(signature, inputs))
        batch, time = inputs[0].shape[0], (inputs[0].shape[1] if inputs[0].ndim > 1 else 0)
        for name, e, g in zip(names, expected, got):
            rows.append(Row(name, batch, time, max_error(e, g)))
            ranges[name] = max(ranges.get(name, 0.0), _range(e))
        if signature.streaming:
            rows.extend(_chunked_rows(session, signature, inputs, ranges))
    result = ValidationResult(atol, rows, rtol=rtol, ranges=ranges, baseline=baseline)
    if padded and samples:
        padded_rows(model, session, signature, samples[-1], result)
    if baseline is not None:
        result.refusals = dict(baseline.refusals)
    return result


def _range(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.max() - finite.min()) if finite.size else 0.0


def report(result: ValidationResult, path: Path, print_fn: Callable[[str], Any] | None) -> None:
    """Print the table; raise :class:`ValidationError` when ``result`` did not pass (nothing is
    written to ``path`` then)."""
    if print_fn is not None:
        print_fn(result.table())
    if not result.passed:
        tolerance = f"`atol={result.atol:g}`"
        fix = ""
        if result.rtol is not None:
            tolerance = (
                f"`int8_tolerance={result.rtol:g}` x each output's range (float32 `atol="
                f"{result.atol:g}`)"
            )
            fix = (
                " Where that int8 error is acceptable for your task, raise int8_tolerance "
                "(--int8-tolerance); else export in float32 (no quantize)."
            )
        raise ValidationError(
            f"The exported model differs from Keras by up to {result.max_error:.3g}, above the "
            f"tolerance {tolerance}; nothing was written to {str(path)!r}.{fix}\n"
            f"{result.table()}"
        )


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _chunked_rows(
    session: ort.InferenceSession,
    signature: Signature,
    inputs: list[np.ndarray],
    ranges: dict[str, float],
) -> list[Row]:
    """States after two chunks vs after the whole sequence (their ranges go to ``ranges``)."""
    pairs = signature.state_pairs
    outs = [o for _, o in pairs]
    data = [t for t in signature.inputs if t.role in ("sequence", "other")]
    sequences = [t.role == "sequence" for t in data]  # only these are cut; the others repeat
    time = next(x.shape[1] for x, cut in zip(inputs, sequences) if cut)
    split = max(1, time // 2)

    def chunk(part: slice) -> list[np.ndarray]:
        return [x[:, part] if cut else x for x, cut in zip(inputs, sequences)]

    whole = session.run(outs, onnx_feeds(signature, inputs))
    first = session.run(outs, onnx_feeds(signature, chunk(slice(None, split))))
    states = {i: v for (i, _), v in zip(pairs, first)}
    second = session.run(outs, onnx_feeds(signature, chunk(slice(split, None)), states))
    batch = inputs[0].shape[0]
    for name, w in zip(outs, whole):
        ranges[name] = max(ranges.get(name, 0.0), _range(w))
    return [
        Row(name, batch, time, max_error(w, s), case="2 chunks")
        for name, w, s in zip(outs, whole, second)
    ]
