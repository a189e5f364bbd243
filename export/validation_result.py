"""What validation found: the max abs error per output and case, and the inputs refusing padding.

numpy and the standard library only: ``keras_gates.export`` re-exports :class:`ValidationResult`
without loading the exporter.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np


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
    """Max abs error per (output, case); ``passed`` when every unpadded case is within the
    tolerance (:meth:`limit`).

    ``refusals`` maps a sequence input to why its padded rows differ from the rows alone.
    A quantized export's result has ``rtol`` (its tolerance as a fraction of each output's
    range in Keras, ``ranges``), also counts the padded cases of inputs that pad exactly, and
    carries the float32 export's result on the same inputs as ``baseline``.
    """

    atol: float
    rows: list[Row]
    refusals: dict[str, str] = dataclasses.field(default_factory=dict)
    rtol: float | None = None
    ranges: dict[str, float] = dataclasses.field(default_factory=dict)
    baseline: ValidationResult | None = None

    def limit(self, output: str) -> float:
        """The max abs error allowed on ``output``: ``atol``, or ``rtol`` x its range."""
        if self.rtol is None:
            return self.atol
        return max(self.rtol * self.ranges.get(output, 0.0), self.atol)

    @property
    def max_error(self) -> float:
        """The largest error of the cases that count (unpadded; quantized: also padded)."""
        counted = [r for r in self.rows if not r.padded]
        if self.rtol is not None:
            counted += [r for r in self.rows if r.padded and self._exact(r)]
        return max((r.error for r in counted), default=0.0)

    @property
    def passed(self) -> bool:
        checked = [r for r in self.rows if not r.padded]
        if self.rtol is not None:  # quantized: padded rows of inputs that pad exactly count
            checked += [r for r in self.rows if r.padded and self._exact(r)]
        baseline = self.baseline is None or self.baseline.passed
        return bool(checked) and baseline and all(r.ok(self.limit(r.output)) for r in checked)

    def _exact(self, row: Row) -> bool:
        return not any(n in self.refusals for n in row.padded)

    def table(self) -> str:
        width = max([len("output"), *(len(r.output) for r in self.rows)])
        case_width = max([len("case"), *(len(r.case) for r in self.rows)])
        floats = self._baseline_errors()
        head = f"{'output':<{width}}  {'case':<{case_width}}  batch  time"
        head += "  float32_error     int8_error      limit  ok" if floats else "  max_abs_error  ok"
        lines = [head]
        for i, r in enumerate(self.rows):
            ok = "yes" if r.ok(self.limit(r.output)) else "NO"
            ok = ok if self._exact(r) else "refused"
            errors = f"{r.error:>13.3e}"
            if floats:
                errors = f"{floats[i]:>13.3e}  {r.error:>13.3e}  {self.limit(r.output):>9.2e}"
            lines.append(
                f"{r.output:<{width}}  {r.case:<{case_width}}  {r.batch:>5}  {r.time:>4}  "
                f"{errors}  {ok}"
            )
        verdict = "passed" if self.passed else "FAILED"
        if floats:
            assert self.baseline is not None
            lines.append(
                f"tolerance: float32 {self.baseline.atol:g}, int8 {self.rtol:g} x each output's "
                f"range in Keras ({_ranges(self.ranges)}): {verdict}"
            )
        else:
            lines.append(f"tolerance {self.atol:g}: {verdict}")
        return "\n".join(lines)

    def _baseline_errors(self) -> list[float] | None:
        """The float32 error of each row (same inputs), when this result has a baseline."""
        if self.baseline is None:
            return None
        by_case = {(r.output, r.case, r.batch, r.time): r.error for r in self.baseline.rows}
        return [by_case.get((r.output, r.case, r.batch, r.time), float("nan")) for r in self.rows]

    def to_json(self) -> str:
        worst: dict[str, float] = {}
        padded: dict[str, float] = {}
        for r in self.rows:
            target = padded if r.padded else worst
            target[r.output] = max(target.get(r.output, 0.0), float(r.error))
        fields = {
            "atol": self.atol,
            "passed": self.passed,
            "max_abs_error": worst,
            "padded_max_abs_error": padded,
            "padding_refused": self.refusals,
        }
        if self.rtol is not None:
            fields.update(rtol=self.rtol, output_range=self.ranges)
        if self.baseline is not None:
            fields["float32"] = json.loads(self.baseline.to_json())
        return json.dumps(fields)


def _ranges(ranges: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3g}" for name, value in ranges.items())


def refusal_lines(refusals: dict[str, str]) -> list[str]:
    """What ``keras-gates export`` prints about inputs that cannot be padded."""
    return [
        f"input {name!r} cannot be padded: {reason}. Predictor and the server refuse lengths "
        "shorter than its time axis."
        for name, reason in refusals.items()
    ]


def max_error(expected: np.ndarray, got: np.ndarray) -> float:
    """Max abs difference (``inf`` when the shapes differ)."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    if expected.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(expected - got))) if expected.size else 0.0


def row_error(expected: np.ndarray, got: np.ndarray) -> float:
    """Error on what the row alone returns: its own steps of a longer per-step output."""
    same_tail = expected.ndim == got.ndim >= 3 and expected.shape[2:] == got.shape[2:]
    if same_tail and expected.shape[1] <= got.shape[1]:
        got = got[:, : expected.shape[1]]
    return max_error(expected, got)
