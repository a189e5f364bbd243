"""Keras callbacks for watching gates while a model trains."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from keras_gates import _internals
from keras_gates.inspect.gradients import DEFAULT_FRACTION
from keras_gates.inspect.horizon_summary import horizon_scalars
from keras_gates.inspect.probes import check_labels
from keras_gates.inspect.stats import DEFAULT_HIGH, DEFAULT_LOW, STAT_KEYS, check_thresholds
from keras_gates.inspect.summary import inspect_model
from keras_gates.inspect.trace import check_input_shape, find_gated_layers

#: Scalars logged per gate: the saturation statistics plus the recurrent spectral radius.
MONITORED = (*STAT_KEYS, "spectral_radius")
#: Memory-horizon scalars logged per layer (see ``keras_gates.inspect.horizon_summary``).
HORIZON_MONITORED = ("median_half_life", "median_e_lag", "gradient_reach")


class GateMonitor(keras.callbacks.Callback):
    """Trace a fixed probe batch every ``every`` epochs and log gate saturation statistics.

    At the end of each monitored epoch the model is run on ``probe`` (inference mode), every gated
    layer is traced, and per layer and gate the mean over units of the left/right-saturated
    fractions, the mean and std of the activations and the spectral radius of the recurrent kernel
    are added to the epoch logs as ``"{prefix}/{layer}/{gate}/{stat}"`` (so they reach
    ``model.fit(...).history``, other callbacks and the progress bar). Epochs that are not
    monitored add nothing, so with ``every > 1`` these history lists are shorter than the others;
    :attr:`epochs` lists the epochs they belong to. With ``log_dir``, the same scalars and
    histograms of each gate's activations and per-unit saturation fractions are written to
    TensorBoard event files with ``tf.summary`` (step = epoch; TensorBoard's own scalar and
    histogram formats, written with TensorFlow alone so the ``tensorboard`` package is optional).

    The memory horizon is logged too (``horizon``): per gated layer the median over units of
    the half-life and of the 1/e lag (``"{prefix}/{layer}/median_half_life"``), per recurrent
    layer the gradient reach of ‖∂h_T/∂s_t‖ (``"{prefix}/{layer}/gradient_reach"``) and the
    model's ``"{prefix}/input_gradient_reach"`` of ‖∂y/∂x_t‖. A value that never crossed its
    threshold within the probe is logged as its lower bound, the probe's number of steps (see
    ``keras_gates.inspect.horizon``). TensorBoard also gets a histogram of the per-unit
    half-lives (``"{prefix}/{layer}/half_life_per_unit"``).

    With ``labels`` (concept labels for the probe batch, see ``keras_gates.inspect.probe``) every
    unit is scored against each concept and the best score is logged as
    ``"{prefix}/concepts/{concept}/best_score"`` (the ROC AUC or Pearson r of the strongest
    unit: farthest from 0.5 or 0); which unit it is stays in :attr:`summaries`
    (``summary["concepts"][concept]["top"]``).

    Args:
        probe: the input batch to trace (numpy array, or what the model takes).
        every: monitor every this many epochs (default 1).
        log_dir: TensorBoard log folder, or None (default) for no TensorBoard output.
        mask_value: optional padding value of ``probe`` (see ``keras_gates.inspect.trace_model``).
        low, high: saturation thresholds (default 0.1 / 0.9).
        stats: which of ``MONITORED`` to log (default all).
        prefix: start of every log key (default ``"gates"``).
        horizon: which of ``HORIZON_MONITORED`` to log (default all; ``()`` skips measuring
            the memory horizon, which costs a few gradient passes over the probe).
        fraction: the gradient reach threshold relative to lag 0 (default 1e-3).
        labels: optional ``{concept: (batch, time) array}`` for ``probe`` (default None: no
            concept scores).

    Attributes:
        epochs: the monitored epochs.
        summaries: for each monitored epoch, the full inspection summary (per-unit values included;
            see ``keras_gates.inspect.summary``).

    Example:
        >>> monitor = GateMonitor(x[:32], every=1, log_dir="logs")   # doctest: +SKIP
        >>> history = model.fit(x, y, epochs=3, callbacks=[monitor])  # doctest: +SKIP
        >>> history.history["gates/gated_lstm/forget/right_saturated"]  # doctest: +SKIP
    """

    def __init__(
        self,
        probe,
        every: int = 1,
        log_dir: str | os.PathLike | None = None,
        mask_value: float | None = None,
        low: float = DEFAULT_LOW,
        high: float = DEFAULT_HIGH,
        stats: Sequence[str] = MONITORED,
        prefix: str = "gates",
        horizon: Sequence[str] = HORIZON_MONITORED,
        fraction: float = DEFAULT_FRACTION,
        labels: Mapping[str, np.ndarray] | None = None,
    ):
        super().__init__()
        if not isinstance(every, int) or every < 1:
            raise ValueError(
                f"Received an invalid value for argument `every`, expected a positive integer "
                f"(monitor every N epochs), got {every!r}."
            )
        unknown = [name for name in stats if name not in MONITORED]
        if unknown:
            raise ValueError(
                f"Received unknown `stats` {unknown}: expected a subset of {list(MONITORED)}."
            )
        unknown = [name for name in horizon if name not in HORIZON_MONITORED]
        if unknown:
            raise ValueError(
                f"Received unknown `horizon` {unknown}: expected a subset of "
                f"{list(HORIZON_MONITORED)} (or () to skip the memory horizon)."
            )
        self.probe = probe
        self.every = every
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.mask_value = mask_value
        self.low, self.high = check_thresholds(low, high)
        self.stats = tuple(stats)
        self.prefix = prefix
        self.horizon = tuple(horizon)
        self.fraction = fraction
        self.labels = labels
        self.epochs: list[int] = []
        self.summaries: list[dict] = []
        self._writer = None

    def on_train_begin(self, logs=None):
        """Check the probe fits the model and open the TensorBoard writer."""
        if not find_gated_layers(self.model):
            raise ValueError(
                f"GateMonitor found no gated layer (GatedLSTM/GatedGRU) in model "
                f"'{self.model.name}': use it with a model built from keras_gates layers."
            )
        check_input_shape(self.model, self.probe)
        if self.labels is not None and isinstance(self.probe, np.ndarray):
            check_labels(self.labels, np.shape(self.probe)[:2])
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        """Trace the probe on monitored epochs and add the statistics to ``logs``."""
        if (epoch + 1) % self.every:
            return
        result = inspect_model(
            self.model,
            self.probe,
            mask_value=self.mask_value,
            low=self.low,
            high=self.high,
            horizon=bool(self.horizon),
            fraction=self.fraction,
            labels=self.labels,
        )
        scalars = self._scalars(result["summary"])
        if logs is not None:
            logs.update(scalars)
        self.epochs.append(epoch)
        self.summaries.append(result["summary"])
        if self._writer is not None:
            self._write_tensorboard(epoch, scalars, result)

    def on_train_end(self, logs=None):
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def _scalars(self, summary: dict) -> dict[str, float]:
        scalars = {}
        for key, layer in summary["layers"].items():
            for gate, entry in layer["saturation"].items():
                values = {**entry, **layer["weights"].get(gate, {})}
                for name in self.stats:
                    if values.get(name) is not None:
                        scalars[f"{self.prefix}/{key}/{gate}/{name}"] = float(values[name])
        for concept, entry in (summary.get("concepts") or {}).items():
            scalars[f"{self.prefix}/concepts/{concept}/best_score"] = entry["top"][0]["score"]
        return {**scalars, **horizon_scalars(summary, self.prefix, self.horizon)}

    def _write_tensorboard(self, epoch: int, scalars: dict[str, float], result: dict) -> None:
        with self._writer.as_default(step=epoch):
            for name, value in scalars.items():
                write_scalar(name, value, epoch)
            for key, trace in result["traces"].items():
                valid = np.asarray(trace["mask"], dtype=bool)
                for gate, gate_stats in result["stats"][key].items():
                    if gate_stats["steps"] == 0:
                        continue
                    base = f"{self.prefix}/{key}/{gate}"
                    write_histogram(f"{base}/activations", np.asarray(trace[gate])[valid], epoch)
                    for name in ("left_saturated", "right_saturated"):
                        write_histogram(f"{base}/{name}_per_unit", gate_stats[name], epoch)
            for key, retention in result["retention"].items():
                tag = f"{self.prefix}/{key}/half_life_per_unit"
                write_histogram(tag, retention["half_life"], epoch)
        self._writer.flush()


def write_scalar(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar, as ``tf.summary.scalar`` writes it, without needing ``tensorboard``."""
    import tensorflow as tf

    metadata = _internals.summary_metadata("scalars", "scalar")
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)


def write_histogram(tag: str, values: np.ndarray, step: int, bins: int = 30) -> None:
    """A TensorBoard histogram (``[bins, 3]`` rows of left edge, right edge, count), as
    ``tf.summary.histogram`` writes it, without needing the ``tensorboard`` package."""
    import tensorflow as tf

    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    counts, edges = np.histogram(values, bins=bins)
    buckets = np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
    metadata = _internals.summary_metadata("histograms", "tensor")
    tf.summary.write(tag, tf.constant(buckets), step=step, metadata=metadata)
