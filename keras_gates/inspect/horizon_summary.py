"""The memory horizon in ``summary.json`` and in the ``keras-gates inspect`` table.

Schema: see :mod:`keras_gates.inspect.summary` (``"horizon"`` per layer, ``"gradient_flow"``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from keras_gates.inspect.horizon import median_lag
from keras_gates.inspect.stats import to_json_list


def gradient_note(x) -> str | None:
    """Why the input gradient cannot be taken for ``x`` (None when it can)."""
    if isinstance(x, (list, tuple, dict)):
        return "the model takes several inputs: ‖∂y/∂x_t‖ needs one sequence input"
    x = np.asarray(x)
    if x.ndim < 3:
        return f"input of shape {x.shape} has no feature axis (token ids have no gradient)"
    if not np.issubdtype(x.dtype, np.floating):
        return f"input of dtype {x.dtype} has no gradient"
    return None


def _int(value: float) -> int | None:
    return None if not np.isfinite(value) else int(value)


def lag_summary(values: np.ndarray, censored: np.ndarray) -> dict:
    """``{"per_unit", "censored", "median", "median_censored"}`` of per-unit lags."""
    median, median_censored = median_lag(values, censored)
    return {
        "per_unit": [_int(v) for v in np.asarray(values, dtype=np.float64)],
        "censored": [bool(c) for c in censored],
        "median": _int(median),
        "median_censored": median_censored,
    }


def profile_summary(profile: Mapping) -> dict:
    """The JSON part of a gradient profile (``lag_profile`` output)."""
    return {
        "reach": _int(profile["reach"]),
        "reach_censored": bool(profile["reach_censored"]),
        "mean": to_json_list(profile["mean"]),
        "relative": to_json_list(profile["relative"]),
    }


def layer_horizon(retention: Mapping | None, state_flow: Mapping | None) -> dict | None:
    """A gated layer's ``"horizon"`` entry, or None when the horizon was not measured."""
    if retention is None:
        return None
    return {
        "hold_gate": retention["gate"],
        "max_lag": int(retention["max_lag"]),
        "half_life": lag_summary(retention["half_life"], retention["half_life_censored"]),
        "e_lag": lag_summary(retention["e_lag"], retention["e_lag_censored"]),
        "gradient_reach": None if state_flow is None else _int(state_flow["reach"]),
        "gradient_reach_censored": bool(state_flow and state_flow["reach_censored"]),
    }


def flow_summary(
    flow: Mapping | None, state_flow: Mapping[str, Mapping], fraction: float, note: str | None
) -> dict:
    """The model's ``"gradient_flow"`` entry."""
    profiles = list(state_flow.values()) + ([flow] if flow is not None else [])
    return {
        "fraction": float(fraction),
        "samples": int(profiles[0]["per_sample"].shape[0]) if profiles else 0,
        "input": None if flow is None else {**profile_summary(flow), "outputs": flow["outputs"]},
        "note": note,
        "layers": {
            key: {**profile_summary(profile), "state_size": profile["state_size"]}
            for key, profile in state_flow.items()
        },
    }


def lag_text(value: int | None, censored: bool) -> str:
    """``"12"``, ``"≥100"`` (censored) or ``"n/a"``."""
    if value is None:
        return "n/a"
    return f"≥{value}" if censored else str(value)


def format_horizon_table(summary: Mapping) -> str:
    """Per gated layer: hold gate, median half-life and 1/e lag, gradient reach, and the
    half-life of every unit; then the reach of ‖∂y/∂x_t‖ and of each other recurrent layer."""
    flow = summary.get("gradient_flow")
    layers = {k: v["horizon"] for k, v in summary["layers"].items() if v.get("horizon")}
    if flow is None and not layers:
        return ""
    width = max([len("layer"), *(len(k) for k in (flow or {}).get("layers", layers))])
    lines = [
        f"{'layer':<{width}}  {'hold gate':<9}  {'half-life':>9}  {'1/e lag':>7}  "
        f"{'grad reach':>10}",
    ]
    for key, entry in layers.items():
        half, e_lag = entry["half_life"], entry["e_lag"]
        lines.append(
            f"{key:<{width}}  {entry['hold_gate']:<9}  "
            f"{lag_text(half['median'], half['median_censored']):>9}  "
            f"{lag_text(e_lag['median'], e_lag['median_censored']):>7}  "
            f"{lag_text(entry['gradient_reach'], entry['gradient_reach_censored']):>10}"
        )
    for key, profile in (flow or {}).get("layers", {}).items():
        if key not in layers:
            reach = lag_text(profile["reach"], profile["reach_censored"])
            lines.append(f"{key:<{width}}  {'-':<9}  {'-':>9}  {'-':>7}  {reach:>10}")
    for key, entry in layers.items():
        units = entry["half_life"]
        values = " ".join(
            lag_text(v, c) for v, c in zip(units["per_unit"], units["censored"], strict=True)
        )
        lines.append(f"half-life per unit, {key}: {values}")
    if flow is not None:
        fraction = flow["fraction"]
        if flow["input"] is not None:
            reach = lag_text(flow["input"]["reach"], flow["input"]["reach_censored"])
            lines.append(
                f"model output: ‖∂y/∂x_t‖ falls below {fraction:g} of lag 0 at lag {reach}"
            )
        else:
            lines.append(f"model output: no input gradient ({flow['note']})")
        lines.append(
            "half-life / 1/e lag: median over units of the lag (valid steps) where the mean "
            "product of the hold gate falls below 0.5 / 1/e (≥T: never within the batch); "
            f"grad reach: lag where ‖∂h_T/∂s_t‖ falls below {fraction:g} of lag 0"
        )
    return "\n".join(lines)


def horizon_scalars(summary: Mapping, prefix: str, names: tuple[str, ...]) -> dict[str, float]:
    """GateMonitor scalars: per gated layer ``median_half_life``/``median_e_lag`` and per recurrent
    layer ``gradient_reach``, plus the model's ``input_gradient_reach`` (a censored value is its
    lower bound, the number of valid steps)."""
    scalars = {}
    flow = summary.get("gradient_flow") or {}
    for key, layer in summary["layers"].items():
        entry = layer.get("horizon")
        if not entry:
            continue
        for name, lags in (("median_half_life", "half_life"), ("median_e_lag", "e_lag")):
            if name in names and entry[lags]["median"] is not None:
                scalars[f"{prefix}/{key}/{name}"] = float(entry[lags]["median"])
    if "gradient_reach" in names:
        for key, profile in flow.get("layers", {}).items():
            if profile["reach"] is not None:
                scalars[f"{prefix}/{key}/gradient_reach"] = float(profile["reach"])
        if flow.get("input") and flow["input"]["reach"] is not None:
            scalars[f"{prefix}/input_gradient_reach"] = float(flow["input"]["reach"])
    return scalars
