"""Gate statistics computed on plain numpy arrays (no Keras, no plotting).

Saturation follows Karpathy, Johnson & Fei-Fei, "Visualizing and Understanding Recurrent
Networks" (2015): for every unit, the fraction of (valid) time steps whose activation is below
``low`` (left-saturated) or above ``high`` (right-saturated). Thresholds are fractions of the
activation's value range, so they read the same for a sigmoid gate in (0, 1), where they are the
values themselves, and for a tanh candidate in (-1, 1), where 0.1 / 0.9 mean -0.8 / 0.8.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

DEFAULT_LOW = 0.1
DEFAULT_HIGH = 0.9

#: Keys of the per-unit statistics returned by :func:`saturation_stats`.
STAT_KEYS = ("left_saturated", "right_saturated", "mean", "std")

#: Keys of the per-gate weight summary returned by :func:`weight_summary`.
WEIGHT_KEYS = ("kernel_norm", "recurrent_kernel_norm", "bias_norm", "spectral_radius")

#: Value range of bounded activations; any other activation is read as (0, 1).
ACTIVATION_RANGES = {
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "hard_tanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
}
UNIT_RANGE = (0.0, 1.0)

#: Entries of a layer trace that are not gates.
NON_GATE_KEYS = ("cell", "hidden", "mask")


def check_thresholds(low: float, high: float) -> tuple[float, float]:
    """Validate saturation thresholds and return them as floats."""
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(
            "Received invalid saturation thresholds `low`/`high`: expected finite numbers with "
            f"low < high, got low={low}, high={high}. Use e.g. low=0.1, high=0.9."
        )
    return low, high


def activation_range(activation) -> tuple[float, float]:
    """Value range of an activation (callable or name); (0, 1) when it is not a known bound one."""
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", "")
    return ACTIVATION_RANGES.get(name, UNIT_RANGE)


def _valid_mask(activations: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Return a boolean (B, T) array of the steps that count."""
    if activations.ndim != 3:
        raise ValueError(
            f"Received `activations` with shape {activations.shape}: expected (batch, time, units)."
        )
    if mask is None:
        return np.ones(activations.shape[:2], dtype=bool)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != activations.shape[:2]:
        raise ValueError(
            f"Received `mask` with shape {mask.shape}: expected (batch, time) = "
            f"{activations.shape[:2]} to match `activations` of shape {activations.shape}."
        )
    return mask


def saturation_stats(
    activations: np.ndarray,
    mask: np.ndarray | None = None,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    value_range: tuple[float, float] = UNIT_RANGE,
) -> dict[str, np.ndarray | int]:
    """Per-unit saturation fractions, mean and std of one gate's activations.

    Args:
        activations: (batch, time, units) gate activations.
        mask: optional (batch, time) booleans; False steps (padding) are ignored.
        low: a value below ``lo + low * (hi - lo)`` is left-saturated. Default 0.1.
        high: a value above ``lo + high * (hi - lo)`` is right-saturated. Default 0.9.
        value_range: ``(lo, hi)``, the activation's range: (0, 1) for sigmoid (default),
            (-1, 1) for tanh (see :func:`activation_range`).

    Returns:
        ``{"left_saturated", "right_saturated", "mean", "std"}``: float64 arrays of shape
        (units,), NaN when no step is valid; and ``"steps"``: the number of valid steps.
    """
    low, high = check_thresholds(low, high)
    values = np.asarray(activations, dtype=np.float64)
    valid = _valid_mask(values, mask)
    steps = int(valid.sum())
    picked = values[valid]  # (steps, units)
    if steps == 0:
        nan = np.full(values.shape[-1], np.nan)
        return {**{key: nan.copy() for key in STAT_KEYS}, "steps": 0}
    lo, hi = (float(v) for v in value_range)
    return {
        "left_saturated": (picked < lo + low * (hi - lo)).mean(axis=0),
        "right_saturated": (picked > lo + high * (hi - lo)).mean(axis=0),
        "mean": picked.mean(axis=0),
        "std": picked.std(axis=0),
        "steps": steps,
    }


