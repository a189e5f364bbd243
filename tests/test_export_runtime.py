"""Predictor, metadata, Triton repository and the `keras-gates export` command."""

from __future__ import annotations

import json
import threading

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.cli import main
from keras_gates.export import Predictor, read_signature, to_onnx, write_triton_repo
from tests.reference import EXPORT_ATOL

ATOL = EXPORT_ATOL  # tests/reference.py says why


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A plain and a streaming export of one small model, plus its .keras file."""
    folder = tmp_path_factory.mktemp("runtime")
    model = keras.Sequential(
        [keras.Input((None, 3)), GatedLSTM(5, return_sequences=True), GatedGRU(4)], name="tiny"
    )
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.get_weights()])
    model.save(folder / "tiny.keras")
    to_onnx(model, folder / "plain.onnx", print_fn=None)
    to_onnx(model, folder / "stream.onnx", streaming=True, print_fn=None)
    return folder, model


def test_metadata(exported):
    folder, _ = exported
    props = {p.key: p.value for p in onnx.load(folder / "plain.onnx").metadata_props}
    assert props["keras_gates.source_model"] == "tiny"
    assert props["keras_gates.version"]
    layout = json.loads(props["keras_gates.gate_layout"])
    lstm = next(v for v in layout.values() if v["op_type"] == "LSTM")
    assert lstm["gate_order"] == ["input", "output", "forget", "candidate"]
    validation = json.loads(props["keras_gates.validation"])
    assert validation["passed"] and validation["atol"] == 1e-5
    signature = read_signature(folder / "plain.onnx")
    assert [t.role for t in signature.inputs] == ["sequence", "lengths"]
    assert signature.lengths_input == "lengths" and not signature.streaming


def test_predictor_reports_provider_and_matches_keras(exported):
    folder, model = exported
    predictor = Predictor(folder / "plain.onnx", device="auto", threads=1)
    assert predictor.provider == "CPUExecutionProvider"  # no CUDA on the test machines
    x = np.random.default_rng(1).normal(size=(3, 6, 3)).astype("float32")
    (name,) = predictor.predict(x)
    np.testing.assert_allclose(predictor.predict(x)[name], np.asarray(model(x)), atol=ATOL)


def test_predictor_feeds_are_what_predict_and_stream_run(exported):
    folder, _ = exported
    predictor = Predictor(folder / "stream.onnx", device="cpu")
    x = np.random.default_rng(2).normal(size=(2, 4, 3)).astype("float32")
    feeds = predictor.feeds(x, lengths=[4, 2])
    assert feeds["lengths"].dtype == np.int32 and feeds["lengths"].tolist() == [4, 2]
    states = predictor.signature.inputs_with("state")
    assert [feeds[t.name].shape for t in states] == [(2, 5), (2, 5), (2, 4)]  # LSTM h, c; GRU h
    assert not any(feeds[t.name].any() for t in states)  # zero state by default
    names = predictor.output_names
    got = dict(zip(names, predictor.session.run(names, feeds)))
    want = predictor.predict(x, lengths=[4, 2])
    assert list(want) == names
    for name in names:
        np.testing.assert_array_equal(got[name], want[name])
    stream = predictor.stream()
    first = stream.step(x[:, :2])
    carried = predictor.feeds(x[:, 2:], states=stream.states)
    run = dict(zip(names, predictor.session.run(names, carried)))
    for name in names:
        np.testing.assert_array_equal(run[name], stream.step(x[:, 2:])[name])
        assert first[name].shape == want[name].shape


def test_predictor_cuda_unavailable_is_an_error(exported):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA; the error path needs a CPU-only onnxruntime")
    with pytest.raises(RuntimeError, match="device='cuda'.*CUDAExecutionProvider"):
        Predictor(exported[0] / "plain.onnx", device="cuda")


def test_predictor_argument_errors(exported):
    path = exported[0] / "plain.onnx"
    with pytest.raises(ValueError, match="`device`"):
        Predictor(path, device="tpu")
    predictor = Predictor(path, device="cpu")
    with pytest.raises(ValueError, match="`lengths`"):
        predictor.predict(np.zeros((2, 4, 3), np.float32), lengths=[4, 9])
    with pytest.raises(ValueError, match="streaming=True"):
        predictor.stream()


def test_predictor_is_thread_safe(exported):
    predictor = Predictor(exported[0] / "plain.onnx", device="cpu", threads=1)
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(2, 5, 3)).astype("float32") for _ in range(8)]
    expected = [predictor.predict(b) for b in batches]
    results = [None] * len(batches)

    def work(i):
        for _ in range(5):
            results[i] = predictor.predict(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def _parse(folder):
    text = (folder / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_triton_repository_plain(exported, tmp_path):
    folder, _ = exported
    written = write_triton_repo(folder / "plain.onnx", tmp_path, "tiny", version=3)
    config = _parse(written)
    proto = onnx.load(written / "3" / "model.onnx")
    inputs = {v.name for v in proto.graph.input}
    outputs = {v.name for v in proto.graph.output}
    assert config.name == "tiny" and config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    assert {i.name for i in config.input} == inputs == {"input", "lengths"}
    assert {o.name for o in config.output} == outputs
    lengths = next(i for i in config.input if i.name == "lengths")
    assert list(lengths.dims) == [1] and list(lengths.reshape.shape) == []
    seq = next(i for i in config.input if i.name == "input")
    assert list(seq.dims) == [-1, 3]


def test_triton_repository_streaming(exported, tmp_path):
    folder, model = exported
    written = write_triton_repo(folder / "stream.onnx", tmp_path, "tiny_stream")
    config = _parse(written)
    batcher = config.sequence_batching
    signature = read_signature(folder / "stream.onnx")
    assert [(s.input_name, s.output_name) for s in batcher.state] == list(signature.state_pairs)
    assert all(s.initial_state[0].zero_data for s in batcher.state)
    assert {c.name for c in batcher.control_input} == {"START", "END", "READY", "CORRID"}
    proto = onnx.load(written / "1" / "model.onnx")
    names = {v.name for v in proto.graph.input}
    assert {c.name for c in batcher.control_input} <= names
    assert not {s.input_name for s in batcher.state} & {i.name for i in config.input}

    # START=1 discards whatever state comes in: same result as a fresh sequence.
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(size=(2, 4, 3)).astype("float32")
    feeds = {"input": x, "lengths": np.array([4, 4], np.int32), "CORRID": np.ones((2, 1), "uint64")}
    for name in ("END", "READY"):
        feeds[name] = np.ones((2, 1), np.float32)
    for spec in signature.inputs_with("state"):
        feeds[spec.name] = np.full((2, spec.shape[1]), 0.7, np.float32)
    out = signature.outputs[0].name
    fresh = session.run([out], {**feeds, "START": np.ones((2, 1), np.float32)})[0]
    carried = session.run([out], {**feeds, "START": np.zeros((2, 1), np.float32)})[0]
    np.testing.assert_allclose(fresh, np.asarray(model(x)), atol=ATOL)
    assert np.abs(carried - fresh).max() > 1e-3
    # The controls are optional: without them the copy behaves like the plain streaming export.
    plain = {k: v for k, v in feeds.items() if k not in ("CORRID", "END", "READY")}
    np.testing.assert_allclose(session.run([out], plain)[0], carried, atol=ATOL)


def test_cli_export_with_triton_repo(exported, tmp_path, capsys):
    folder, _ = exported
    out = tmp_path / "cli.onnx"
    code = main(
        [
            "export",
            str(folder / "tiny.keras"),
            "-o",
            str(out),
            "--streaming",
            "--triton-repo",
            str(tmp_path),
            "--name",
            "tiny",
            "--version",
            "2",
            "--atol",
            "1e-4",
            "--triton-backend",
            "python",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "max_abs_error" in printed and "passed" in printed
    assert read_signature(out).streaming
    assert (tmp_path / "tiny" / "2" / "model.onnx").is_file()
    assert (tmp_path / "tiny" / "2" / "model.py").is_file()
    config = _parse(tmp_path / "tiny")
    assert config.backend == "python" and config.HasField("sequence_batching")
    assert not config.sequence_batching.state  # model.py keeps the state per correlation id


def test_cli_triton_repo_that_is_a_file(exported, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    code = main(
        [
            "export",
            str(exported[0] / "tiny.keras"),
            "-o",
            str(tmp_path / "x.onnx"),
            "--triton-repo",
            str(tmp_path / "taken"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "--triton-repo" in err and "is a file" in err
    assert not (tmp_path / "x.onnx").exists()
