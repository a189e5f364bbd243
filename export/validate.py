"""Prove an export right: onnxruntime against Keras on random (or given) inputs.

Runs the exported model and the Keras model at two batch sizes and two sequence lengths (full
``lengths``), then, for every sequence input with a lengths input, a *padded* batch: rows of
different lengths with garbage in the padding, each row compared with that row run alone through
Keras. An input whose padded rows differ is not an export failure but a property of the model (a
'same' convolution or pooling, attention or global pooling over time reads the padding): the
result lists it in ``refusals`` and the exporter marks the input as refusing padding. Streaming
exports also run each sequence in two chunks carrying the state. Reports the max abs error per
output and case.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ExportError
from keras_gates.signature import Signature

if TYPE_CHECKING:
    import tensorflow as tf

PADDED_LENGTHS = (13, 12, 9, 8)  # odd and even, every remainder mod 3, never the whole row
VALIDATION_BATCHES = (1, 3)
VALIDATION_TIMES = (5, 9)


class ValidationError(ExportError):
    """The exported model disagrees with Keras beyond the tolerance."""


@dataclasses.dataclass(frozen=True)
class Row:
    """Max abs error of one output in one case (``full``, ``padded <input> [...]``, chunks)."""

    output: str
    batch: int
    time: int
    error: float
    case: str = "full"
    padded: tuple[str, ...] = ()  # the inputs padded in this case

    def ok(self, atol: float) -> bool:
        return bool(np.isfinite(self.error) and self.error <= atol)


@dataclasses.dataclass
class ValidationResult:
    """Max abs error per (output, case); ``passed`` when every unpadded case is within ``atol``.

    ``refusals`` maps a sequence input to why its padded rows differ from the rows alone.
    """

    atol: float
    rows: list[Row]
    refusals: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max((r.error for r in self.rows if not r.padded), default=0.0)

    @property
    def passed(self) -> bool:
        checked = [r for r in self.rows if not r.padded]
        return bool(checked) and all(r.ok(self.atol) for r in checked)

    def table(self) -> str:
        width = max([len("output"), *(len(r.output) for r in self.rows)])
        case_width = max([len("case"), *(len(r.case) for r in self.rows)])
        lines = [f"{'output':<{width}}  {'case':<{case_width}}  batch  time  max_abs_error  ok"]
        for r in self.rows:
            refused = any(n in self.refusals for n in r.padded)
            ok = "refused" if refused else ("yes" if r.ok(self.atol) else "NO")
            lines.append(
                f"{r.output:<{width}}  {r.case:<{case_width}}  {r.batch:>5}  {r.time:>4}  "
                f"{r.error:>13.3e}  {ok}"
            )
        lines.append(f"tolerance {self.atol:g}: {'passed' if self.passed else 'FAILED'}")
        return "\n".join(lines)

    def to_json(self) -> str:
        worst: dict[str, float] = {}
        padded: dict[str, float] = {}
        for r in self.rows:
            target = padded if r.padded else worst
            target[r.output] = max(target.get(r.output, 0.0), float(r.error))
        return json.dumps(
            {
                "atol": self.atol,
                "passed": self.passed,
                "max_abs_error": worst,
                "padded_max_abs_error": padded,
                "padding_refused": self.refusals,
            }
        )


def refusal_lines(refusals: dict[str, str]) -> list[str]:
    """What ``keras-gates export`` prints about inputs that cannot be padded."""
    return [
        f"input {name!r} cannot be padded: {reason}. Predictor and the server refuse lengths "
        "shorter than its time axis."
        for name, reason in refusals.items()
    ]


def validation_samples(
    model: Any, converted: Any, samples: Sequence[Any] | None
) -> list[list[np.ndarray]]:
    """User samples as lists of arrays, or random inputs at two batch sizes and two lengths.

    Each sequence input gets its own length (they differ, so that a lengths input routed to the
    wrong node shows); a fixed time axis (``keras.Input((20, 4))``) keeps its own length, and a
    stateful model its fixed batch size.
    """
    if samples is not None:
        as_lists = [s if isinstance(s, (list, tuple)) else [s] for s in samples]
        return [[np.asarray(a) for a in sample] for sample in as_lists]
    io = converted.io
    batch = next((int(t.shape[0]) for t in model.inputs if t.shape[0] is not None), None)
    batches = (batch,) if batch else VALIDATION_BATCHES
    dynamic = any(r == "sequence" and n not in io.fixed_time for n, _, r in io.data_inputs)
    times = VALIDATION_TIMES if dynamic else VALIDATION_TIMES[:1]
    rng = np.random.default_rng(0)
    result = []
    for b in batches:
        for t in times:
            arrays = [
                sample_value(spec, b, _steps(converted, name, t), rng)
                for name, spec, _ in io.data_inputs
            ]
            result.append(arrays)
    return result


def _steps(converted: Any, name: str, time: int) -> int:
    """Steps of one input: its fixed time, else ``time + 2k`` for the ``k``-th input (inputs
    merged step by step share one), more when its rows need more."""
    io = converted.io
    root = converted.ties.get(name, name)
    if root in io.fixed_time or name in io.fixed_time:
        return io.fixed_time.get(root, io.fixed_time.get(name))
    k = [n for n, _, _ in io.data_inputs].index(root)
    shortest = max(converted.min_lengths.get(n, 1) for n in (name, root))
    return time + 2 * k + max(0, shortest - min(VALIDATION_TIMES))


def sample_value(
    spec: tf.TensorSpec, batch: int, time: int, rng: np.random.Generator
) -> np.ndarray:
    """A random input for ``spec`` (token ids from 1 so that ``mask_zero`` masks nothing)."""
    shape = [batch, *(time if d is None else d for d in spec.shape[1:])]
    if spec.dtype.is_integer:
        return rng.integers(1, 5, size=shape).astype(spec.dtype.as_numpy_dtype)
    return rng.normal(size=shape).astype(spec.dtype.as_numpy_dtype)


def _session(onnx_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _feeds(
    signature: Signature,
    inputs: list[np.ndarray],
    states: dict | None = None,
    lengths: dict[str, np.ndarray] | None = None,
) -> dict:
    """ONNX feeds for the model inputs (in order): each lengths input its sequence's own time
    unless ``lengths`` (by sequence input) says otherwise, zero (or given) states."""
    data = [t.name for t in signature.inputs if t.role in ("sequence", "other")]
    given = {**dict(zip(data, inputs)), **(states or {})}
    for sequence, value in (lengths or {}).items():
        name = signature.lengths_for(sequence)  # None: merged with another input step by step
        if name is not None:
            given[name] = value
    return signature.complete_feeds(given)


def keras_outputs(model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Keras outputs (flat), stateful layers starting from zeros and left as they were."""
    from keras_gates.stateful import states_preserved

    with states_preserved(model, reset=True):
        outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [np.asarray(o) for o in outputs]


