"""Stateful streaming sessions (Triton's sequence extension): chunked equals whole, isolation,
batching across sequences, eviction, the session cap and the 400s for unknown or ended ones."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from keras_gates.serving import SchedulerConfig, ServerConfig, create_app
from tests.reference import SERVING_ATOL
from tests.serving_models import ServerThread, make_rnn_model, run_direct
from tests.waiting import wait_until

ATOL = SERVING_ATOL  # tests/reference.py says why
UNITS = 8


def whole(path, x: np.ndarray, cell: str) -> dict[str, np.ndarray]:
    feeds = {"x": x, "lengths": np.array([x.shape[1]], np.int32)}
    feeds["rnn.h_in"] = np.zeros((1, UNITS), np.float32)
    if cell == "lstm":
        feeds["rnn.c_in"] = np.zeros((1, UNITS), np.float32)
    return run_direct(path, feeds)


def chunk_body(x: np.ndarray, seq_id, start=False, end=False, **extra) -> dict:
    params = {"sequence_id": seq_id, "sequence_start": start, "sequence_end": end}
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return {"inputs": [tensor], "parameters": params, **extra}


def outputs_of(doc: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in doc["outputs"]}


def split(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1], axis=1)


async def stream(client: httpx.AsyncClient, model: str, seq_id, chunks) -> list[dict]:
    """Send one sequence chunk by chunk (in order); returns the decoded outputs of each chunk."""
    results = []
    for i, chunk in enumerate(chunks):
        payload = chunk_body(chunk, seq_id, start=i == 0, end=i == len(chunks) - 1)
        response = await client.post(f"/v2/models/{model}/infer", json=payload)
        assert response.status_code == 200, response.text[:300]
        results.append(outputs_of(response.json()))
    return results


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    make_rnn_model(root / "lstm" / "1" / "model.onnx", streaming=True, units=UNITS, seed=21)
    make_rnn_model(root / "gru" / "1" / "model.onnx", cell="gru", streaming=True, units=UNITS)
    make_rnn_model(root / "plain" / "1" / "model.onnx", units=UNITS)
    return root


@pytest.fixture(scope="module")
def server(repo):
    config = ServerConfig(
        scheduler=SchedulerConfig(max_batch_size=16, max_queue_delay_ms=20, max_sessions=64)
    )
    with ServerThread(create_app(repo, config)) as running:
        yield running


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chunked_equals_whole_with_tritonclient(server, repo, cell):
    import tritonclient.http as triton

    x = np.random.default_rng(5).standard_normal((1, 11, 3)).astype(np.float32)
    expected = whole(repo / cell / "1" / "model.onnx", x, cell)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        steps, last = [], None
        chunks = split(x, [3, 4, 1, 3])
        for i, chunk in enumerate(chunks):
            inp = triton.InferInput("x", list(chunk.shape), "FP32")
            inp.set_data_from_numpy(chunk)
            result = client.infer(
                cell,
                [inp],
                sequence_id=f"{cell}-stream",
                sequence_start=i == 0,
                sequence_end=i == len(chunks) - 1,
            )
            assert result.as_numpy("rnn.h_out") is None  # state stays on the server
            steps.append(result.as_numpy("y_steps"))
            last = result.as_numpy("y")
    finally:
        client.close()
    np.testing.assert_allclose(np.concatenate(steps, axis=1), expected["y_steps"], atol=ATOL)
    np.testing.assert_allclose(last, expected["y"], atol=ATOL)


def test_sessions_are_isolated_and_batched_together(server, repo):
    rng = np.random.default_rng(6)
    sequences = {
        seq_id: rng.standard_normal((1, int(rng.integers(6, 12)), 3)).astype(np.float32)
        for seq_id in range(101, 109)
    }

    async def scenario():
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(
                    stream(client, "lstm", s, split(x, [2, 3, x.shape[1] - 5]))
                    for s, x in sequences.items()
                )
            )

    before = _batches(server.url)
    results = asyncio.run(scenario())
    after = _batches(server.url)
    grew = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert max(size for size, count in grew.items() if count) > 1, grew
    for (seq_id, x), chunks in zip(sequences.items(), results, strict=True):
        expected = whole(repo / "lstm" / "1" / "model.onnx", x, "lstm")
        got = np.concatenate([c["y_steps"] for c in chunks], axis=1)
        np.testing.assert_allclose(got, expected["y_steps"], atol=ATOL, err_msg=str(seq_id))
        np.testing.assert_allclose(chunks[-1]["y"], expected["y"], atol=ATOL)


def _batches(url: str) -> dict[int, int]:
    stats = httpx.get(f"{url}/v2/models/lstm/stats").json()["model_stats"][0]
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


def test_restart_resets_state(server, repo):
    x = np.random.default_rng(7).standard_normal((1, 4, 3)).astype(np.float32)
    expected = whole(repo / "lstm" / "1" / "model.onnx", x, "lstm")
    with httpx.Client(base_url=server.url) as client:
        for _ in range(2):  # the second start on the same open id starts from zeros again
            response = client.post("/v2/models/lstm/infer", json=chunk_body(x, 555, start=True))
            np.testing.assert_allclose(outputs_of(response.json())["y"], expected["y"], atol=ATOL)
        client.post("/v2/models/lstm/infer", json=chunk_body(x, 555, end=True))


def test_unknown_ended_and_invalid_sequences_get_400(server):
    x = np.ones((1, 2, 3), np.float32)
    with httpx.Client(base_url=server.url) as client:

        def post(model="lstm", **kwargs):
            return client.post(f"/v2/models/{model}/infer", json=chunk_body(**kwargs))

        response = post(x=x, seq_id=9001)
        assert response.status_code == 400
        assert "9001 is not open: it was never started" in response.json()["error"]
        assert "sequence_start=true" in response.json()["error"]
        assert post(x=x, seq_id="s-1", start=True, end=True).status_code == 200
        response = post(x=x, seq_id="s-1")
        assert response.status_code == 400 and "has ended" in response.json()["error"]
        response = post(model="plain", x=x, seq_id=3, start=True)
        assert response.status_code == 400 and "keeps no state" in response.json()["error"]
        response = post(x=np.ones((2, 2, 3), np.float32), seq_id=4, start=True)
        assert response.status_code == 400 and "batch of 2, expected 1" in response.json()["error"]
        state = {"name": "rnn.h_in", "datatype": "FP32", "shape": [1, UNITS], "data": [0] * UNITS}
        payload = chunk_body(x, 5, start=True)
        payload["inputs"].append(state)
        response = client.post("/v2/models/lstm/infer", json=payload)
        assert response.status_code == 400 and "state the server keeps" in response.json()["error"]
        response = client.post(
            "/v2/models/lstm/infer",
            json={**chunk_body(x, 6), "parameters": {"sequence_id": 1.5, "sequence_start": True}},
        )
        assert response.status_code == 400 and "integer or a string" in response.json()["error"]
        assert post(x=x, seq_id=7, start=True, end=True).status_code == 200  # still serving


def test_idle_sessions_are_evicted(repo):
    config = ServerConfig(
        scheduler=SchedulerConfig(session_idle_timeout_s=0.3), sweep_interval_s=0.05
    )
    x = np.ones((1, 2, 3), np.float32)
    with ServerThread(create_app(repo, config)) as server, httpx.Client(base_url=server.url) as c:
        assert c.post("/v2/models/gru/infer", json=chunk_body(x, 1, start=True)).status_code == 200
        assert 'keras_gates_active_sessions{model="gru",version="1"} 1.0' in c.get("/metrics").text
        # the server's sweeper task evicts it (the timing itself is unit-tested with an injected
        # clock in test_serving_units.py): poll the gauge rather than sleep a fixed time
        gone = 'keras_gates_active_sessions{model="gru",version="1"} 0.0'
        wait_until(lambda: gone in c.get("/metrics").text, message="the session is still open")
        response = c.post("/v2/models/gru/infer", json=chunk_body(x, 1))
        assert response.status_code == 400
        assert "was evicted after 0.3 s idle" in response.json()["error"]
        assert 'keras_gates_active_sessions{model="gru",version="1"} 0.0' in c.get("/metrics").text


def test_session_cap_answers_503(repo):
    config = ServerConfig(scheduler=SchedulerConfig(max_sessions=2))
    x = np.ones((1, 2, 3), np.float32)
    with ServerThread(create_app(repo, config)) as server, httpx.Client(base_url=server.url) as c:

        def post(seq_id, **flags):
            return c.post("/v2/models/lstm/infer", json=chunk_body(x, seq_id, **flags))

        assert post("a", start=True).status_code == 200
        assert post("b", start=True).status_code == 200
        refused = post("c", start=True)
        assert refused.status_code == 503
        assert "Too many open sequences: 2 (the limit, --max-sessions 2)" in refused.json()["error"]
        assert post("a", end=True).status_code == 200
        assert post("c", start=True).status_code == 200
        assert post("b").status_code == 200  # the others were not disturbed
