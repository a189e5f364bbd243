"""Inspect a whole model: traces, statistics, weight summaries and a JSON-serialisable summary.

``summary.json`` / :func:`inspect_model`'s ``"summary"`` (format ``keras-gates-inspect/1``)::

    {
      "format": "keras-gates-inspect/1",
      "model": str,                                  # model name
      "thresholds": {"low": float, "high": float},   # saturation thresholds
      "input": {"shape": [int, ...], "mask_value": float | null},
      "layers": {                                    # one entry per gated layer, keyed as
        KEY: {                                       # GatedLayerRef.key
          "class": str, "units": int, "direction": "forward" | "backward" | null,
          "gates": [str, ...],                       # traced gates, in layer.gate_names order
          "valid_steps": int, "total_steps": int,    # (sample, step) pairs counted / traced
          "saturation": {GATE: {
              "left_saturated": float, "right_saturated": float,   # mean over units
              "mean": float, "std": float,                          # over all valid values
              "range": [lo, hi],       # activation range; thresholds are fractions of it
              "per_unit": {"left_saturated": [..], "right_saturated": [..],
                           "mean": [..], "std": [..]}}},
          "weights": {GATE: {"kernel_norm": float, "recurrent_kernel_norm": float,
                             "bias_norm": float | null, "spectral_radius": float,
                             ["recurrent_bias_norm": float], ["peephole_norm": float]}},
          "horizon": {                               # null with horizon=False
              "hold_gate": "forget" | "1 - input" | "update",  # see inspect/horizon.py
              "max_lag": int,                        # longest lag measured (valid steps - 1)
              "half_life": LAGS, "e_lag": LAGS,      # mean retention < 0.5 / < 1/e
              "gradient_reach": int | null, "gradient_reach_censored": bool}  # of ‖∂h_T/∂s_t‖
        }
      },
      "gradient_flow": {                             # null with horizon=False
        "fraction": float,                           # reach: first lag with norm < fraction x lag 0
        "samples": int,                              # first samples of x used (horizon_samples)
        "input": PROFILE + {"outputs": int} | null,  # ‖∂y/∂x_t‖; null when x has no gradient
        "note": str | null,                          # why "input" is null
        "layers": {KEY: PROFILE + {"state_size": int}}   # ‖∂h_T/∂s_t‖, every recurrent layer
      },
      "images": [{"file": str, "layer": KEY | null, "kind": str, "width": int, "height": int}],
      "concepts": {NAME: CONCEPT} | null              # with labels (see inspect/probes.py):
    }

    CONCEPT = {"metric": "auc" | "pearson", "steps": int, "positives": int | null,
               "top": [{"layer": KEY, "signal": str, "unit": int, "score": float}],  # best first
               "scores": {KEY: {SIGNAL: [float | null, ...]}}}    # every unit of every signal

    LAGS = {"per_unit": [int | null, ...], "censored": [bool, ...],   # censored: value is a
            "median": int | null, "median_censored": bool}            # lower bound ("≥ T")
    PROFILE = {"reach": int | null, "reach_censored": bool,
               "mean": [float, ...], "relative": [float, ...]}  # by lag 0, 1, ... (valid steps)

``"images"`` is filled by :func:`keras_gates.inspect.write_report` (``"layer"`` is null for the
model-wide gradient plot). NaN (no valid step) is null. Lags count valid steps in each layer's
processing order; see :mod:`keras_gates.inspect.horizon` and :mod:`keras_gates.inspect.gradients`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from keras_gates.inspect.gradients import (
    DEFAULT_FRACTION,
    check_fraction,
    gradient_flow,
    state_gradient_flow,
)
from keras_gates.inspect.horizon import memory_retention
from keras_gates.inspect.horizon_summary import (
    flow_summary,
    format_horizon_table,
    gradient_note,
    layer_horizon,
)
from keras_gates.inspect.probes import probe
from keras_gates.inspect.stats import (
    DEFAULT_HIGH,
    DEFAULT_LOW,
    STAT_KEYS,
    UNIT_RANGE,
    aggregate_stats,
    check_thresholds,
    layer_stats,
    to_json_list,
    to_json_number,
    weight_summary,
)
from keras_gates.inspect.trace import (
    GatedLayerRef,
    find_gated_layers,
    gate_value_ranges,
    trace_model,
)

SUMMARY_FORMAT = "keras-gates-inspect/1"
HORIZON_SAMPLES = 256
SUMMARY_KEYS = (
    "format",
    "model",
    "thresholds",
    "input",
    "layers",
    "gradient_flow",
    "images",
    "concepts",
)
LAYER_KEYS = (
    "class",
    "units",
    "direction",
    "gates",
    "valid_steps",
    "total_steps",
    "saturation",
    "weights",
    "horizon",
)


def _input_shape(x) -> list[int] | list[list[int]]:
    if isinstance(x, Mapping):
        return [list(np.shape(v)) for v in x.values()]
    if isinstance(x, (list, tuple)):
        return [list(np.shape(v)) for v in x]
    return list(np.shape(x))


def first_samples(x, count: int | None):
    """The first ``count`` samples of ``x`` (an array, or a list/dict of arrays)."""
    if count is None:
        return x
    if isinstance(x, Mapping):
        return {key: value[:count] for key, value in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(value[:count] for value in x)
    return x[:count]


def inspect_model(
    model,
    x,
    mask_value: float | None = None,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    horizon: bool = True,
    fraction: float = DEFAULT_FRACTION,
    horizon_samples: int | None = HORIZON_SAMPLES,
    labels: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Trace every gated layer of ``model`` on ``x`` and compute all statistics.

    Args:
        model: a built Keras model containing GatedLSTM/GatedGRU layers (also nested or inside
            ``Bidirectional``).
        x: an input batch for the model.
        mask_value: optional padding value of the input (see :func:`trace_model`).
        low, high: saturation thresholds (default 0.1 / 0.9).
        horizon: also measure the memory horizon (default True): retention and half-life per
            unit (:func:`memory_retention`), the output's gradient against lag
            (:func:`gradient_flow`) and each recurrent layer's (:func:`state_gradient_flow`).
        fraction: the gradient reach is the first lag where the norm < fraction × lag 0.
        horizon_samples: measure the gradients on at most this many samples of ``x`` (the
            first ones; default 256, None for all): their cost grows with batch × units.
        labels: optional concept labels, ``{name: (batch, time) array}``: every unit is scored
            against each (:func:`keras_gates.inspect.probe`), into ``"probe"`` and the summary's
            ``"concepts"``.

    Returns:
        ``{"refs": {key: GatedLayerRef}, "traces": {key: trace}, "stats": {key: {gate: per-unit
        arrays}}, "weights": {key: weight summary}, "retention": {key: layer_retention},
        "gradient_flow": gradient_flow | None, "state_flow": {key: profile}, "probe": ProbeResult
        | None, "summary": JSON-serialisable dict}`` (the three horizon entries are empty/None
        with horizon=False; ``"probe"`` is None without labels).

    Example:
        >>> result = inspect_model(model, x)                   # doctest: +SKIP
        >>> result["summary"]["layers"]["gated_lstm"]["saturation"]["forget"]["right_saturated"]
    """
    low, high = check_thresholds(low, high)
    fraction = check_fraction(fraction)
    refs = find_gated_layers(model)
    traces = trace_model(model, x, mask_value=mask_value, refs=refs)
    concepts = None if labels is None else probe(model, x, labels, traces=traces)
    ranges = {ref.key: gate_value_ranges(ref.layer) for ref in refs}
    stats = {ref.key: layer_stats(traces[ref.key], low, high, ranges[ref.key]) for ref in refs}
    weights = {ref.key: weight_summary(ref.layer.get_gate_weights()) for ref in refs}
    retention, flow, state_flow, note = {}, None, {}, None
    if horizon:
        retention = memory_retention(model, x, traces=traces)  # numpy: every backend
        head = first_samples(x, horizon_samples)
        note = gradient_note(x)
        state_flow = state_gradient_flow(model, head, mask_value=mask_value, fraction=fraction)
        if note is None:
            flow = gradient_flow(model, head, mask_value=mask_value, fraction=fraction)
    summary = build_summary(
        model_name=model.name,
        refs=refs,
        traces=traces,
        stats=stats,
        weights=weights,
        ranges=ranges,
        thresholds=(low, high),
        input_shape=_input_shape(x),
        mask_value=mask_value,
        retention=retention,
        state_flow=state_flow,
    )
    summary["gradient_flow"] = flow_summary(flow, state_flow, fraction, note) if horizon else None
    summary["concepts"] = None if concepts is None else concepts.to_json()["concepts"]
    return {
        "refs": {ref.key: ref for ref in refs},
        "traces": traces,
        "stats": stats,
        "weights": weights,
        "retention": retention,
        "gradient_flow": flow,
        "state_flow": state_flow,
        "probe": concepts,
        "summary": summary,
    }


