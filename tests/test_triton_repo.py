"""The repository ``write_triton_repo`` writes, on tiny ONNX models (no TensorFlow): both flavours'
configurations as Triton's ``ModelConfig``, and the argument errors. A real Triton loads and serves
them in ``test_triton_real.py``."""

from __future__ import annotations

import sys
import textwrap

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from keras_gates.export.triton import write_triton_repo
from tests import children
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
    files = {p.name for p in (tmp_path / "plain" / "1").iterdir()}
    assert files == {
        "model.onnx",
        "model.py",
        "keras_gates_signature.py",
        "keras_gates_batching.py",
    }
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


def test_python_flavour_checks_feeds_without_keras_gates(models, tmp_path):
    """model.py loads the signature module beside it by path; with keras_gates and onnx
    unimportable it still completes and checks feeds as Predictor and the server do."""
    import keras_gates.batching as batching
    import keras_gates.signature as signature

    folder = write_triton_repo(models["plain"], tmp_path, "plain", backend="python") / "1"
    copy = folder / "keras_gates_signature.py"
    assert copy.read_bytes() == open(signature.__file__, "rb").read()
    batching_copy = folder / "keras_gates_batching.py"  # the layout keras-gates serve batches by
    assert batching_copy.read_bytes() == open(batching.__file__, "rb").read()
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["keras_gates"] = sys.modules["onnx"] = None  # neither is needed
        sys.path.insert(0, {str(folder)!r})  # to import model.py only, not its helper
        import model
        import numpy as np
        import onnxruntime as ort
        module = model._load_module({str(folder)!r}, model.SIGNATURE_MODULE)
        assert "keras_gates_signature" not in sys.modules  # loaded by path, under its own name
        meta = ort.InferenceSession({str(folder / "model.onnx")!r}).get_modelmeta()
        sig = module.Signature.from_json(meta.custom_metadata_map[model.SIGNATURE_KEY])
        feeds = sig.complete_feeds({{"x": np.zeros((2, 4, 3), np.float32)}})
        assert feeds["lengths"].tolist() == [4, 4], feeds
        feeds["lengths"] = np.array([5, 1], np.int32)
        try:
            sig.check_feeds(feeds)
        except module.FeedError as err:
            print(err)
        batching = model._load_module({str(folder)!r}, model.BATCHING_MODULE)
        parts = [{{"x": np.ones((1, 2, 3), np.float32)}}, {{"x": np.ones((2, 4, 3), np.float32)}}]
        assert batching.concat_feeds(parts, sig.padded_inputs)["x"].shape == (3, 4, 3)
        """
    )
    done = children.run([sys.executable, "-c", script], timeout=120)
    assert "expected values between 1 and the time length 4 of input 'x'" in done.stdout


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


def refusing_padding(path, tmp_path):
    """A copy of the model at ``path`` whose signature refuses to pad its input ``x``."""
    import onnx
    from onnx import helper

    from keras_gates.signature import METADATA_KEY, read_signature

    model = onnx.load(str(path))
    signature = read_signature(model).with_refusals({"x": "a 'same' Conv1D sees the padding"})
    del model.metadata_props[:]
    helper.set_model_props(model, {METADATA_KEY: signature.to_json()})
    onnx.save(model, str(tmp_path / "refused.onnx"))
    return tmp_path / "refused.onnx"


def test_ragged_batch_only_where_padding_is_exact(models, tmp_path):
    """The Python flavour lets Triton batch different lengths (model.py pads them) where the
    signature says padding is exact; not for a refused input, a sequence batcher, or the
    onnxruntime backend (which would concatenate ragged inputs into 1-D tensors)."""

    def ragged(config) -> set[str]:
        return {t.name for t in config.input if t.allow_ragged_batch}

    folder = write_triton_repo(models["plain"], tmp_path, "py", backend="python")
    assert ragged(parse(folder)) == {"x", "lengths"}
    assert (folder / "config.pbtxt").read_text().count("allow_ragged_batch: true") == 2
    refused = refusing_padding(models["plain"], tmp_path)
    assert not ragged(parse(write_triton_repo(refused, tmp_path, "refused", backend="python")))
    assert not ragged(parse(write_triton_repo(models["plain"], tmp_path, "ort")))
    stream = write_triton_repo(models["stream"], tmp_path, "stream", backend="python")
    assert not ragged(parse(stream))
    for name in ("refused", "ort", "stream"):
        assert "allow_ragged_batch" not in (tmp_path / name / "config.pbtxt").read_text()