def validate(
    model: Any,
    onnx_bytes: bytes,
    signature: Signature,
    samples: list[list[np.ndarray]],
    atol: float,
    padded: bool = True,
) -> ValidationResult:
    """Compare onnxruntime with Keras on every sample (a list of model inputs), then on padded
    batches against each row alone (``padded=False`` skips those)."""
    session = _session(onnx_bytes)
    names = [t.name for t in signature.outputs if t.role == "output"]
    rows = []
    for inputs in samples:
        expected = keras_outputs(model, inputs)
        got = session.run(names, _feeds(signature, inputs))
        batch, time = inputs[0].shape[0], (inputs[0].shape[1] if inputs[0].ndim > 1 else 0)
        for name, e, g in zip(names, expected, got):
            rows.append(Row(name, batch, time, _max_error(e, g)))
        if signature.streaming:
            rows.extend(_chunked_rows(session, signature, inputs))
    result = ValidationResult(atol=atol, rows=rows)
    if padded and samples:
        from .padded import padded_rows

        padded_rows(model, session, signature, samples[-1], result)
    return result


def _chunked_rows(session: Any, signature: Signature, inputs: list[np.ndarray]) -> list:
    """States after two chunks vs after the whole sequence."""
    pairs = signature.state_pairs
    outs = [o for _, o in pairs]
    data = [t for t in signature.inputs if t.role in ("sequence", "other")]
    sequences = [t.role == "sequence" for t in data]  # only these are cut; the others repeat
    time = next(x.shape[1] for x, cut in zip(inputs, sequences) if cut)
    split = max(1, time // 2)

    def chunk(part: slice) -> list[np.ndarray]:
        return [x[:, part] if cut else x for x, cut in zip(inputs, sequences)]

    whole = session.run(outs, _feeds(signature, inputs))
    first = session.run(outs, _feeds(signature, chunk(slice(None, split))))
    states = {i: v for (i, _), v in zip(pairs, first)}
    second = session.run(outs, _feeds(signature, chunk(slice(split, None)), states))
    batch = inputs[0].shape[0]
    return [
        Row(name, batch, time, _max_error(w, s), case="2 chunks")
        for name, w, s in zip(outs, whole, second)
    ]


def _max_error(expected: np.ndarray, got: np.ndarray) -> float:
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    if expected.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(expected - got))) if expected.size else 0.0
