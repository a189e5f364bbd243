"""Gate statistics, weight summaries, plots and the HTML page on hand-made plain data."""

import base64
import json

import matplotlib.image
import numpy as np
import pytest

from keras_gates.inspect import (
    aggregate_stats,
    layer_stats,
    plot_gate_heatmaps,
    plot_saturation,
    plot_state_trajectories,
    plot_weight_norms,
    render_html,
    saturation_stats,
    save_figure,
    spectral_radius,
    weight_summary,
)
from keras_gates.inspect.stats import activation_range, to_json_list
from keras_gates.inspect.summary import format_table

# Exact fractions of small hand-made sets; float64 sums of a few values.
TOL = 1e-12

# (batch=2, time=3, units=2). The last step of sample 1 is padding: its unit-1 value 0.91 would be
# right-saturated if it were counted.
ACTS = np.array(
    [
        [[0.05, 0.20], [0.50, 0.92], [0.95, 0.99]],
        [[0.00, 0.50], [0.08, 0.50], [0.30, 0.91]],
    ]
)
MASK = np.array([[True, True, True], [True, True, False]])


def test_saturation_matches_hand_computed_fractions():
    stats = saturation_stats(ACTS, MASK)
    # unit 0 valid values 0.05 0.5 0.95 0.0 0.08: three < 0.1, one > 0.9
    # unit 1 valid values 0.2 0.92 0.99 0.5 0.5: none < 0.1, two > 0.9
    np.testing.assert_allclose(stats["left_saturated"], [0.6, 0.0], atol=TOL)
    np.testing.assert_allclose(stats["right_saturated"], [0.2, 0.4], atol=TOL)
    np.testing.assert_allclose(stats["mean"], [0.316, 0.622], atol=TOL)
    # unit 0: squared deviations from 0.316 sum to 0.66212 over 5 steps
    np.testing.assert_allclose(stats["std"][0], np.sqrt(0.66212 / 5), atol=TOL)
    assert stats["steps"] == 5


def test_masked_steps_are_excluded():
    unmasked = saturation_stats(ACTS)
    assert unmasked["steps"] == 6
    np.testing.assert_allclose(unmasked["right_saturated"], [1 / 6, 3 / 6], atol=TOL)
    # Changing a padded value changes nothing once it is masked.
    changed = ACTS.copy()
    changed[1, 2] = [0.0, 0.0]
    for key in ("left_saturated", "right_saturated", "mean", "std"):
        np.testing.assert_array_equal(
            saturation_stats(changed, MASK)[key], saturation_stats(ACTS, MASK)[key]
        )


def test_thresholds_are_configurable_and_relative_to_the_range():
    stats = saturation_stats(ACTS, MASK, low=0.3, high=0.95)
    np.testing.assert_allclose(stats["left_saturated"], [0.6, 0.2], atol=TOL)  # 0.2 < 0.3
    np.testing.assert_allclose(stats["right_saturated"], [0.0, 0.2], atol=TOL)  # 0.99 > 0.95
    tanh_like = np.array([[[-0.9], [-0.5], [0.85], [0.1]]])
    ranged = saturation_stats(tanh_like, value_range=(-1.0, 1.0))  # thresholds -0.8 / 0.8
    np.testing.assert_allclose(ranged["left_saturated"], [0.25], atol=TOL)
    np.testing.assert_allclose(ranged["right_saturated"], [0.25], atol=TOL)
    assert activation_range("tanh") == (-1.0, 1.0)
    assert activation_range(np.tanh) == (-1.0, 1.0)
    assert activation_range("sigmoid") == (0.0, 1.0)


def test_aggregate_pools_units():
    totals = aggregate_stats(saturation_stats(ACTS, MASK))
    values = ACTS[MASK]  # (5, 2)
    assert totals["left_saturated"] == pytest.approx(0.3, abs=TOL)
    assert totals["right_saturated"] == pytest.approx(0.3, abs=TOL)
    assert totals["mean"] == pytest.approx(values.mean(), abs=TOL)
    assert totals["std"] == pytest.approx(values.std(), abs=1e-9)


