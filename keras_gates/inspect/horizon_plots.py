"""Figures of the memory horizon: retention curves, half-life bars, gradient norm against lag.

Each takes the plain results of :mod:`keras_gates.inspect.horizon` /
:mod:`keras_gates.inspect.gradients` and returns a ``matplotlib.figure.Figure`` (headless).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from keras_gates.inspect.horizon import HALF, INV_E
from keras_gates.inspect.plots import new_figure

FLOOR = 1e-12  # log axes: values at or below this are drawn at it


def _positive(values: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(values, dtype=np.float64), FLOOR, None)


def plot_retention(retention: Mapping, title: str = ""):
    """Mean retention against lag, one line per unit (log y), with the 0.5 and 1/e levels."""
    fig = new_figure(8.0, 4.5)
    ax = fig.subplots()
    lags, mean = retention["lags"], retention["mean"]
    colors = _unit_colors(mean.shape[1])
    for unit in range(mean.shape[1]):
        ax.plot(lags, _positive(mean[:, unit]), color=colors[unit], linewidth=1.0, alpha=0.8)
    ax.axhline(HALF, color="black", linestyle="--", linewidth=0.8, label="0.5 (half-life)")
    ax.axhline(INV_E, color="grey", linestyle=":", linewidth=0.8, label="1/e")
    ax.set_yscale("log")
    low = max(FLOOR, float(np.nanmin(_positive(mean)))) if np.isfinite(mean).any() else FLOOR
    ax.set_ylim(max(low, 1e-8) / 2, 1.5)
    ax.set_xlabel("lag (valid steps)")
    ax.set_ylabel(f"mean product of the {retention['gate']} gate")
    ax.legend(fontsize="small", loc="lower left")
    ax.set_title(title or f"retention per unit ({mean.shape[1]} units)")
    return fig


def _unit_colors(units: int):
    from matplotlib import colormaps

    return colormaps["viridis"](np.linspace(0.0, 0.9, max(units, 1)))


def plot_half_lives(retention: Mapping, title: str = ""):
    """Half-life per unit as bars (hatched: never fell below 0.5, "≥ T"), 1/e lag as dots."""
    fig = new_figure(8.0, 3.8)
    ax = fig.subplots()
    half, censored = retention["half_life"], retention["half_life_censored"]
    units = np.arange(len(half))
    heights = np.nan_to_num(half)
    ax.bar(units[~censored], heights[~censored], color="tab:blue", label="half-life")
    if censored.any():
        ax.bar(
            units[censored],
            heights[censored],
            color="white",
            edgecolor="tab:blue",
            hatch="//",
            label=f"≥ {retention['max_lag'] + 1} (never below 0.5)",
        )
    ax.plot(units, retention["e_lag"], "o", color="tab:orange", markersize=4, label="1/e lag")
    ax.set_xlabel("unit")
    ax.set_ylabel("lag (valid steps)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xticks(units if len(units) <= 32 else units[:: int(np.ceil(len(units) / 32))])
    ax.legend(fontsize="small")
    ax.set_title(title or "memory half-life per unit")
    return fig


def plot_gradient_flow(flow: Mapping | None, state_flows: Mapping[str, Mapping], title: str = ""):
    """Gradient norm against lag (log y): ‖∂y/∂x_t‖ of the model output (left, if measured) and
    ‖∂h_T/∂s_t‖ of each recurrent layer relative to lag 0 (right), with the reach threshold."""
    panels = (["input"] if flow is not None else []) + (["layers"] if state_flows else [])
    fraction = (flow or next(iter(state_flows.values()), {})).get("fraction", 1e-3)
    fig = new_figure(5.0 * max(len(panels), 1) + 1.0, 4.2)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=False):
        if panel == "input":
            ax.plot(flow["lags"], _positive(flow["mean"]), color="tab:red", label="‖∂y/∂x_t‖")
            ax.axhline(fraction * flow["mean"][0], color="grey", linestyle="--", linewidth=0.8)
            ax.set_ylabel("mean norm over the batch")
            ax.set_title("model output")
        else:
            for key, profile in state_flows.items():
                ax.plot(profile["lags"], _positive(profile["relative"]), label=key)
            ax.axhline(fraction, color="grey", linestyle="--", linewidth=0.8)
            ax.set_ylabel("‖∂h_T/∂s_t‖ / lag 0")
            ax.set_title("recurrent layers")
        ax.set_yscale("log")
        ax.set_xlabel("lag T - t (valid steps)")
        ax.legend(fontsize="small")
    fig.suptitle(title or f"gradient against lag (dashed: {fraction:g} of lag 0)")
    return fig
