"""A bounded soak of the real ``keras-gates serve`` process: a few thousand requests, a fifth of
them malformed, mixed with streaming sessions. No request is lost, every answer is right, the
server's memory stops growing, and SIGTERM shuts it down cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import numpy as np
import pytest

from tests import children
from tests.reference import SERVING_ATOL
from tests.serving_models import make_rnn_model, serve_process

ATOL = SERVING_ATOL  # tests/reference.py says why
CONCURRENCY = 16
BAD_BODIES = [  # (body, expected status)
    (b'{"inputs": [', 400),
    (b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 2, 1], "data": [0, 0]}]}', 400),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [0, 0]}]}', 400),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 5], "data": [0]}]}', 400),
    (b'{"inputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [0]}]}', 400),
]  # fmt: skip


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("soak")
    make_rnn_model(root / "plain" / "1" / "model.onnx", units=16, features=4, seed=31)
    make_rnn_model(root / "stream" / "1" / "model.onnx", streaming=True, features=4, seed=32)
    args = ("--no-request-log", "--log-level", "warning", "--max-batch-size", "16")
    with serve_process(root, *args) as (url, proc):
        yield root, url, proc


def references(root, cases):
    import onnxruntime as ort

    session = ort.InferenceSession(str(root / "plain" / "1" / "model.onnx"))
    return [
        session.run(["y"], {"x": x, "lengths": np.array([x.shape[1]], np.int32)})[0] for x in cases
    ]


def stream_reference(root, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(root / "stream" / "1" / "model.onnx"))
    zeros = np.zeros((1, 8), np.float32)
    feeds = {"x": x, "lengths": np.array([x.shape[1]], np.int32)}
    return session.run(["y"], {**feeds, "rnn.h_in": zeros, "rnn.c_in": zeros})[0]


def tensor(x):
    return {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}


async def run_phase(url: str, jobs: list) -> list:
    """Run ``jobs`` (coroutine factories taking a client) with CONCURRENCY workers."""
    queue: asyncio.Queue = asyncio.Queue()
    for i, job in enumerate(jobs):
        queue.put_nowait((i, job))
    results: list = [None] * len(jobs)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker():
            while not queue.empty():
                i, job = queue.get_nowait()
                results[i] = await job(client)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return results


def make_jobs(root, rng, count: int, seq_base: int):
    """A shuffled mix: 3/5 plain requests, 1/5 malformed, 1/5 streaming (3 chunks per job)."""
    jobs, checks = [], []
    plain = [
        rng.standard_normal((1, int(rng.integers(2, 12)), 4)).astype(np.float32)
        for _ in range(count * 3 // 5)
    ]
    for x, ref in zip(plain, references(root, plain), strict=True):

        async def job(client, x=x):
            r = await client.post("/v2/models/plain/infer", json={"inputs": [tensor(x)]})
            return r.status_code, r.json()

        jobs.append(job)
        checks.append(("plain", ref))
    for i in range(count // 5):
        body, status = BAD_BODIES[i % len(BAD_BODIES)]

        async def bad(client, body=body):
            r = await client.post("/v2/models/plain/infer", content=body)
            return r.status_code, r.json()

        jobs.append(bad)
        checks.append(("bad", status))
    for i in range(count // 15):  # each streaming job is 3 requests
        x = rng.standard_normal((1, 9, 4)).astype(np.float32)

        async def streamed(client, x=x, seq_id=seq_base + i):
            last = None
            for k, chunk in enumerate(np.split(x, 3, axis=1)):
                params = {"sequence_id": seq_id, "sequence_start": k == 0, "sequence_end": k == 2}
                body = {"inputs": [tensor(chunk)], "parameters": params}
                last = await client.post("/v2/models/stream/infer", json=body)
                if last.status_code != 200:
                    break
            return last.status_code, last.json()

        jobs.append(streamed)
        checks.append(("stream", stream_reference(root, x)))
    order = rng.permutation(len(jobs))
    return [jobs[i] for i in order], [checks[i] for i in order]


def verify(results, checks) -> int:
    requests = 0
    for (status, doc), (kind, expected) in zip(results, checks, strict=True):
        if kind == "bad":
            assert status == expected and doc["error"], doc
            requests += 1
            continue
        assert status == 200, doc
        y = np.array(doc["outputs"][0]["data"], np.float32).reshape(doc["outputs"][0]["shape"])
        np.testing.assert_allclose(y, expected, atol=ATOL)
        requests += 3 if kind == "stream" else 1
    return requests


def counter_total(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_soak_mixed_traffic(served):
    root, url, proc = served
    rng = np.random.default_rng(0)
    sent = 0
    jobs, checks = make_jobs(root, rng, 1000, seq_base=1)  # warm-up phase
    sent += verify(asyncio.run(run_phase(url, jobs)), checks)
    rss_warm = rss_bytes(proc.pid)
    for phase in range(2):
        jobs, checks = make_jobs(root, rng, 1000, seq_base=10_000 * (phase + 1))
        sent += verify(asyncio.run(run_phase(url, jobs)), checks)
    rss_end = rss_bytes(proc.pid)
    assert sent >= 2900
    answered = counter_total(url, "keras_gates_request_success_total")
    answered += counter_total(url, "keras_gates_request_failure_total")
    assert answered == sent, (answered, sent)  # no request lost
    assert (
        'keras_gates_active_sessions{model="stream",version="1"} 0.0'
        in httpx.get(f"{url}/metrics").text
    )
    growth = rss_end - rss_warm
    assert growth < 24 * 2**20, f"server RSS grew by {growth / 2**20:.1f} MiB after warm-up"
    proc.send_signal(signal.SIGTERM)  # uvicorn drains, then re-raises the signal (exit -15)
    assert proc.wait(30) in (0, -signal.SIGTERM)


def test_serving_never_imports_tensorflow():
    code = (
        "import sys, keras_gates.serving, keras_gates.serving.cli;"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    done = children.run([sys.executable, "-c", code], timeout=120, check=False, env=env)
    assert done.returncode == 0, f"importing keras_gates.serving loaded {done.stdout.strip()}"
