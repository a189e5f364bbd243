"""A self-contained HTML page for an inspection summary (images embedded as data URIs)."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from html import escape

from keras_gates.inspect.stats import STAT_KEYS, WEIGHT_KEYS

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1em 0; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; }
"""

_INTRO = (
    "Per gate, the fraction of (sample, time step) values of each unit that are left-saturated "
    "(below {low:g} of the gate's activation range) or right-saturated (above {high:g} of it), "
    "after Karpathy, Johnson &amp; Fei-Fei (2015). For a sigmoid gate (range 0 to 1) the "
    "thresholds are the values themselves; for a tanh candidate (range -1 to 1) they are "
    "{tanh_low:g} and {tanh_high:g}. A forget gate that stays right-saturated keeps its cell "
    "state like an integrator; a gate that never saturates only scales its input. Padded "
    "(masked) steps are not counted."
)

_CAPTIONS = {
    "heatmaps": "Gate activations of one sample: units (rows) over time steps (columns).",
    "saturation": "Fraction of steps each unit spends left- vs right-saturated, per gate.",
    "weights": "Norms of each gate's input kernel, recurrent kernel and bias, and the spectral "
    "radius of its recurrent kernel (above 1: the recurrence can amplify).",
    "states": "State trajectories of the most active units (largest spread over time).",
}


def _number(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _saturation_table(layer: Mapping, low: float, high: float) -> str:
    rows = [
        [gate, _range(entry.get("range")), *(_number(entry[key]) for key in STAT_KEYS)]
        for gate, entry in layer["saturation"].items()
    ]
    header = ["gate", "range", f"left-saturated (< {low:g})", f"right-saturated (> {high:g})"]
    return _table([*header, "mean", "std"], rows)


def _range(value_range) -> str:
    return "n/a" if not value_range else f"{value_range[0]:g} to {value_range[1]:g}"


def _weights_table(layer: Mapping) -> str:
    rows = [
        [gate, *(_number(entry.get(key)) for key in WEIGHT_KEYS)]
        for gate, entry in layer["weights"].items()
    ]
    header = ["gate", "input kernel norm", "recurrent kernel norm", "bias norm", "spectral radius"]
    return _table(header, rows)


def _figure(image: Mapping, image_dir: str) -> str:
    with open(os.path.join(image_dir, image["file"]), "rb") as stream:
        data = base64.b64encode(stream.read()).decode("ascii")
    caption = _CAPTIONS.get(image["kind"], image["kind"])
    return (
        f'<figure><img src="data:image/png;base64,{data}" data-file="{escape(image["file"])}" '
        f'width="{image["width"]}" height="{image["height"]}" '
        f'alt="{escape(image["kind"])} of {escape(image["layer"])}">'
        f"<figcaption>{escape(caption)} <span class='note'>({escape(image['file'])})</span>"
        "</figcaption></figure>"
    )


def _layer_section(key: str, layer: Mapping, images: list, image_dir: str, low, high) -> str:
    direction = f", {layer['direction']} direction" if layer["direction"] else ""
    return "\n".join(
        [
            f"<section><h2>{escape(key)}</h2>",
            f"<p>{escape(layer['class'])}, {layer['units']} units{escape(direction)}; "
            f"{layer['valid_steps']} of {layer['total_steps']} (sample, step) pairs counted.</p>",
            "<h3>Saturation</h3>",
            _saturation_table(layer, low, high),
            "<h3>Weights</h3>",
            _weights_table(layer),
            *(_figure(image, image_dir) for image in images if image["layer"] == key),
            "</section>",
        ]
    )


def render_html(summary: Mapping, image_dir: str | os.PathLike) -> str:
    """The report page for ``summary`` (see :mod:`keras_gates.inspect.summary`).

    Every entry of ``summary["images"]`` is read from ``image_dir`` and embedded, so the page
    needs no other file.
    """
    image_dir = os.fspath(image_dir)
    low, high = summary["thresholds"]["low"], summary["thresholds"]["high"]
    mask_value = summary["input"]["mask_value"]
    title = f"keras-gates inspection: {summary['model']}"
    sections = [
        _layer_section(key, layer, summary["images"], image_dir, low, high)
        for key, layer in summary["layers"].items()
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            f"<p>{_INTRO.format(low=low, high=high, tanh_low=2 * low - 1, tanh_high=2 * high - 1)}"
            "</p>",
            f"<p class='note'>Input shape {escape(str(summary['input']['shape']))}; mask value "
            f"{'none' if mask_value is None else f'{mask_value:g}'}; "
            f"{len(summary['layers'])} gated layer(s).</p>",
            *sections,
            "</body></html>",
        ]
    )
