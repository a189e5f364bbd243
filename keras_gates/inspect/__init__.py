"""Gate inspection: trace every gate of a model, saturation statistics, plots and a report.

Three lines::

    from keras_gates.inspect import write_report
    paths = write_report(model, x, "report")
    print("open", paths["html"])

Computing (:func:`trace_model`, :func:`inspect_model`, :mod:`.stats`) returns plain numpy/JSON data;
plotting (:mod:`.plots`) and writing (:func:`write_report`) are separate. The memory horizon:
retention and half-life per unit from the hold gates (:mod:`.horizon`), gradient norm against
lag for any Keras model (:mod:`.gradients`), their plots (:mod:`.horizon_plots`).
"""

from keras_gates.inspect.gradients import (
    DEFAULT_FRACTION,
    find_recurrent_layers,
    gradient_flow,
    state_gradient_flow,
)
from keras_gates.inspect.horizon import (
    hold_gate_name,
    lag_below,
    layer_retention,
    memory_retention,
    retention_curve,
    retention_matrix,
)
from keras_gates.inspect.horizon_plots import (
    plot_gradient_flow,
    plot_half_lives,
    plot_retention,
)
from keras_gates.inspect.htmlpage import render_html
from keras_gates.inspect.plots import (
    plot_gate_heatmaps,
    plot_saturation,
    plot_state_trajectories,
    plot_weight_norms,
    save_figure,
)
from keras_gates.inspect.report import write_plots, write_report, write_report_files
from keras_gates.inspect.stats import (
    DEFAULT_HIGH,
    DEFAULT_LOW,
    aggregate_stats,
    layer_stats,
    saturation_stats,
    spectral_radius,
    weight_summary,
)
from keras_gates.inspect.summary import (
    SUMMARY_FORMAT,
    build_summary,
    format_table,
    inspect_model,
)
from keras_gates.inspect.trace import (
    GatedLayerRef,
    find_gated_layers,
    gate_value_ranges,
    input_mask_from_value,
    trace_model,
)

__all__ = [
    "DEFAULT_FRACTION",
    "DEFAULT_HIGH",
    "DEFAULT_LOW",
    "SUMMARY_FORMAT",
    "aggregate_stats",
    "build_summary",
    "find_gated_layers",
    "find_recurrent_layers",
    "format_table",
    "gate_value_ranges",
    "GatedLayerRef",
    "gradient_flow",
    "hold_gate_name",
    "input_mask_from_value",
    "inspect_model",
    "lag_below",
    "layer_retention",
    "layer_stats",
    "memory_retention",
    "plot_gate_heatmaps",
    "plot_gradient_flow",
    "plot_half_lives",
    "plot_retention",
    "plot_saturation",
    "plot_state_trajectories",
    "plot_weight_norms",
    "render_html",
    "retention_curve",
    "retention_matrix",
    "saturation_stats",
    "save_figure",
    "spectral_radius",
    "state_gradient_flow",
    "trace_model",
    "weight_summary",
    "write_plots",
    "write_report",
    "write_report_files",
]
