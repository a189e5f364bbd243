"""GateMonitor inside model.fit: history keys and TensorBoard event files."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.callbacks import MONITORED, GateMonitor
from keras_gates.inspect import inspect_model

STEPS, FEATURES = 6, 3


def _model() -> keras.Model:
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((STEPS, FEATURES)),
            keras.layers.Masking(0.0),
            keras.layers.Bidirectional(GatedLSTM(4, return_sequences=True), name="bi"),
            GatedGRU(3, name="gru"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, STEPS, FEATURES)).astype("float32")
    x[::2, 4:] = 0.0
    return x, rng.normal(size=(16, 1)).astype("float32")


def _events(log_dir: str) -> dict[str, list]:
    """``{tag: [(step, plugin name, value array), ...]}`` read back from the event files."""
    found = {}
    paths = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    assert paths, f"no event file in {log_dir}"
    for path in paths:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                entry = (event.step, plugin, tf.make_ndarray(value.tensor))
                found.setdefault(value.tag, []).append(entry)
    return found


@pytest.mark.slow  # training with TensorBoard writing
def test_history_and_tensorboard(tmp_path):
    model = _model()
    x, y = _data()
    monitor = GateMonitor(x[:4], log_dir=tmp_path / "tb")
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[monitor])

    keys = {
        f"gates/{layer}/{gate}/{stat}"
        for layer in ("bi/forward", "bi/backward")
        for gate in ("input", "forget", "candidate", "output")
        for stat in MONITORED
    }
    keys |= {
        f"gates/gru/{gate}/{stat}"
        for gate in ("update", "reset", "candidate")
        for stat in MONITORED
    }
    assert keys <= set(history.history)
    assert len(keys) == 2 * 4 * 5 + 3 * 5
    assert monitor.epochs == [0, 1]
    for key in keys:
        assert len(history.history[key]) == 2
        assert all(np.isfinite(history.history[key]))
    # The last logged values are those of the trained model on the probe.
    final_summary = inspect_model(model, x[:4])["summary"]
    final = final_summary["layers"]
    forget = final["bi/forward"]["saturation"]["forget"]
    assert history.history["gates/bi/forward/forget/mean"][-1] == pytest.approx(forget["mean"])
    # The memory horizon: median half-life and gradient reach per layer, the input's reach.
    for name in ("median_half_life", "median_e_lag", "gradient_reach"):
        for layer in ("bi/forward", "bi/backward", "gru"):
            assert len(history.history[f"gates/{layer}/{name}"]) == 2
    half = final["gru"]["horizon"]["half_life"]["median"]
    assert history.history["gates/gru/median_half_life"][-1] == half
    reach = final_summary["gradient_flow"]["input"]["reach"]
    assert history.history["gates/input_gradient_reach"][-1] == reach
    radius = final["gru"]["weights"]["update"]["spectral_radius"]
    assert history.history["gates/gru/update/spectral_radius"][-1] == pytest.approx(radius)
    # Fractions are fractions; training moved the gates.
    assert 0.0 <= history.history["gates/gru/reset/right_saturated"][-1] <= 1.0
    first, last = history.history["gates/gru/update/mean"]
    assert first != last

    events = _events(str(tmp_path / "tb"))
    assert {f"{key}" for key in keys} <= set(events)
    scalar = events["gates/gru/update/right_saturated"]
    assert [(step, plugin) for step, plugin, _ in scalar] == [(0, "scalars"), (1, "scalars")]
    want = history.history["gates/gru/update/right_saturated"]
    np.testing.assert_allclose([v for _, _, v in scalar], want, rtol=1e-6)
    step, plugin, buckets = events["gates/bi/backward/forget/activations"][-1]
    assert (step, plugin, buckets.shape[1]) == (1, "histograms", 3)
    # Every valid activation of the probe is counted: 4 samples, 2 of them with 2 padded steps.
    assert buckets[:, 2].sum() == (4 * STEPS - 2 * 2) * 4
    _, _, per_unit = events["gates/bi/backward/forget/left_saturated_per_unit"][0]
    assert per_unit[:, 2].sum() == 4  # one value per unit
    _, plugin, half_lives = events["gates/gru/half_life_per_unit"][-1]
    assert plugin == "histograms" and half_lives[:, 2].sum() == 3
    assert [step for step, _, _ in events["gates/gru/median_half_life"]] == [0, 1]


def test_every_n_epochs_and_selected_stats():
    model = _model()
    x, y = _data()
    labels = {"positive_x0": x[:4, :, 0] > 0}
    monitor = GateMonitor(
        x[:4], every=2, stats=("right_saturated",), prefix="g", horizon=(), labels=labels
    )
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[monitor])
    assert monitor.epochs == [1]
    concept = monitor.summaries[0]["concepts"]["positive_x0"]
    assert history.history["g/concepts/positive_x0/best_score"] == [concept["top"][0]["score"]]
    every = [v for per in concept["scores"].values() for unit in per.values() for v in unit]
    assert abs(concept["top"][0]["score"] - 0.5) == max(abs(v - 0.5) for v in every)
    assert len(history.history["loss"]) == 3
    assert len(history.history["g/gru/update/right_saturated"]) == 1
    assert not any(key.endswith(("/mean", "_half_life", "_reach")) for key in history.history)
    assert len(monitor.summaries) == 1 and "gru" in monitor.summaries[0]["layers"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="`every`.*got 0"):
        GateMonitor(np.zeros((1, STEPS, FEATURES)), every=0)
    with pytest.raises(ValueError, match="unknown `stats`"):
        GateMonitor(np.zeros((1, STEPS, FEATURES)), stats=("median",))
    with pytest.raises(ValueError, match="unknown `horizon`.*median_half_life"):
        GateMonitor(np.zeros((1, STEPS, FEATURES)), horizon=("half_life",))
    model = _model()
    x, y = _data()
    wrong_probe = GateMonitor(np.zeros((2, STEPS, FEATURES + 1), "float32"))
    with pytest.raises(ValueError, match="does not fit"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[wrong_probe])
    wrong_labels = GateMonitor(x[:2], labels={"short": np.zeros((2, STEPS - 1), bool)})
    with pytest.raises(ValueError, match=r"concept 'short': expected \(2, 6\)"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[wrong_labels])
    dense = keras.Sequential([keras.Input((STEPS, FEATURES)), keras.layers.Dense(1)])
    dense.compile(loss="mse")
    with pytest.raises(ValueError, match="no gated layer"):
        dense.fit(x, x[..., :1], epochs=1, verbose=0, callbacks=[GateMonitor(x[:2])])
