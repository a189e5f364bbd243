"""``keras-gates serve`` arguments, model discovery in Triton's layout, request logs, and
``--workers`` (several server processes on one port)."""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import socket
import sys

import httpx
import numpy as np
import pytest

from keras_gates.serving import ModelRepository, NotFound, ServerConfig, create_app, discover
from keras_gates.serving import cli as serve_cli
from tests import children
from tests.serving_models import (
    ServerThread,
    make_dense_model,
    make_rnn_model,
    run_direct,
    serve_process,
)
from tests.waiting import wait_until


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_bind_loopback():
    args = parse("model.onnx")
    assert (args.host, args.port, args.max_batch_size) == ("127.0.0.1", 8000, 32)
    # the flags' defaults are the config dataclasses' (stated once, there)
    assert serve_cli._server_config(args) == ServerConfig()


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--workers, expected a positive integer, got 0"):
        serve_cli.run(parse(str(tmp_path), "--workers", "0"))
    with pytest.raises(ValueError, match="--max-batch-size, expected a positive integer, got 0"):
        serve_cli.run(parse(str(tmp_path), "--max-batch-size", "0"))
    with pytest.raises(ValueError, match="--max-queue-delay-ms, expected a number >= 0, got -1"):
        serve_cli.run(parse(str(tmp_path), "--max-queue-delay-ms", "-1"))
    with pytest.raises(ValueError, match="--repository-poll-secs, expected a number > 0, got 0"):
        serve_cli.run(parse(str(tmp_path), "--repository-poll-secs", "0"))
    with pytest.raises(ValueError, match="--port, expected 1-65535 \\(or 0: any free port\\)"):
        serve_cli.run(parse(str(tmp_path), "--port", "-1"))
    with pytest.raises(ValueError, match="--grpc-port 0 with --workers 2: each worker would"):
        serve_cli.run(parse(str(tmp_path), "--workers", "2", "--grpc-port", "0"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        serve_cli.run(parse(str(tmp_path / "missing.onnx")))
    with pytest.raises(ValueError, match="No models found"):
        serve_cli.run(parse(str(tmp_path)))


def test_triton_layout_discovery(tmp_path):
    make_dense_model(tmp_path / "a" / "1" / "model.onnx")
    make_dense_model(tmp_path / "a" / "10" / "model.onnx", seed=3)
    make_dense_model(tmp_path / "a" / "2" / "model.onnx", seed=2)
    make_dense_model(tmp_path / "b" / "1" / "model.onnx")
    (tmp_path / "a" / "latest").mkdir()  # not a version: ignored
    (tmp_path / "c" / "1").mkdir(parents=True)  # no model.onnx: ignored
    found = discover(tmp_path)
    assert sorted(found) == ["a", "b"] and sorted(found["a"]) == ["1", "10", "2"]
    repository = ModelRepository.load(tmp_path)
    assert repository.versions("a") == ["1", "2", "10"]
    assert repository.resolve("a") == ("a", "10")  # newest by number, not by string
    with pytest.raises(NotFound, match="available versions: 1, 2, 10"):
        repository.resolve("a", "3")
    single = discover(tmp_path / "b" / "1" / "model.onnx")
    assert single == {"model": {"1": tmp_path / "b" / "1" / "model.onnx"}}


def test_request_log_is_one_json_line(tmp_path, caplog):
    path = make_dense_model(tmp_path / "dense.onnx")
    body = {
        "id": "log-1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}],
    }
    with caplog.at_level(logging.INFO, "keras_gates.serving.requests"):
        with ServerThread(create_app(path)) as server:
            assert httpx.post(f"{server.url}/v2/models/dense/infer", json=body).status_code == 200
            assert (
                httpx.post(f"{server.url}/v2/models/dense/infer", content=b"[").status_code == 400
            )
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("requests")]
    assert [r["status"] for r in records] == [200, 400]
    assert records[0]["id"] == "log-1" and records[0]["path"] == "/v2/models/dense/infer"
    assert np.isfinite(records[0]["ms"]) and records[0]["client"] == "127.0.0.1"


def worker_pids(parent: int) -> list[int]:
    """Live ``--workers`` processes of ``parent`` (multiprocessing spawn children)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read()
        except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == parent and state != "Z" and b"spawn_main" in command:
            found.append(int(entry))
    return found


def server_has_read(client: socket.socket) -> bool:
    """Whether the server end of ``client``'s TCP connection has no unread bytes: a process
    accepted it and read what was sent (Linux ``/proc/net/tcp``: its ``rx_queue`` is 0)."""

    def hex_address(address: tuple[str, int]) -> str:
        packed = socket.inet_aton(address[0])[::-1].hex().upper()  # little-endian IPv4
        return f"{packed}:{address[1]:04X}"

    server, peer = hex_address(client.getpeername()), hex_address(client.getsockname())
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == server and fields[2] == peer:
                return int(fields[4].split(":")[1], 16) == 0
    return False


def json_tensor(x: np.ndarray) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}


@pytest.mark.slow
def test_workers_serve_and_shut_down_gracefully(tmp_path):
    path = make_rnn_model(tmp_path / "plain" / "1" / "model.onnx", units=8, features=3, seed=7)
    rng = np.random.default_rng(3)
    cases = [rng.standard_normal((2, t, 3)).astype(np.float32) for t in (4, 7, 11, 5, 9, 6)]
    with serve_process(tmp_path, "--workers", "2", "--no-request-log") as (url, proc):
        assert len(worker_pids(proc.pid)) == 2
        for x in cases:  # a new connection each: either worker may answer
            response = httpx.post(f"{url}/v2/models/plain/infer", json={"inputs": [json_tensor(x)]})
            assert response.status_code == 200, response.text
            expected = run_direct(path, {"x": x, "lengths": np.full(2, x.shape[1], np.int32)})
            got = response.json()["outputs"][0]
            assert got["name"] == "y" and got["shape"] == [2, 2]
            np.testing.assert_allclose(np.reshape(got["data"], (2, 2)), expected["y"], atol=1e-5)
        # A request whose body is still arriving when SIGTERM comes is answered before exit.
        x = cases[0]
        body = json.dumps({"inputs": [json_tensor(x)]}).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = "POST /v2/models/plain/infer HTTP/1.1\r\nHost: test\r\nContent-Type: "
            head += f"application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body[:20])
            # a worker has read the request's headers: the request is in flight
            wait_until(lambda: server_has_read(sock), message="no worker read the request")
            proc.send_signal(signal.SIGTERM)
            # the idle worker exits, the busy one waits for the rest of its request
            wait_until(lambda: len(worker_pids(proc.pid)) == 1, message="both workers still run")
            assert proc.poll() is None
            sock.sendall(body[20:])
            response = http.client.HTTPResponse(sock)
            response.begin()
            doc = json.loads(response.read())
        assert response.status == 200, doc
        expected = run_direct(path, {"x": x, "lengths": np.full(2, x.shape[1], np.int32)})
        np.testing.assert_allclose(np.reshape(doc["outputs"][0]["data"], (2, 2)), expected["y"])
        assert proc.wait(30) == 0 and worker_pids(proc.pid) == []


def test_workers_refuse_streaming_models(tmp_path):
    make_rnn_model(tmp_path / "plain" / "1" / "model.onnx", seed=1)
    make_rnn_model(tmp_path / "stream" / "1" / "model.onnx", streaming=True, seed=2)
    command = [sys.executable, "-m", "keras_gates.cli", "serve", str(tmp_path), "--workers", "2"]
    done = children.run(command, timeout=120, check=False)
    assert done.returncode == 1
    assert "keras-gates serve: error: Received --workers 2" in done.stderr
    assert "streaming models with state inputs: stream/1 (rnn.h_in, rnn.c_in)" in done.stderr
    assert "--workers 1" in done.stderr and "plain" not in done.stderr