def build_summary(
    *,
    model_name: str,
    refs: Sequence[GatedLayerRef],
    traces: Mapping[str, Mapping[str, np.ndarray]],
    stats: Mapping[str, Mapping[str, Mapping]],
    weights: Mapping[str, Mapping[str, Mapping]],
    ranges: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    thresholds: tuple[float, float],
    input_shape: list,
    mask_value: float | None,
    retention: Mapping[str, Mapping] | None = None,
    state_flow: Mapping[str, Mapping] | None = None,
) -> dict:
    """Assemble the JSON-serialisable summary documented in this module's docstring
    (``"gradient_flow"`` is left None: :func:`inspect_model` fills it)."""
    layers = {
        ref.key: {
            **_layer_summary(
                ref,
                traces[ref.key],
                stats[ref.key],
                weights[ref.key],
                (ranges or {}).get(ref.key, {}),
            ),
            "horizon": layer_horizon(
                (retention or {}).get(ref.key), (state_flow or {}).get(ref.key)
            ),
        }
        for ref in refs
    }
    return {
        "format": SUMMARY_FORMAT,
        "model": model_name,
        "thresholds": {"low": thresholds[0], "high": thresholds[1]},
        "input": {"shape": input_shape, "mask_value": to_json_number(mask_value)},
        "layers": layers,
        "gradient_flow": None,
        "images": [],
        "concepts": None,
    }


