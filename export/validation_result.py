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
