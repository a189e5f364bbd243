"""The Open Inference Protocol over gRPC: the stock ``tritonclient.grpc`` client (and the
protocol's generated stub) against a ``keras-gates serve --grpc-port`` subprocess, next to the HTTP
transport of the same process."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from keras_gates.serving.grpc_codec import CONTENTS_FIELD
from tests.serving_fixtures import ATOL, lstm_reference, sample, zero_state
from tests.serving_models import V2_TYPES, free_port, run_direct, serve_process

MAX_SESSIONS = 32


@pytest.fixture(scope="module")
def served(repo):
    """``(http address, grpc address)`` of one server with both transports."""
    port = free_port()
    flags = ["--grpc-port", str(port), "--max-batch-size", "8", "--max-queue-delay-ms", "5"]
    flags += ["--max-body-mb", "0.0625", "--max-sessions", str(MAX_SESSIONS), "--no-request-log"]
    with serve_process(repo, *flags) as (url, _):
        yield url.removeprefix("http://"), f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(served):
    with tg.InferenceServerClient(served[1]) as c:
        yield c


@pytest.fixture(scope="module")
def http_client(served):
    c = th.InferenceServerClient(served[0])
    yield c
    c.close()


def inputs(module, **arrays):
    """``InferInput`` s of ``module`` (tritonclient.grpc or .http) from numpy arrays."""
    found = []
    for name, array in arrays.items():
        datatype = "INT32" if array.dtype == np.int32 else "FP32"
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        found.append(tensor)
    return found


def chunks_of(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1], axis=1)


def whole_lstm(repo, x: np.ndarray, version: str = "1") -> dict[str, np.ndarray]:
    return lstm_reference(repo, x, version)


def grpc_error(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


# ---- every RPC -------------------------------------------------------------------------------
def test_health_metadata_config_index(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "keras-gates" and "sequence" in meta.extensions
    assert client.is_model_ready("lstm") and client.is_model_ready("lstm", "2")
    model = client.get_model_metadata("lstm")
    assert list(model.versions) == ["1", "2"] and model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs][:2] == [
        ("x", "FP32", [-1, -1, 3]),
        ("lengths", "INT32", [-1]),
    ]
    assert list(client.get_model_metadata("lstm", "2").versions) == ["2"]
    config = client.get_model_config("lstm").config
    assert (config.name, config.max_batch_size, list(config.input[0].dims)) == ("lstm", 8, [-1, 3])
    assert config.sequence_batching.oldest.max_candidate_sequences == 8
    assert config.sequence_batching.max_sequence_idle_microseconds == 60_000_000
    assert [s.input_name for s in config.sequence_batching.state] == ["rnn.h_in", "rnn.c_in"]
    assert client.get_model_config("dense").config.dynamic_batching.max_queue_delay_microseconds
    index = {(m.name, m.version, m.state) for m in client.get_model_repository_index().models}
    assert {("lstm", "1", "READY"), ("lstm", "2", "READY"), ("gru", "1", "READY")} <= index


def test_statistics_count_both_transports(client, http_client):
    x = sample((1, 4, 3), seed=1)

    def count() -> int:
        stats = client.get_inference_statistics("lstm", "1").model_stats[0]
        return stats.inference_stats.success.count

    before = count()
    client.infer("lstm", inputs(tg, x=x), model_version="1")
    http_client.infer("lstm", inputs(th, x=x), model_version="1")
    assert count() == before + 2
    every = client.get_inference_statistics().model_stats  # no name: every model and version
    assert {(s.name, s.version) for s in every} >= {("lstm", "1"), ("lstm", "2"), ("dense", "1")}
    assert len(client.get_inference_statistics("lstm").model_stats) == 2


def test_unknown_model_is_not_found_everywhere(client):
    for call in (client.get_model_metadata, client.get_model_config, client.is_model_ready):
        err = grpc_error(call, "nope")
        assert err.status() == "StatusCode.NOT_FOUND"
        assert (
            "Unknown model 'nope'; available models: dense, gru, identity, lstm." in err.message()
        )
    err = grpc_error(client.get_inference_statistics, "lstm", "9")
    assert err.status() == "StatusCode.NOT_FOUND" and "available versions: 1, 2" in err.message()


# ---- inference -------------------------------------------------------------------------------
def test_infer_is_bit_equal_to_http_and_onnxruntime(client, http_client, repo):
    x = sample((3, 6, 3), seed=2)
    lengths = np.array([6, 4, 2], np.int32)
    expected = run_direct(
        repo / "lstm" / "1" / "model.onnx", {"x": x, "lengths": lengths, **zero_state(3)}
    )
    over_grpc = client.infer(
        "lstm", inputs(tg, x=x, lengths=lengths), model_version="1", request_id="abc"
    )
    over_http = http_client.infer("lstm", inputs(th, x=x, lengths=lengths), model_version="1")
    assert over_grpc.get_response().id == "abc"
    assert over_grpc.get_response().raw_output_contents  # raw bytes, not typed contents
    for name in ("y", "y_steps", "rnn.h_out", "rnn.c_out"):
        got = over_grpc.as_numpy(name)
        assert got.dtype == expected[name].dtype and got.shape == expected[name].shape
        np.testing.assert_array_equal(got, expected[name], err_msg=name)
        np.testing.assert_array_equal(got, over_http.as_numpy(name), err_msg=name)
    only = client.infer("lstm", inputs(tg, x=x), outputs=[tg.InferRequestedOutput("y")])
    assert [o.name for o in only.get_response().outputs] == ["y"]


def test_every_datatype_in_raw_and_typed_contents(client, served):
    arrays = {}
    for i, datatype in enumerate(V2_TYPES):
        values = np.arange(6).reshape(2, 3) + i
        dtype = tg.triton_to_np_dtype(datatype)
        arrays[datatype] = (
            (values % 2).astype(dtype) if datatype == "BOOL" else values.astype(dtype)
        )
    tensors = []
    for datatype, array in arrays.items():
        tensors.append(tg.InferInput(f"in_{datatype}", [2, 3], datatype))
        tensors[-1].set_data_from_numpy(array)
    result = client.infer("identity", tensors)
    for datatype, array in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got.dtype == array.dtype and np.array_equal(got, array), datatype
    # The same through typed contents (FP16 has none: it must travel raw, so it is left out).
    request = service_pb2.ModelInferRequest(model_name="identity")
    for datatype, array in arrays.items():
        if datatype == "FP16":
            continue
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[2, 3])
        getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    with grpc.insecure_channel(served[1]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "missing input 'in_FP16'" in caught.value.details()
        fp16 = arrays["FP16"]
        request.inputs.add(name="in_FP16", datatype="FP16", shape=[2, 3])
        request.inputs[-1].contents.fp32_contents.extend(fp16.ravel().tolist())
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert "datatype FP16, so its values go in raw_input_contents" in caught.value.details()
        del request.inputs[-1]
        request.inputs.add(name="in_FP16", datatype="FP16", shape=[2, 3])
        request.raw_input_contents.extend([b""] * (len(request.inputs) - 1) + [fp16.tobytes()])
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert "has values both in contents and in raw_input_contents" in caught.value.details()


def test_typed_contents_are_served(served, repo):
    x = sample((2, 5, 3), seed=4)
    request = service_pb2.ModelInferRequest(model_name="lstm", model_version="1", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    lengths = request.inputs.add(name="lengths", datatype="INT32", shape=[2])
    lengths.contents.int_contents.extend([5, 3])
    with grpc.insecure_channel(served[1]) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert response.id == "typed" and response.model_version == "1"
    names = [o.name for o in response.outputs]
    y = np.frombuffer(response.raw_output_contents[names.index("y")], np.float32).reshape(2, 2)
    expected = run_direct(
        repo / "lstm" / "1" / "model.onnx",
        {"x": x, "lengths": np.array([5, 3], np.int32), **zero_state(2)},
    )
    np.testing.assert_array_equal(y, expected["y"])


# ---- errors ----------------------------------------------------------------------------------
X = np.ones((1, 2, 3), np.float32)
BAD = {  # name: (inputs, parameters, gRPC status, message fragment)
    "missing input": ({"lengths": np.array([2], np.int32)}, {}, "INVALID_ARGUMENT", "input 'x'"),
    "wrong shape": ({"x": np.ones((1, 2, 5), np.float32)}, {}, "INVALID_ARGUMENT", "[-1, -1, 3]"),
    "NaN": ({"x": X * np.nan}, {}, "INVALID_ARGUMENT", "NaN or Inf"),
    "lengths too long": (
        {"x": X, "lengths": np.array([3], np.int32)},
        {},
        "INVALID_ARGUMENT",
        "expected values between 1 and the time length 2",
    ),
    "unknown sequence": (
        {"x": X},
        {"sequence_id": 991},
        "INVALID_ARGUMENT",
        "Sequence 991 is not open: it was never started",
    ),
    "oversize": ({"x": np.ones((1, 10000, 3), np.float32)}, {}, "RESOURCE_EXHAUSTED", "max"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_requests_get_status_codes_and_http_messages(client, http_client, repo, case):
    arrays, parameters, status, fragment = BAD[case]
    err = grpc_error(client.infer, "lstm", inputs(tg, **arrays), model_version="1", **parameters)
    assert err.status() == f"StatusCode.{status}" and fragment in err.message()
    if status != "RESOURCE_EXHAUSTED":  # same message as over HTTP
        with pytest.raises(InferenceServerException) as over_http:
            http_client.infer("lstm", inputs(th, **arrays), model_version="1", **parameters)
        assert over_http.value.message() == err.message()
    x = sample((1, 3, 3), seed=5)  # the server goes on serving
    got = client.infer("lstm", inputs(tg, x=x), model_version="1").as_numpy("y")
    np.testing.assert_allclose(got, whole_lstm(repo, x)["y"], atol=ATOL)


def test_session_table_full_is_unavailable(client):
    x = sample((1, 1, 3), seed=6)
    ids = range(5000, 5000 + MAX_SESSIONS)
    for seq_id in ids:
        client.infer(
            "lstm", inputs(tg, x=x), model_version="2", sequence_id=seq_id, sequence_start=True
        )
    try:
        err = grpc_error(
            client.infer,
            "lstm",
            inputs(tg, x=x),
            model_version="2",
            sequence_id=1,
            sequence_start=True,
        )
        assert err.status() == "StatusCode.UNAVAILABLE"
        assert f"Too many open sequences: {MAX_SESSIONS}" in err.message()
    finally:
        for seq_id in ids:
            client.infer(
                "lstm", inputs(tg, x=x), model_version="2", sequence_id=seq_id, sequence_end=True
            )


# ---- streaming -------------------------------------------------------------------------------
class Stream:
    """A ``start_stream`` of a fresh client whose callback fills a queue."""

    def __init__(self, address: str):
        self.client = tg.InferenceServerClient(address)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def send(self, model: str, x: np.ndarray, **kwargs) -> None:
        self.client.async_stream_infer(model, inputs(tg, x=x), **kwargs)

    def get(self, timeout: float = 30):
        return self.results.get(timeout=timeout)

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def send_sequence(stream: Stream, model: str, seq_id, parts: list[np.ndarray], **kwargs) -> None:
    for i, part in enumerate(parts):
        stream.send(
            model,
            part,
            sequence_id=seq_id,
            sequence_start=i == 0,
            sequence_end=i == len(parts) - 1,
            request_id=f"{seq_id}/{i}",
            **kwargs,
        )


def test_streamed_sequence_equals_whole(served, repo):
    x = sample((1, 12, 3), seed=7)
    stream = Stream(served[1])
    try:
        send_sequence(stream, "lstm", "whole-1", chunks_of(x, [5, 4, 3]), model_version="1")
        answers = [stream.get() for _ in range(3)]
    finally:
        stream.close()
    assert [e for _, e in answers] == [None] * 3
    assert [r.get_response().id for r, _ in answers] == ["whole-1/0", "whole-1/1", "whole-1/2"]
    expected = whole_lstm(repo, x)
    got = np.concatenate([r.as_numpy("y_steps") for r, _ in answers], axis=1)
    np.testing.assert_allclose(got, expected["y_steps"], atol=ATOL)
    np.testing.assert_allclose(answers[-1][0].as_numpy("y"), expected["y"], atol=ATOL)
    assert answers[-1][0].as_numpy("rnn.h_out") is None  # the state stays on the server


def test_sequence_moves_between_transports(served, client, http_client, repo):
    x = sample((1, 9, 3), seed=8)
    parts = chunks_of(x, [3, 3, 3])
    stream = Stream(served[1])
    try:
        stream.send("lstm", parts[0], model_version="1", sequence_id=77, sequence_start=True)
        first, error = stream.get()
        assert error is None
    finally:
        stream.close()
    second = http_client.infer("lstm", inputs(th, x=parts[1]), model_version="1", sequence_id=77)
    third = client.infer(
        "lstm", inputs(tg, x=parts[2]), model_version="1", sequence_id=77, sequence_end=True
    )
    steps = [first.as_numpy("y_steps"), second.as_numpy("y_steps"), third.as_numpy("y_steps")]
    np.testing.assert_allclose(np.concatenate(steps, 1), whole_lstm(repo, x)["y_steps"], atol=ATOL)


def test_stream_survives_bad_messages(served, repo):
    x = sample((1, 4, 3), seed=9)
    stream = Stream(served[1])
    try:
        stream.send("lstm", x[:, :2], model_version="1", sequence_id=31, sequence_start=True)
        assert stream.get()[1] is None  # in order: the bad message below must not be first
        stream.send("lstm", np.ones((1, 2, 5), np.float32), sequence_id=31, model_version="1")
        stream.send("nope", x[:, 2:], request_id="lost")
        stream.send("lstm", x[:, 2:], model_version="1", sequence_id=31, sequence_end=True)
        answers = [stream.get() for _ in range(3)]
    finally:
        stream.close()
    errors = sorted(str(e) for _, e in answers if e is not None)
    assert len(errors) == 2
    assert "Input 'x' of model 'lstm' has shape [1, 2, 5], expected [-1, -1, 3]" in errors[0]
    assert "Unknown model 'nope'" in errors[1]
    last = next(r for r, e in answers if e is None)
    np.testing.assert_allclose(last.as_numpy("y"), whole_lstm(repo, x)["y"], atol=ATOL)


def test_many_sequences_on_concurrent_streams_stay_apart(served, client, repo):
    rng = np.random.default_rng(10)
    clients, per_client = 4, 4
    sequences = {
        (c, s): rng.standard_normal((1, int(rng.integers(6, 12)), 3)).astype(np.float32)
        for c in range(clients)
        for s in range(per_client)
    }
    answers: dict[int, list] = {}

    def drive(c: int) -> None:
        stream = Stream(served[1])
        try:
            mine = {k: v for k, v in sequences.items() if k[0] == c}
            for k, x in mine.items():  # all chunks of all sequences sent without waiting
                parts = chunks_of(x, [2, 3, x.shape[1] - 5])
                send_sequence(stream, "lstm", f"{k[0]}-{k[1]}", parts, model_version="1")
            answers[c] = [stream.get() for _ in range(3 * len(mine))]
        finally:
            stream.close()

    def executions() -> tuple[int, int]:
        stats = client.get_inference_statistics("lstm", "1").model_stats[0]
        return stats.inference_count, stats.execution_count

    before = executions()
    threads = [threading.Thread(target=drive, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    after = executions()
    assert after[1] - before[1] < after[0] - before[0]  # some batches held several sequences
    for c in range(clients):
        by_id: dict[str, list] = {}
        for result, error in answers[c]:
            assert error is None, error
            seq, part = result.get_response().id.split("/")
            by_id.setdefault(seq, []).append((int(part), result))
        for s in range(per_client):
            parts = sorted(by_id[f"{c}-{s}"], key=lambda p: p[0])
            assert [p for p, _ in parts] == [0, 1, 2]  # one sequence's answers come in order
            got = np.concatenate([r.as_numpy("y_steps") for _, r in parts], axis=1)
            expected = whole_lstm(repo, sequences[(c, s)])
            np.testing.assert_allclose(got, expected["y_steps"], atol=ATOL, err_msg=f"{c}-{s}")


def test_graceful_shutdown_with_streams_open(tmp_path, repo):
    port = free_port()
    with serve_process(repo, "--grpc-port", str(port), "--no-request-log") as (_, proc):
        x = sample((1, 40, 3), seed=11)
        streams = [Stream(f"127.0.0.1:{port}") for _ in range(2)]
        try:
            for i, stream in enumerate(streams):
                stream.send("lstm", x[:, :1], sequence_id=900 + i, sequence_start=True)
                assert stream.get()[1] is None
            for step in range(1, 40):  # messages in flight when SIGTERM arrives
                streams[0].send("lstm", x[:, step : step + 1], sequence_id=900)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == -signal.SIGTERM  # uvicorn re-raises it once shut down
            assert time.monotonic() - started < 10  # open streams did not hold the 30 s grace
            assert "Application shutdown complete." in proc.stdout.read().decode()
            for stream in streams:
                answered = []
                while True:
                    result, error = stream.get(10)
                    if error is not None:
                        break
                    answered.append(result)
                assert "StatusCode.UNAVAILABLE" in str(error)
                assert "The server is shutting down" in str(error)
                for got in answered:  # whatever was answered before the end is right
                    assert got.as_numpy("y").shape == (1, 2)
        finally:
            for stream in streams:
                stream.close()


def test_grpc_port_in_use_is_refused(repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "keras_gates.cli", "serve", str(repo)]
        command += ["--port", str(free_port()), "--grpc-port", str(port)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert (
        f"error: Received --grpc-port {port}, but 127.0.0.1:{port} cannot be bound" in done.stderr
    )
    assert "pick a free port" in done.stderr


def test_http_and_grpc_requests_share_a_batch(repo):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from keras_gates.serving import ModelRepository, ModelRuntime, create_app
    from keras_gates.serving.grpc_server import GrpcConfig
    from tests.serving_models import ServerThread

    runtime = ModelRuntime(repo / "dense" / "1" / "model.onnx", "dense")
    batches, release = [], threading.Event()
    run = runtime.run

    def gated_run(feeds):  # the first batch waits, so that the others queue up behind it
        batches.append(feeds["x"][:, 0].tolist())
        release.wait(30)
        return run(feeds)

    runtime.run = gated_run
    port = free_port()
    app = create_app(ModelRepository({"dense": {"1": runtime}}), grpc=GrpcConfig(port))
    scheduler = app.state.served.schedulers[("dense", "1")]

    def over_http(value: float) -> int:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]}
        return httpx.post(f"{server.url}/v2/models/dense/infer", json=body, timeout=60).status_code

    with ServerThread(app) as server, ThreadPoolExecutor(4) as pool:
        with tg.InferenceServerClient(f"127.0.0.1:{port}") as client:
            pending = [pool.submit(over_http, 0.0)]
            while not batches:
                time.sleep(0.01)
            pending += [pool.submit(over_http, float(value)) for value in (1, 2, 3)]
            answers: queue.Queue = queue.Queue()
            for value in (4, 5, 6):
                x = np.full((1, 4), value, np.float32)
                client.async_infer(
                    "dense", inputs(tg, x=x), lambda result, error: answers.put(error)
                )
            deadline = time.monotonic() + 30
            while scheduler.queued < 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            assert [p.result(60) for p in pending] == [200] * 4
            assert [answers.get(timeout=30) for _ in range(3)] == [None] * 3
    assert len(batches) == 2 and batches[0] == [0.0]
    assert sorted(batches[1]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # one batch, both transports
