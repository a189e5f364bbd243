"""``keras-gates inspect`` end to end, and ``write_report``."""

import base64
import json
import re

import keras
import matplotlib.image
import numpy as np
import pytest

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.cli import main
from keras_gates.inspect import write_report
from keras_gates.inspect.report import IMAGE_KINDS, MODEL_IMAGE_KINDS
from keras_gates.inspect.summary import LAYER_KEYS, SUMMARY_FORMAT, SUMMARY_KEYS

STEPS, FEATURES = 5, 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved model (GatedLSTM + Bidirectional GatedGRU, no Masking) and a padded batch."""
    keras.utils.set_random_seed(4)
    root = tmp_path_factory.mktemp("inspect")
    inputs = keras.Input((STEPS, FEATURES))
    hidden = GatedLSTM(4, return_sequences=True, name="lstm")(inputs)
    outputs = keras.layers.Bidirectional(GatedGRU(3), name="bi")(hidden)
    keras.Model(inputs, outputs).save(root / "model.keras")
    plain = keras.Sequential([keras.Input((STEPS, FEATURES)), keras.layers.Dense(2)])
    plain.save(root / "dense.keras")
    x = np.random.default_rng(0).normal(size=(3, STEPS, FEATURES)).astype("float32")
    x[2, 3:] = -1.0  # padding, given to the CLI as --mask-value -1
    np.save(root / "x.npy", x)
    np.save(root / "wrong.npy", np.zeros((3, STEPS, FEATURES + 1), "float32"))
    np.savez(root / "short.npz", in_word=np.zeros((3, STEPS - 1), bool))
    np.savez(root / "strings.npz", fine=np.ones((3, STEPS)), odd=np.full((3, STEPS), "a"))
    np.save(root / "labels.npy", np.zeros((3, STEPS), bool))
    (root / "labels.txt").write_text("not numpy")
    return root


@pytest.mark.slow  # a whole report with its plots
def test_cli_writes_a_complete_report(files, capsys):
    out = files / "report"
    code = main(
        ["inspect", str(files / "model.keras"), "--input", str(files / "x.npy")]
        + ["--mask-value", "-1", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "bi/backward" in printed and "forget" in printed and "index.html" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert tuple(summary) == SUMMARY_KEYS and summary["format"] == SUMMARY_FORMAT
    assert list(summary["layers"]) == ["lstm", "bi/forward", "bi/backward"]
    for layer in summary["layers"].values():
        assert tuple(layer) == LAYER_KEYS
        assert layer["valid_steps"] == 3 * STEPS - 2  # the two -1 steps are not counted
        for gate in layer["gates"]:
            entry = layer["saturation"][gate]
            assert 0.0 <= entry["left_saturated"] <= 1.0
            assert len(entry["per_unit"]["right_saturated"]) == layer["units"]
    assert summary["input"] == {"shape": [3, STEPS, FEATURES], "mask_value": -1.0}

    images = summary["images"]
    assert len(images) == 3 * len(IMAGE_KINDS) + len(MODEL_IMAGE_KINDS)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(i["file"] for i in images)
    page = (out / "index.html").read_text()
    for image in images:
        pixels = matplotlib.image.imread(out / image["file"])
        assert pixels.shape[:2] == (image["height"], image["width"])
        assert image["width"] >= 400 and image["height"] >= 300
        assert base64.b64encode((out / image["file"]).read_bytes()).decode() in page
        assert f'data-file="{image["file"]}"' in page
    assert page.count("<img ") == len(images)


@pytest.mark.slow  # a whole report with its plots
def test_write_report_returns_paths(files, tmp_path):
    model = keras.saving.load_model(files / "model.keras")
    paths = write_report(model, np.load(files / "x.npy"), tmp_path / "r", mask_value=-1.0)
    assert paths["html"] == str(tmp_path / "r" / "index.html")
    assert len(paths["images"]) == 3 * len(IMAGE_KINDS) + len(MODEL_IMAGE_KINDS)
    assert all((tmp_path / "r" / p).is_file() for p in [paths["summary"], *paths["images"]])
    plain = write_report(model, np.load(files / "x.npy"), tmp_path / "s", horizon=False)
    assert len(plain["images"]) == 3 * (len(IMAGE_KINDS) - 2)  # no retention, no half-life
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["gradient_flow"] is None and summary["layers"]["lstm"]["horizon"] is None
    assert "Memory horizon" not in (tmp_path / "s" / "index.html").read_text()


@pytest.mark.parametrize(
    ("model", "samples", "extra", "message"),
    [
        ("missing.keras", "x.npy", [], "MODEL '.*missing.keras' does not exist"),
        ("model.keras", "missing.npy", [], "--input '.*missing.npy' does not exist"),
        ("dense.keras", "x.npy", [], "has no gated layer"),
        ("model.keras", "wrong.npy", [], r"shape \(3, 5, 4\).*expected \(any, 5, 3\)"),
        ("model.keras", "x.npy", ["--sample", "3"], r"`sample`=3: expected an index in \[0, 3\)"),
        ("model.keras", "x.npy", ["--low", "0.95"], "low < high"),
        ("model.keras", "x.npy", ["--fraction", "2"], r"`fraction`, expected a number in \(0, 1\)"),
    ],
)
def test_cli_bad_input_exits_non_zero_with_a_message(files, capsys, model, samples, extra, message):
    out = files / "bad"
    args = [str(files / model), "--input", str(files / samples), "--out", str(out), *extra]
    code = main(["inspect", *args])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("keras-gates inspect: error: ")
    assert re.search(message, err), err
    assert not out.exists()


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("short.npz", r"shape \(3, 4\) for concept 'in_word': expected \(3, 5\), one label per"),
        ("strings.npz", "dtype <U1 for concept 'odd': expected bool or 0/1"),
        ("labels.npy", "single .npy array, not a .npz archive"),
        ("labels.txt", r"labels\.txt' is not a readable \.npy/\.npz file"),
        ("missing.npz", "does not exist"),
    ],
)
def test_cli_refuses_bad_labels_with_the_array_and_shape(files, capsys, labels, message):
    out = files / "bad"
    args = [str(files / "model.keras"), "--input", str(files / "x.npy"), "--out", str(out)]
    assert main(["inspect", *args, "--labels", str(files / labels), "--no-horizon"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("keras-gates inspect: error: --labels ")
    assert re.search(message, err), err
    assert not out.exists()
