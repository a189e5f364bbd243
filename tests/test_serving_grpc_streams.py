"""Streams over gRPC (``ModelStreamInfer`` with the stock ``tritonclient.grpc`` client), sequences
across transports, one batch for both transports, and graceful shutdown with streams open."""

from __future__ import annotations

import queue
import signal
import threading

import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th

from tests.serving_fixtures import ATOL, sample
from tests.serving_grpc import (
    Stream,
    chunks_of,
    inputs,
    send_sequence,
    whole_lstm,
)
from tests.serving_models import serve_process
from tests.waiting import wait_until


def test_streamed_sequence_equals_whole(grpc_served, repo):
    x = sample((1, 12, 3), seed=7)
    stream = Stream(grpc_served[1])
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


def test_sequence_moves_between_transports(grpc_served, grpc_client, triton_http, repo):
    x = sample((1, 9, 3), seed=8)
    parts = chunks_of(x, [3, 3, 3])
    stream = Stream(grpc_served[1])
    try:
        stream.send("lstm", parts[0], model_version="1", sequence_id=77, sequence_start=True)
        first, error = stream.get()
        assert error is None
    finally:
        stream.close()
    second = triton_http.infer("lstm", inputs(th, x=parts[1]), model_version="1", sequence_id=77)
    third = grpc_client.infer(
        "lstm", inputs(tg, x=parts[2]), model_version="1", sequence_id=77, sequence_end=True
    )
    steps = [first.as_numpy("y_steps"), second.as_numpy("y_steps"), third.as_numpy("y_steps")]
    np.testing.assert_allclose(np.concatenate(steps, 1), whole_lstm(repo, x)["y_steps"], atol=ATOL)


def test_stream_survives_bad_messages(grpc_served, repo):
    x = sample((1, 4, 3), seed=9)
    stream = Stream(grpc_served[1])
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


def test_many_sequences_on_concurrent_streams_stay_apart(grpc_served, grpc_client, repo):
    rng = np.random.default_rng(10)
    clients, per_client = 4, 4
    sequences = {
        (c, s): rng.standard_normal((1, int(rng.integers(6, 12)), 3)).astype(np.float32)
        for c in range(clients)
        for s in range(per_client)
    }
    answers: dict[int, list] = {}

    def drive(c: int) -> None:
        stream = Stream(grpc_served[1])
        try:
            mine = {k: v for k, v in sequences.items() if k[0] == c}
            for k, x in mine.items():  # all chunks of all sequences sent without waiting
                parts = chunks_of(x, [2, 3, x.shape[1] - 5])
                send_sequence(stream, "lstm", f"{k[0]}-{k[1]}", parts, model_version="1")
            answers[c] = [stream.get() for _ in range(3 * len(mine))]
        finally:
            stream.close()

    def executions() -> tuple[int, int]:
        stats = grpc_client.get_inference_statistics("lstm", "1").model_stats[0]
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
    # A grace far longer than any wait here: if open streams held it, the wait below would fail.
    flags = ("--grpc-port", "0", "--no-request-log", "--graceful-timeout-s", "3600")
    with serve_process(repo, *flags) as served:
        proc = served.proc
        x = sample((1, 40, 3), seed=11)
        streams = [Stream(served.grpc_address) for _ in range(2)]
        try:
            for i, stream in enumerate(streams):
                stream.send("lstm", x[:, :1], sequence_id=900 + i, sequence_start=True)
                assert stream.get()[1] is None
            for step in range(1, 40):  # messages in flight when SIGTERM arrives
                streams[0].send("lstm", x[:, step : step + 1], sequence_id=900)
            proc.send_signal(signal.SIGTERM)
            # uvicorn re-raises it once shut down; open streams did not hold the hour's grace
            assert proc.wait(120) == -signal.SIGTERM
            assert "Application shutdown complete." in served.output.finish()
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
    app = create_app(ModelRepository({"dense": {"1": runtime}}), grpc=GrpcConfig(port=0))
    scheduler = app.state.server.schedulers[("dense", "1")]

    def over_http(value: float) -> int:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]}
        return httpx.post(f"{server.url}/v2/models/dense/infer", json=body, timeout=60).status_code

    with ServerThread(app) as server, ThreadPoolExecutor(4) as pool:
        with tg.InferenceServerClient(f"127.0.0.1:{app.state.grpc.port}") as grpc_client:
            pending = [pool.submit(over_http, 0.0)]
            wait_until(lambda: batches, message="the first request never reached the model")
            pending += [pool.submit(over_http, float(value)) for value in (1, 2, 3)]
            answers: queue.Queue = queue.Queue()
            for value in (4, 5, 6):
                x = np.full((1, 4), value, np.float32)
                grpc_client.async_infer(
                    "dense", inputs(tg, x=x), lambda result, error: answers.put(error)
                )
            wait_until(lambda: scheduler.queued == 6, message=lambda: f"{scheduler.queued} queued")
            release.set()
            assert [p.result(60) for p in pending] == [200] * 4
            assert [answers.get(timeout=30) for _ in range(3)] == [None] * 3
    assert len(batches) == 2 and batches[0] == [0.0]
    assert sorted(batches[1]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # one batch, both transports
