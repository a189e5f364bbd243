"""Export errors: a clear message, a non-zero CLI exit, and no file left behind."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gates import GatedLSTM
from keras_gates.cli import main
from keras_gates.export import ValidationError, handlers, to_onnx


@keras.saving.register_keras_serializable(package="keras_gates_tests")
class Igamma(keras.layers.Layer):
    """A layer tf2onnx cannot convert (no ONNX Igamma)."""

    def call(self, x):
        return tf.math.igamma(tf.abs(x) + 1.0, tf.abs(x) + 1.0)


def _small(*extra):
    return keras.Sequential([keras.Input((None, 3)), *extra, GatedLSTM(4)])


def _cli(*argv):
    return main(["export", *map(str, argv)])


def test_unsupported_layer_names_layer_and_class(tmp_path, capsys):
    source = tmp_path / "odd.keras"
    _small(Igamma(name="odd")).save(source)
    assert _cli(source, "-o", tmp_path / "odd.onnx") == 1
    err = capsys.readouterr().err
    assert "keras-gates export: error:" in err
    assert "layer 'odd' (Igamma)" in err and "'Igamma'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.keras"]


def test_wrapped_gated_layer_names_the_wrapper(tmp_path):
    model = keras.Sequential(
        [keras.Input((None, 4, 3)), keras.layers.TimeDistributed(GatedLSTM(3), name="td")]
    )
    with pytest.raises(ValueError, match=r"Layer 'td' \(TimeDistributed\) wraps a gated layer"):
        to_onnx(model, tmp_path / "td.onnx", print_fn=None)
    assert not list(tmp_path.iterdir())


def test_unmappable_activation(tmp_path):
    model = keras.Sequential([keras.Input((None, 3)), GatedLSTM(4, activation="gelu", name="g")])
    with pytest.raises(ValueError, match=r"'g'.*`activation`.*'gelu'"):
        to_onnx(model, tmp_path / "g.onnx", print_fn=None)


def test_unreadable_model_file(tmp_path, capsys):
    source = tmp_path / "broken.keras"
    source.write_bytes(b"not a zip archive")
    assert _cli(source, "-o", tmp_path / "out.onnx") == 1
    assert "Could not read the Keras model" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def test_missing_model_file(tmp_path, capsys):
    assert _cli(tmp_path / "nope.keras", "-o", tmp_path / "out.onnx") == 1
    assert "does not exist" in capsys.readouterr().err


def test_missing_output_directory(tmp_path, capsys):
    source = tmp_path / "m.keras"
    _small().save(source)
    assert _cli(source, "-o", tmp_path / "missing" / "out.onnx") == 1
    err = capsys.readouterr().err
    assert "directory" in err and "missing" in err
    assert not (tmp_path / "missing").exists()


def test_validation_failure_from_perturbed_weight(tmp_path, capsys, monkeypatch):
    source = tmp_path / "m.keras"
    _small().save(source)
    original = handlers.LSTMHandler.direction_weights

    def perturbed(self, layer):
        weights = original(self, layer)
        weights.W = weights.W.copy()
        weights.W[0, 0] += 0.5  # one input-gate kernel entry
        return weights

    monkeypatch.setattr(handlers.LSTMHandler, "direction_weights", perturbed)
    with pytest.raises(ValidationError, match="above the tolerance") as info:
        to_onnx(keras.saving.load_model(source), tmp_path / "direct.onnx", print_fn=None)
    assert "NO" in str(info.value)  # the table marks the failing rows
    assert _cli(source, "-o", tmp_path / "out.onnx") == 1
    assert "differs from Keras" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_loose_tolerance_accepts_perturbation_and_records_it(tmp_path, monkeypatch):
    original = handlers.LSTMHandler.direction_weights

    def perturbed(self, layer):
        weights = original(self, layer)
        weights.B = weights.B + np.float32(1e-3)
        return weights

    monkeypatch.setattr(handlers.LSTMHandler, "direction_weights", perturbed)
    result = to_onnx(_small(), tmp_path / "ok.onnx", atol=0.1, print_fn=None)
    assert result.validation.passed and 0 < result.validation.max_error < 0.1


def test_invalid_opset(tmp_path):
    with pytest.raises(ValueError, match=r"`opset`.*got 99"):
        to_onnx(_small(), tmp_path / "x.onnx", opset=99, print_fn=None)


def test_user_samples_are_validated(tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    result = to_onnx(_small(), tmp_path / "s.onnx", samples=[x, x[:1, :3]], print_fn=None)
    full = [(r.batch, r.time) for r in result.validation.rows if not r.padded]
    assert full == [(2, 4), (1, 3)]
    assert any(r.padded == ("input",) for r in result.validation.rows)


def test_fixed_time_retry_failing_too_raises_the_dynamic_time_error(tmp_path, monkeypatch):
    from keras_gates.export import cutting

    def trace(model, streaming, opset, dynamic_time):
        if dynamic_time:
            raise TypeError("the dynamic-time trace failed")
        raise RuntimeError("the fixed-time trace failed")

    monkeypatch.setattr(cutting, "convert_traced", trace)
    with pytest.raises(TypeError, match="dynamic-time trace failed") as info:
        to_onnx(_small(), tmp_path / "x.onnx", print_fn=None)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "fixed-time trace failed" in str(info.value.__cause__)
    assert not list(tmp_path.iterdir())


def test_fixed_time_retry_is_used_when_the_dynamic_trace_fails(tmp_path, monkeypatch):
    from keras_gates.export import cutting

    original, calls = cutting.convert_traced, []

    def trace(model, streaming, opset, dynamic_time):
        calls.append(dynamic_time)
        if dynamic_time:
            raise TypeError("needs its static time axis")
        return original(model, streaming, opset, dynamic_time)

    monkeypatch.setattr(cutting, "convert_traced", trace)
    result = to_onnx(_small(), tmp_path / "x.onnx", print_fn=None)
    assert calls == [True, False] and result.validation.passed


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.npy", None, "--samples .*missing.npy' does not exist"),
        ("text.npy", b"not numpy", "--samples .*text.npy' is not a readable .npy/.npz file"),
        ("pickled.npy", "object", "--samples .*pickled.npy' is not a readable .npy/.npz file"),
        ("wrong.npy", "rank", r"samples\[0\] for input .* has shape \(2, 3\), expected \(batch,"),
    ],
)
def test_bad_samples_file_is_refused_before_anything_is_written(
    tmp_path, capsys, name, content, message
):
    source = tmp_path / "m.keras"
    _small().save(source)
    path = tmp_path / name
    if content == "object":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif content == "rank":
        np.save(path, np.zeros((2, 3), np.float32))
    elif content is not None:
        path.write_bytes(content)
    assert _cli(source, "-o", tmp_path / "out.onnx", "--samples", path) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out.onnx").exists()
