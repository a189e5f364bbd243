"""A self-contained HTML page for an inspection summary (images embedded as data URIs)."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from html import escape

from keras_gates.inspect.horizon_summary import lag_text
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
    "retention": "Mean retention against lag, one line per unit: the product of the hold gate "
    "(LSTM forget, or 1 - input when coupled; GRU update) over the steps in between, averaged "
    "over every (sample, start step) pair of valid steps.",
    "half_life": "Memory half-life per unit: the lag where its mean retention falls below 0.5 "
    "(hatched: never within the batch's length); dots: the 1/e lag.",
    "gradient_flow": "Gradient norm against lag T - t, averaged over the batch: of the model "
    "output with respect to each input step, and of each recurrent layer's last hidden state "
    "with respect to its state after step t (relative to lag 0). Dashed: the reach threshold.",
}

_HORIZON_INTRO = (
    "How far back each unit remembers and how far gradients reach (Pascanu, Mikolov &amp; Bengio, "
    "2013). Lags count valid steps back in each layer's processing order; padded steps carry the "
    "state unchanged and are not counted. ≥T: the threshold was never crossed within the batch."
)


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
        f'alt="{escape(image["kind"])} of {escape(image["layer"] or "the model")}">'
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
            *_unit_horizon(layer.get("horizon")),
            *(_figure(image, image_dir) for image in images if image["layer"] == key),
            "</section>",
        ]
    )


def _lag(entry: Mapping, name: str) -> str:
    return lag_text(entry[name]["median"], entry[name]["median_censored"])


def _unit_horizon(horizon: Mapping | None) -> list[str]:
    if not horizon:
        return []
    half, e_lag = horizon["half_life"], horizon["e_lag"]
    rows = [
        [str(unit), lag_text(h, hc), lag_text(e, ec)]
        for unit, (h, hc, e, ec) in enumerate(
            zip(half["per_unit"], half["censored"], e_lag["per_unit"], e_lag["censored"])
        )
    ]
    return [
        f"<h3>Memory horizon ({escape(horizon['hold_gate'])} gate)</h3>",
        _table(["unit", "half-life", "1/e lag"], rows),
    ]


def _horizon_section(summary: Mapping, image_dir: str) -> list[str]:
    flow = summary.get("gradient_flow")
    if flow is None:
        return []
    rows = []
    for key, profile in flow["layers"].items():
        entry = summary["layers"].get(key, {}).get("horizon")
        reach = lag_text(profile["reach"], profile["reach_censored"])
        if entry:
            rows.append(
                [key, entry["hold_gate"], _lag(entry, "half_life"), _lag(entry, "e_lag"), reach]
            )
        else:
            rows.append([key, "-", "-", "-", reach])
    if flow["input"] is not None:
        reach = lag_text(flow["input"]["reach"], flow["input"]["reach_censored"])
        rows.append(["model output ‖∂y/∂x_t‖", "-", "-", "-", reach])
    header = ["layer", "hold gate", "median half-life", "median 1/e lag"]
    header.append(f"gradient reach (< {flow['fraction']:g} of lag 0)")
    note = f"<p class='note'>No input gradient: {escape(flow['note'])}.</p>" if flow["note"] else ""
    figures = [_figure(i, image_dir) for i in summary["images"] if i["layer"] is None]
    return [
        "<section><h2>Memory horizon</h2>",
        f"<p>{_HORIZON_INTRO}</p>",
        _table(header, rows),
        note,
        *figures,
        "</section>",
    ]


_CONCEPTS_INTRO = (
    "What each unit tracks: every signal (hidden state, cell state, each gate) of every unit is "
    "scored against each concept's per-step labels on the steps that count. A binary concept is "
    "scored by the ROC AUC (0.5: chance; 1: high exactly inside the concept; 0: low exactly "
    "inside it, as telling), a continuous one by Pearson r; units are ranked by |AUC - 0.5| or "
    "|r|. Padded (masked) steps are not counted."
)


def _concepts_section(concepts: Mapping | None) -> list[str]:
    if not concepts:
        return []
    parts = ["<section><h2>Concepts</h2>", f"<p>{_CONCEPTS_INTRO}</p>"]
    for name, entry in concepts.items():
        metric = "ROC AUC" if entry["metric"] == "auc" else "Pearson r"
        counted = f"{entry['steps']} steps counted"
        if entry["positives"] is not None:
            counted += f", {entry['positives']} inside the concept"
        rows = [
            [str(rank), row["layer"], row["signal"], str(row["unit"]), _number(row["score"])]
            for rank, row in enumerate(entry["top"], start=1)
        ]
        parts.append(f"<h3>{escape(name)}</h3><p class='note'>{metric}; {counted}.</p>")
        parts.append(_table(["rank", "layer", "signal", "unit", metric], rows))
    return [*parts, "</section>"]


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
            *_horizon_section(summary, image_dir),
            *_concepts_section(summary.get("concepts")),
            *sections,
            "</body></html>",
        ]
    )