def _layer_summary(ref: GatedLayerRef, trace, stats, weights, ranges) -> dict:
    gates = list(stats)
    first = np.asarray(trace[gates[0]])
    mask = trace.get("mask")
    valid = (
        int(np.asarray(mask, dtype=bool).sum())
        if mask is not None
        else first.shape[0] * first.shape[1]
    )
    return {
        "class": type(ref.layer).__name__,
        "units": int(first.shape[-1]),
        "direction": ref.direction,
        "gates": gates,
        "valid_steps": valid,
        "total_steps": int(first.shape[0] * first.shape[1]),
        "saturation": {
            gate: _gate_summary(stats[gate], ranges.get(gate, UNIT_RANGE)) for gate in gates
        },
        "weights": {
            gate: {name: to_json_number(value) for name, value in entry.items()}
            for gate, entry in weights.items()
        },
    }


def _gate_summary(gate_stats, value_range) -> dict:
    totals = aggregate_stats(gate_stats)
    return {
        **{key: to_json_number(totals[key]) for key in STAT_KEYS},
        "range": [float(value_range[0]), float(value_range[1])],
        "per_unit": {key: to_json_list(gate_stats[key]) for key in STAT_KEYS},
    }


def _cell(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def format_table(summary: Mapping) -> str:
    """A short fixed-width text table of saturation per layer and gate."""
    low, high = summary["thresholds"]["low"], summary["thresholds"]["high"]
    rows = [
        (key, gate, entry)
        for key, layer in summary["layers"].items()
        for gate, entry in layer["saturation"].items()
    ]
    width = max([len("layer"), *(len(key) for key, _, _ in rows)])
    gate_width = max([len("gate"), *(len(gate) for _, gate, _ in rows)])
    head = f"{'layer':<{width}}  {'gate':<{gate_width}}  {'left':>6}  {'right':>6}"
    lines = [head + f"  {'mean':>6}  {'std':>6}"]
    for key, gate, entry in rows:
        numbers = "  ".join(
            _cell(entry[name]) for name in ("left_saturated", "right_saturated", "mean", "std")
        )
        lines.append(f"{key:<{width}}  {gate:<{gate_width}}  {numbers}")
    lines.append(
        f"left/right: fraction of valid steps below {low:g} / above {high:g} of each gate's "
        "activation range (sigmoid: 0..1, tanh: -1..1)"
    )
    horizon = format_horizon_table(summary)
    return "\n".join(lines) + ("\n\nmemory horizon\n" + horizon if horizon else "")