def gate_names_of(trace: Mapping[str, np.ndarray]) -> list[str]:
    """The gate entries of a layer trace, in their order."""
    return [key for key in trace if key not in NON_GATE_KEYS]


def layer_stats(
    trace: Mapping[str, np.ndarray],
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    value_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, dict[str, np.ndarray | int]]:
    """:func:`saturation_stats` for every gate of one layer trace (``layer.trace`` output).

    ``value_ranges`` maps a gate to its activation's range (default (0, 1) for every gate).
    """
    mask = trace.get("mask")
    ranges = value_ranges or {}
    return {
        gate: saturation_stats(trace[gate], mask, low, high, ranges.get(gate, UNIT_RANGE))
        for gate in gate_names_of(trace)
    }


def aggregate_stats(stats: dict[str, np.ndarray | int]) -> dict[str, float]:
    """Gate-level numbers from the per-unit output of :func:`saturation_stats`.

    The fractions are averaged over units (every unit sees the same steps, so this is the fraction
    of all valid (step, unit) values); ``mean``/``std`` are those of all valid values pooled.
    Every value is NaN when no step is valid.
    """
    if stats["steps"] == 0:
        return {key: float("nan") for key in STAT_KEYS}
    mean_u, std_u = np.asarray(stats["mean"]), np.asarray(stats["std"])
    mean = float(mean_u.mean())
    pooled_var = float(np.mean(std_u**2 + mean_u**2) - mean**2)
    return {
        "left_saturated": float(np.mean(stats["left_saturated"])),
        "right_saturated": float(np.mean(stats["right_saturated"])),
        "mean": mean,
        "std": float(np.sqrt(max(pooled_var, 0.0))),
    }


def spectral_radius(matrix: np.ndarray) -> float:
    """Largest absolute eigenvalue of a square matrix (e.g. a recurrent kernel)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"Received a matrix of shape {matrix.shape}: the spectral radius needs a square "
            "matrix such as a recurrent kernel of shape (units, units)."
        )
    if matrix.size == 0:
        return 0.0
    return float(np.abs(np.linalg.eigvals(matrix)).max())


def _norm(weights: Mapping[str, np.ndarray], key: str) -> float | None:
    value = weights.get(key)
    return None if value is None else float(np.linalg.norm(np.asarray(value, dtype=np.float64)))


def weight_summary(
    gate_weights: Mapping[str, Mapping[str, np.ndarray]],
) -> dict[str, dict[str, float | None]]:
    """Frobenius norms and recurrent spectral radius per gate.

    Args:
        gate_weights: ``layer.get_gate_weights()`` output, ``{gate: {"kernel", "recurrent_kernel",
            "bias"?, ...}}``.

    Returns:
        ``{gate: {"kernel_norm", "recurrent_kernel_norm", "bias_norm", "spectral_radius"}}``;
        ``bias_norm`` is None for a gate without bias. A GRU ``recurrent_bias`` (reset_after=True)
        is added to ``"recurrent_bias_norm"`` and an LSTM peephole to ``"peephole_norm"``.
    """
    summary = {}
    for gate, weights in gate_weights.items():
        entry = {
            "kernel_norm": _norm(weights, "kernel"),
            "recurrent_kernel_norm": _norm(weights, "recurrent_kernel"),
            "bias_norm": _norm(weights, "bias"),
            "spectral_radius": spectral_radius(weights["recurrent_kernel"]),
        }
        for extra in ("recurrent_bias", "peephole"):
            if extra in weights:
                entry[f"{extra}_norm"] = _norm(weights, extra)
        summary[gate] = entry
    return summary


def to_json_number(value: float | int | np.generic | None) -> float | int | None:
    """A JSON-safe scalar: numpy scalars become Python numbers, NaN/inf become None."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if np.isfinite(value) else None


def to_json_list(values: np.ndarray) -> list[float | None]:
    """A JSON-safe list of numbers (NaN becomes None)."""
    return [to_json_number(v) for v in np.asarray(values).ravel().tolist()]