def test_fully_masked_gives_nan_and_json_null():
    stats = saturation_stats(ACTS, np.zeros((2, 3), bool))
    assert stats["steps"] == 0
    assert np.isnan(stats["mean"]).all()
    assert to_json_list(stats["mean"]) == [None, None]
    assert all(np.isnan(v) for v in aggregate_stats(stats).values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"low": 0.9, "high": 0.1}, "low < high"),
        ({"mask": np.ones((2, 2), bool)}, "expected (batch, time)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        saturation_stats(ACTS, **kwargs)


def test_layer_stats_covers_gates_only():
    trace = {"input": ACTS, "forget": 1.0 - ACTS, "cell": ACTS, "hidden": ACTS, "mask": MASK}
    stats = layer_stats(trace)
    assert list(stats) == ["input", "forget"]
    np.testing.assert_allclose(stats["forget"]["left_saturated"], [0.2, 0.4], atol=TOL)


def test_weight_summary_norms_and_spectral_radius():
    rotation = np.array([[0.0, 2.0], [-2.0, 0.0]])  # eigenvalues +-2i
    triangular = np.array([[0.5, 1.0], [0.0, 0.3]])  # eigenvalues 0.5, 0.3; norm is larger
    weights = {
        "input": {
            "kernel": np.array([[3.0, 4.0]]),
            "recurrent_kernel": rotation,
            "bias": [1, 2, 2],
        },
        "output": {"kernel": np.zeros((1, 2)), "recurrent_kernel": triangular},
    }
    summary = weight_summary(weights)
    assert summary["input"] == pytest.approx(
        {
            "kernel_norm": 5.0,
            "recurrent_kernel_norm": np.sqrt(8.0),
            "bias_norm": 3.0,
            "spectral_radius": 2.0,
        }
    )
    assert summary["output"]["bias_norm"] is None
    assert summary["output"]["spectral_radius"] == pytest.approx(0.5)
    assert spectral_radius(triangular) < np.linalg.norm(triangular, 2)
    with pytest.raises(ValueError, match="square"):
        spectral_radius(np.ones((2, 3)))
    json.dumps(summary)


def _trace():
    rng = np.random.default_rng(0)
    gates = {g: rng.uniform(size=(2, 5, 4)) for g in ("update", "reset")}
    candidate = rng.uniform(-1, 1, size=(2, 5, 4))
    mask = np.array([[True] * 5, [True, True, True, False, False]])
    return {**gates, "candidate": candidate, "hidden": candidate, "mask": mask}


def test_plots_save_as_png_of_the_figure_size(tmp_path):
    trace = _trace()
    stats = layer_stats(trace)
    weights = weight_summary(
        {g: {"kernel": np.eye(4), "recurrent_kernel": np.eye(4)} for g in ("update", "reset")}
    )
    figures = {
        "heat": plot_gate_heatmaps(trace, sample=1),
        "sat": plot_saturation(stats),
        "weights": plot_weight_norms(weights),
        "states": plot_state_trajectories(trace, sample=1, top_k=2),
    }
    for name, fig in figures.items():
        width, height = save_figure(fig, tmp_path / f"{name}.png")
        expected = fig.get_size_inches() * fig.dpi
        assert (width, height) == tuple(int(round(v)) for v in expected)
        assert matplotlib.image.imread(tmp_path / f"{name}.png").shape[:2] == (height, width)
    # The heatmap shows only the 3 valid steps of sample 1.
    assert figures["heat"].axes[0].images[0].get_array().shape == (4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "heat.png",
        "sat.png",
        "states.png",
        "weights.png",
    ]
    with pytest.raises(ValueError, match="`sample`=7"):
        plot_gate_heatmaps(trace, sample=7)


def test_html_embeds_every_image(tmp_path):
    save_figure(plot_saturation(layer_stats(_trace())), tmp_path / "a.png")
    layer = {
        "class": "GatedGRU",
        "units": 4,
        "direction": None,
        "gates": ["update"],
        "valid_steps": 8,
        "total_steps": 10,
        "saturation": {
            "update": {"left_saturated": 0.25, "right_saturated": None, "mean": 0.5, "std": 0.1}
        },
        "weights": {
            "update": weight_summary({"update": {"recurrent_kernel": np.eye(2)}})["update"]
        },
    }
    summary = {
        "model": "m<1>",
        "thresholds": {"low": 0.1, "high": 0.9},
        "input": {"shape": [2, 5, 3], "mask_value": None},
        "layers": {"gru": layer},
        "images": [
            {"file": "a.png", "layer": "gru", "kind": "saturation", "width": 600, "height": 600}
        ],
    }
    page = render_html(summary, tmp_path)
    assert base64.b64encode((tmp_path / "a.png").read_bytes()).decode() in page
    assert 'data-file="a.png"' in page and "m&lt;1&gt;" in page and "n/a" in page
    assert "http" not in page.replace("data:image/png", "")  # nothing external
    table = format_table(summary)
    assert table.splitlines()[1].split() == ["gru", "update", "0.250", "n/a", "0.500", "0.100"]
