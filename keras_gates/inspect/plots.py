"""Matplotlib figures of gate behaviour, drawn from plain data (headless: no pyplot, no display).

Every function takes the plain results of :mod:`keras_gates.inspect.stats` /
:func:`keras_gates.inspect.trace_model` and returns a ``matplotlib.figure.Figure``;
:func:`save_figure` writes one to PNG atomically and returns its pixel size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from keras_gates.atomic import atomic_open
from keras_gates.inspect.stats import gate_names_of

DPI = 100
_WEIGHT_BARS = (
    ("kernel_norm", "input kernel"),
    ("recurrent_kernel_norm", "recurrent kernel"),
    ("bias_norm", "bias"),
)


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches at the report's DPI."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Plotting gates needs matplotlib: pip install 'keras-gates[inspect]'."
        ) from err
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def valid_steps(trace: Mapping[str, np.ndarray], sample: int) -> np.ndarray:
    """Indices of the unmasked steps of batch entry ``sample``; raise if there are none."""
    mask = trace.get("mask")
    first = trace[gate_names_of(trace)[0]]
    if not 0 <= sample < first.shape[0]:
        raise ValueError(
            f"Received `sample`={sample}: expected an index in [0, {first.shape[0]}) of the batch."
        )
    steps = np.arange(first.shape[1])
    if mask is not None:
        steps = np.flatnonzero(np.asarray(mask[sample], dtype=bool))
    if steps.size == 0:
        raise ValueError(
            f"Received `sample`={sample}, but every time step of that sample is masked: "
            "pick a sample that has unpadded steps."
        )
    return steps


def _color_range(values: np.ndarray, value_range: tuple[float, float] | None):
    if value_range is None:
        value_range = (-1.0, 1.0) if values.min() < 0 else (0.0, 1.0)
    low = min(float(value_range[0]), float(values.min()))
    high = max(float(value_range[1]), float(values.max()))
    return low, high


def plot_gate_heatmaps(
    trace: Mapping[str, np.ndarray],
    sample: int = 0,
    title: str = "",
    value_ranges: Mapping[str, tuple[float, float]] | None = None,
):
    """One heatmap per gate: units (rows) x valid time steps (columns) for one sample.

    ``value_ranges`` (gate -> (lo, hi), e.g. ``gate_value_ranges(layer)``) fixes each colour scale;
    by default it is (0, 1), or (-1, 1) for a gate with negative values.
    """
    gates = gate_names_of(trace)
    steps = valid_steps(trace, sample)
    fig = new_figure(8.0, 1.2 + 1.8 * len(gates))
    axes = fig.subplots(len(gates), 1, squeeze=False)[:, 0]
    for ax, gate in zip(axes, gates, strict=True):
        values = np.asarray(trace[gate][sample])[steps].T  # (units, valid steps)
        low, high = _color_range(values, (value_ranges or {}).get(gate))
        cmap = "RdBu_r" if low < 0 else "viridis"
        image = ax.imshow(
            values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=low, vmax=high
        )
        ax.set_ylabel(f"{gate}\nunit")
        _label_steps(ax, steps)
        fig.colorbar(image, ax=ax, pad=0.01)
    axes[-1].set_xlabel(f"time step (valid steps of sample {sample})")
    fig.suptitle(title or f"gate activations, sample {sample}")
    return fig


def _label_steps(ax, steps: np.ndarray) -> None:
    ticks = np.linspace(0, len(steps) - 1, num=min(len(steps), 8)).round().astype(int)
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks])


def plot_saturation(
    stats: Mapping[str, Mapping[str, np.ndarray]],
    low: float = 0.1,
    high: float = 0.9,
    title: str = "",
):
    """Karpathy et al. scatter: per unit, fraction left- vs right-saturated, one colour per gate."""
    fig = new_figure(6.0, 6.0)
    ax = fig.subplots()
    for gate, gate_stats in stats.items():
        left, right = np.asarray(gate_stats["left_saturated"]), gate_stats["right_saturated"]
        never = int(np.sum((left == 0) & (np.asarray(right) == 0)))
        ax.scatter(
            left,
            right,
            label=f"{gate} ({never}/{left.size} units never saturate)",
            alpha=0.7,
            s=24,
        )
    ax.plot([0, 1], [1, 0], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(f"fraction left-saturated (below {low:g} of the gate's range)")
    ax.set_ylabel(f"fraction right-saturated (above {high:g} of the gate's range)")
    ax.legend(loc="upper right", title="gate")
    ax.set_title(title or "gate saturation per unit")
    return fig


def plot_weight_norms(weights: Mapping[str, Mapping[str, float | None]], title: str = ""):
    """Per gate: bars of the input kernel, recurrent kernel and bias norms, and spectral radius."""
    gates = list(weights)
    fig = new_figure(8.0, 4.0)
    norms_ax, radius_ax = fig.subplots(1, 2, width_ratios=(2, 1))
    positions = np.arange(len(gates))
    width = 0.8 / len(_WEIGHT_BARS)
    for index, (key, label) in enumerate(_WEIGHT_BARS):
        heights = [weights[g].get(key) or 0.0 for g in gates]
        norms_ax.bar(positions + (index - 1) * width, heights, width, label=label)
    norms_ax.set_xticks(positions, gates, rotation=30)
    norms_ax.set_ylabel("Frobenius norm")
    norms_ax.legend(fontsize="small")
    radius_ax.bar(positions, [weights[g]["spectral_radius"] for g in gates], color="tab:purple")
    radius_ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    radius_ax.set_xticks(positions, gates, rotation=30)
    radius_ax.set_ylabel("spectral radius of recurrent kernel")
    fig.suptitle(title or "gate weights")
    return fig


def most_active_units(values: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the ``top_k`` units with the largest std over time of a (time, units) array."""
    spread = np.asarray(values).std(axis=0)
    return np.argsort(-spread, kind="stable")[:top_k]


def plot_state_trajectories(
    trace: Mapping[str, np.ndarray], sample: int = 0, top_k: int = 6, title: str = ""
):
    """Cell-state (LSTM) or hidden-state (GRU) trajectories of the most active units."""
    key = "cell" if "cell" in trace else "hidden"
    steps = valid_steps(trace, sample)
    values = np.asarray(trace[key][sample])[steps]  # (valid steps, units)
    fig = new_figure(8.0, 4.0)
    ax = fig.subplots()
    for unit in most_active_units(values, top_k):
        ax.plot(steps, values[:, unit], marker=".", label=f"unit {unit}")
    ax.set_xlabel(f"time step (sample {sample})")
    ax.set_ylabel(f"{key} state")
    ax.legend(fontsize="small", ncols=2)
    ax.set_title(title or f"{key} state of the {min(top_k, values.shape[1])} most active units")
    return fig


def save_figure(fig, path: str | os.PathLike) -> tuple[int, int]:
    """Write ``fig`` to ``path`` as PNG atomically; return its (width, height) in pixels."""
    with atomic_open(path, "wb") as stream:
        fig.savefig(stream, format="png", dpi=DPI)
    return png_size(path)


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) in pixels read from a PNG file's IHDR header."""
    with open(path, "rb") as stream:
        header = stream.read(24)
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"File '{path}' is not a PNG image.")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
