"""The repository ``write_triton_repo`` writes, on tiny ONNX models (no TensorFlow): both flavours'
configurations as Triton's ``ModelConfig``, and the argument errors. A real Triton loads and serves
them in ``test_triton_real.py``."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from keras_gates.export.triton import write_triton_repo
from tests.serving_models import make_dense_model, make_rnn_model


def parse(folder) -> model_config_pb2.ModelConfig:
    text = (folder / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton_repo_models")
    return {
        "plain": make_rnn_model(root / "plain.onnx", seed=1),
        "stream": make_rnn_model(root / "stream.onnx", streaming=True, seed=2),
    }


def test_python_flavour(models, tmp_path):
    plain = parse(write_triton_repo(models["plain"], tmp_path, "plain", backend="python"))
    assert plain.backend == "python" and plain.HasField("dynamic_batching")
    assert (tmp_path / "plain" / "1" / "model.py").is_file()
    lengths = {t.name: t for t in plain.input}["lengths"]
    assert list(lengths.dims) == [1] and lengths.HasField("reshape") and lengths.optional
    folder = write_triton_repo(
        models["stream"], tmp_path, "stream", backend="python", idle_microseconds=2_500_000
    )
    stream = parse(folder)
    batcher = stream.sequence_batching
    assert not batcher.state  # model.py keeps the state per correlation id
    assert [c.name for c in batcher.control_input] == ["START", "END", "READY", "CORRID"]
    assert batcher.max_sequence_idle_microseconds == 2_500_000
    assert stream.parameters["idle_seconds"].string_value == "2.5"
    assert {t.name for t in stream.input} == {"x", "lengths"}
    assert "EXECUTION_ENV_PATH" not in stream.parameters


def test_onnxruntime_flavour_keeps_lengths_required(models, tmp_path):
    config = parse(write_triton_repo(models["stream"], tmp_path, "stream"))
    assert config.backend == "onnxruntime"
    assert not {t.name: t for t in config.input}["lengths"].optional
    assert [s.input_name for s in config.sequence_batching.state] == ["rnn.h_in", "rnn.c_in"]
    assert not (tmp_path / "stream" / "1" / "model.py").exists()


def test_execution_env(models, tmp_path):
    folder = write_triton_repo(
        models["plain"], tmp_path, "plain", backend="python", execution_env="/opt/env"
    )
    assert parse(folder).parameters["EXECUTION_ENV_PATH"].string_value == "/opt/env"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "tensorrt"}, "`backend`"),
        ({"execution_env": "/opt/env"}, "only applies to backend='python'"),
        ({"name": "a b"}, "`name`"),
        ({"version": 0}, "`version`"),
    ],
)
def test_argument_errors(models, tmp_path, kwargs, message):
    kwargs = {"name": "m", **kwargs}
    with pytest.raises(ValueError, match=message):
        write_triton_repo(models["plain"], tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_model_without_signature_is_refused(tmp_path):
    path = make_dense_model(tmp_path / "bare.onnx")
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(ValueError, match="no signature"):
        write_triton_repo(path, repo, "bare", backend="python")
