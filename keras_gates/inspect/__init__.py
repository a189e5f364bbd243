"""Gate inspection: trace every gate of a model, saturation statistics, plots and a report.

Three lines::

    from keras_gates.inspect import write_report
    paths = write_report(model, x, "report")
    print("open", paths["html"])

Computing (:func:`trace_model`, :func:`inspect_model`, :mod:`.stats`) returns plain numpy/JSON data;
plotting (:mod:`.plots`) and writing (:func:`write_report`) are separate. The memory horizon:
retention and half-life per unit from the hold gates (:mod:`.horizon`), gradient norm against
lag for any Keras model (:mod:`.gradients`), their plots (:mod:`.horizon_plots`). What each unit
means: scores against concept labels (:func:`probe`, :mod:`.scores`) and LSTMVis-style hypothesis
matching (:func:`match`).

The names below load on first use (module ``__getattr__``), so that importing this package (and
``keras_gates.inspect.cli``, which builds ``keras-gates inspect --help``) loads neither Keras nor
matplotlib.
"""

from __future__ import annotations

import importlib

# submodule -> the names it exports here
_EXPORTS = {
    "gradients": (
        "DEFAULT_FRACTION",
        "find_recurrent_layers",
        "gradient_flow",
        "state_gradient_flow",
    ),
    "horizon": (
        "hold_gate_name",
        "lag_below",
        "layer_retention",
        "memory_retention",
        "retention_curve",
        "retention_matrix",
    ),
    "horizon_plots": (
        "plot_gradient_flow",
        "plot_half_lives",
        "plot_retention",
    ),
    "htmlpage": ("render_html",),
    "matching": ("Match", "match"),
    "plots": (
        "plot_gate_heatmaps",
        "plot_saturation",
        "plot_state_trajectories",
        "plot_weight_norms",
        "save_figure",
    ),
    "probes": ("ProbeResult", "ProbeRow", "probe"),
    "report": (
        "write_plots",
        "write_report",
        "write_report_files",
    ),
    "scores": ("pearson", "roc_auc"),
    "stats": (
        "DEFAULT_HIGH",
        "DEFAULT_LOW",
        "aggregate_stats",
        "layer_stats",
        "saturation_stats",
        "spectral_radius",
        "weight_summary",
    ),
    "summary": (
        "SUMMARY_FORMAT",
        "build_summary",
        "format_table",
        "inspect_model",
    ),
    "trace": (
        "GatedLayerRef",
        "find_gated_layers",
        "gate_value_ranges",
        "input_mask_from_value",
        "trace_model",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
