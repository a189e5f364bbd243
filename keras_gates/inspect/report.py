"""Write the inspection report: PNG plots, ``summary.json`` and a self-contained ``index.html``."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from keras_gates.atomic import write_text
from keras_gates.inspect import horizon_plots, plots
from keras_gates.inspect.gradients import DEFAULT_FRACTION
from keras_gates.inspect.htmlpage import render_html
from keras_gates.inspect.stats import DEFAULT_HIGH, DEFAULT_LOW
from keras_gates.inspect.summary import inspect_model

SUMMARY_FILE = "summary.json"
HTML_FILE = "index.html"
IMAGE_KINDS = ("heatmaps", "saturation", "weights", "states", "retention", "half_life")
MODEL_IMAGE_KINDS = ("gradient_flow",)  # one per report, "layer": null


def _file_stem(index: int, key: str) -> str:
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def _layer_figures(result: Mapping, key: str, sample: int, top_k: int) -> dict:
    summary = result["summary"]
    low, high = summary["thresholds"]["low"], summary["thresholds"]["high"]
    trace = result["traces"][key]
    ranges = {
        gate: tuple(entry["range"]) for gate, entry in summary["layers"][key]["saturation"].items()
    }
    figures = {
        "heatmaps": lambda: plots.plot_gate_heatmaps(
            trace, sample, title=f"{key}: gates", value_ranges=ranges
        ),
        "saturation": lambda: plots.plot_saturation(
            result["stats"][key], low, high, title=f"{key}: saturation"
        ),
        "weights": lambda: plots.plot_weight_norms(result["weights"][key], title=f"{key}: weights"),
        "states": lambda: plots.plot_state_trajectories(
            trace, sample, top_k, title=f"{key}: states"
        ),
    }
    retention = result.get("retention", {}).get(key)
    if retention is not None:
        figures["retention"] = lambda: horizon_plots.plot_retention(
            retention, title=f"{key}: retention of the {retention['gate']} gate"
        )
        figures["half_life"] = lambda: horizon_plots.plot_half_lives(
            retention, title=f"{key}: memory half-life per unit"
        )
    return figures


def _model_figures(result: Mapping) -> dict:
    if result.get("gradient_flow") is None and not result.get("state_flow"):
        return {}
    return {
        "gradient_flow": lambda: horizon_plots.plot_gradient_flow(
            result.get("gradient_flow"), result.get("state_flow", {})
        )
    }


def write_plots(result: Mapping, out_dir: str, sample: int = 0, top_k: int = 6) -> list[dict]:
    """Draw and save every plot of an :func:`inspect_model` result; return the image records.

    Each record is ``{"file", "layer", "kind", "width", "height"}`` (file relative to out_dir;
    ``"layer"`` None for the model-wide gradient plot).
    """
    images = []
    for kind, draw in _model_figures(result).items():
        name = f"model-{kind}.png"
        width, height = plots.save_figure(draw(), os.path.join(out_dir, name))
        images.append({"file": name, "layer": None, "kind": kind, "width": width, "height": height})
    for index, key in enumerate(result["summary"]["layers"]):
        for kind, draw in _layer_figures(result, key, sample, top_k).items():
            name = f"{_file_stem(index, key)}-{kind}.png"
            width, height = plots.save_figure(draw(), os.path.join(out_dir, name))
            images.append(
                {"file": name, "layer": key, "kind": kind, "width": width, "height": height}
            )
    return images


def write_report(
    model,
    x,
    out_dir: str | os.PathLike,
    mask_value: float | None = None,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    sample: int = 0,
    top_k: int = 6,
    horizon: bool = True,
    fraction: float = DEFAULT_FRACTION,
) -> dict:
    """Inspect ``model`` on ``x`` and write the full report to ``out_dir``.

    Args:
        model: a Keras model with GatedLSTM/GatedGRU layers.
        x: an input batch for the model.
        out_dir: folder to write into (created if missing; files are replaced).
        mask_value: optional padding value of the input (see :func:`trace_model`).
        low, high: saturation thresholds (default 0.1 / 0.9).
        sample: index of the batch sample drawn in the heatmaps and state trajectories.
        top_k: number of units drawn in the state trajectories.
        horizon: also measure and draw the memory horizon (retention, half-life, gradient flow).
        fraction: the gradient reach threshold, relative to lag 0 (default 1e-3).

    Returns:
        ``{"dir": out_dir, "html": path of index.html, "summary": path of summary.json,
        "images": [paths of the PNGs]}``.

    Example:
        >>> paths = write_report(model, x, "report")   # doctest: +SKIP
        >>> print("open", paths["html"])               # doctest: +SKIP
    """
    out_dir = os.fspath(out_dir)
    result = inspect_model(
        model, x, mask_value=mask_value, low=low, high=high, horizon=horizon, fraction=fraction
    )
    return write_report_files(result, out_dir, sample=sample, top_k=top_k)


def write_report_files(result: Mapping, out_dir: str, sample: int = 0, top_k: int = 6) -> dict:
    """Write the plots, ``summary.json`` and ``index.html`` of an :func:`inspect_model` result."""
    for trace in result["traces"].values():  # a bad `sample` fails before anything is written
        plots.valid_steps(trace, sample)
    os.makedirs(out_dir, exist_ok=True)
    images = write_plots(result, out_dir, sample=sample, top_k=top_k)
    summary = {**result["summary"], "images": images}
    summary_path = os.path.join(out_dir, SUMMARY_FILE)
    html_path = os.path.join(out_dir, HTML_FILE)
    write_text(summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    write_text(html_path, render_html(summary, out_dir))
    return {
        "dir": out_dir,
        "html": html_path,
        "summary": summary_path,
        "images": [os.path.join(out_dir, image["file"]) for image in images],
    }
