"""Dynamic batching: variable-length requests padded into one call give the unbatched answers,
generic models batch same-shape requests, the bounded queue answers 503, shutdown is graceful."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from keras_gates.serving import (
    ModelRepository,
    ModelRuntime,
    SchedulerConfig,
    ServerConfig,
    create_app,
)
from tests.reference import SERVING_ATOL
from tests.serving_models import ServerThread, make_dense_model, make_rnn_model, run_direct
from tests.waiting import async_wait_until, refuses_connections, wait_until

ATOL = SERVING_ATOL  # tests/reference.py says why


def body(x: np.ndarray, lengths: np.ndarray | None = None) -> dict:
    inputs = [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    if lengths is not None:
        inputs.append(
            {
                "name": "lengths",
                "datatype": "INT32",
                "shape": [len(lengths)],
                "data": lengths.tolist(),
            }
        )
    return {"inputs": inputs}


def outputs_of(doc: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in doc["outputs"]}


async def post_all(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def batch_sizes(url: str, model: str) -> dict[int, int]:
    stats = httpx.get(f"{url}/v2/models/{model}/stats").json()["model_stats"][0]
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    make_rnn_model(root / "lstm" / "1" / "model.onnx", units=16, features=4, seed=11)
    make_rnn_model(root / "gru" / "1" / "model.onnx", cell="gru", units=8, features=4, seed=12)
    make_rnn_model(root / "stream" / "1" / "model.onnx", streaming=True, features=4, seed=13)
    make_dense_model(root / "dense" / "1" / "model.onnx")
    return root


@pytest.mark.parametrize("model", ["lstm", "gru", "stream"])
def test_variable_lengths_batched_equal_unbatched(repo, model):
    config = ServerConfig(scheduler=SchedulerConfig(max_batch_size=16, max_queue_delay_ms=50))
    rng = np.random.default_rng(1)
    cases = []
    for i in range(36):
        rows, steps = 1 + (i % 3 == 0), int(rng.integers(2, 13))
        x = rng.standard_normal((rows, steps, 4)).astype(np.float32)
        lengths = rng.integers(1, steps + 1, rows).astype(np.int32) if i % 4 == 1 else None
        cases.append((x, lengths))
    with ServerThread(create_app(repo, config)) as server:
        responses = asyncio.run(
            post_all(server.url, f"/v2/models/{model}/infer", [body(x, n) for x, n in cases])
        )
        sizes = batch_sizes(server.url, model)
    assert max(sizes) > 1, f"no batch formed: {sizes}"
    assert sum(rows * count for rows, count in sizes.items()) == sum(len(x) for x, _ in cases)
    path = repo / model / "1" / "model.onnx"
    for (x, lengths), response in zip(cases, responses, strict=True):
        assert response.status_code == 200, response.text[:300]
        got = outputs_of(response.json())
        feeds = {"x": x, "lengths": lengths if lengths is not None else np.full(len(x), x.shape[1])}
        feeds["lengths"] = feeds["lengths"].astype(np.int32)
        if model == "stream":
            feeds.update({n: np.zeros((len(x), 8), np.float32) for n in ("rnn.h_in", "rnn.c_in")})
        expected = run_direct(path, feeds)
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name].shape == value.shape  # per-step outputs cut back to this request
            np.testing.assert_allclose(got[name], value, atol=ATOL, err_msg=name)


def test_generic_model_batches_same_shapes(repo):
    config = ServerConfig(scheduler=SchedulerConfig(max_batch_size=8, max_queue_delay_ms=50))
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1 + i % 2, 4)).astype(np.float32) for i in range(24)]
    with ServerThread(create_app(repo, config)) as server:
        responses = asyncio.run(
            post_all(server.url, "/v2/models/dense/infer", [body(x) for x in xs])
        )
        sizes = batch_sizes(server.url, "dense")
    assert max(sizes) > 1
    for x, response in zip(xs, responses, strict=True):
        expected = run_direct(repo / "dense" / "1" / "model.onnx", {"x": x})["y"]
        np.testing.assert_allclose(outputs_of(response.json())["y"], expected, atol=ATOL)


def test_max_batch_size_one_turns_batching_off(repo):
    config = ServerConfig(scheduler=SchedulerConfig(max_batch_size=1, max_queue_delay_ms=50))
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 3 + i % 5, 4)).astype(np.float32) for i in range(16)]
    with ServerThread(create_app(repo, config)) as server:
        responses = asyncio.run(post_all(server.url, "/v2/models/gru/infer", [body(x) for x in xs]))
        assert httpx.get(f"{server.url}/v2/models/gru/config").json()["max_batch_size"] == 1
        sizes = batch_sizes(server.url, "gru")
    assert all(r.status_code == 200 for r in responses)
    assert sizes == {1: 16}


class Gate:
    """Wraps a runtime's ``run`` so a test can hold the worker thread inside the model call."""

    def __init__(self, runtime: ModelRuntime):
        self.entered = threading.Event()
        self.release = threading.Event()
        self._run = runtime.run
        runtime.run = self

    def __call__(self, feeds):
        self.entered.set()
        assert self.release.wait(30), "gate never released"
        return self._run(feeds)


def gated_app(repo, **scheduler):
    runtime = ModelRuntime(repo / "gru" / "1" / "model.onnx", "gru")
    gate = Gate(runtime)
    config = ServerConfig(scheduler=SchedulerConfig(**scheduler))
    return create_app(ModelRepository({"gru": {"1": runtime}}), config), gate


def test_full_queue_answers_503_then_recovers(repo):
    app, gate = gated_app(repo, max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0)
    x = np.ones((1, 3, 4), np.float32)
    with ServerThread(app) as server:

        async def scenario():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                first = asyncio.create_task(client.post("/v2/models/gru/infer", json=body(x)))
                await asyncio.to_thread(gate.entered.wait, 30)  # the worker holds request 1
                queued = [
                    asyncio.create_task(client.post("/v2/models/gru/infer", json=body(x)))
                    for _ in range(2)
                ]
                full = 'keras_gates_queue_size{model="gru",version="1"} 2.0'

                async def both_queued() -> bool:  # behind the held request
                    return full in (await client.get("/metrics")).text

                await async_wait_until(both_queued, message="two requests queued")
                rejected = await client.post("/v2/models/gru/infer", json=body(x))
                gate.release.set()
                return rejected, await first, await asyncio.gather(*queued)

        rejected, first, queued = asyncio.run(scenario())
        assert rejected.status_code == 503
        assert (
            "overloaded" in rejected.json()["error"]
            and "--max-queue-size 2" in rejected.json()["error"]
        )
        assert first.status_code == 200 and all(r.status_code == 200 for r in queued)
        again = httpx.post(f"{server.url}/v2/models/gru/infer", json=body(x))
        assert again.status_code == 200
        failures = [
            line
            for line in httpx.get(f"{server.url}/metrics").text.splitlines()
            if line.startswith("keras_gates_request_failure_total{") and 'code="503"' in line
        ]
        assert failures and failures[0].endswith(" 1.0")


def test_graceful_shutdown_finishes_in_flight_requests(repo):
    app, gate = gated_app(repo, max_batch_size=4)
    x = np.ones((1, 3, 4), np.float32)
    server = ServerThread(app).__enter__()
    result = {}

    def request():
        result["response"] = httpx.post(
            f"{server.url}/v2/models/gru/infer", json=body(x), timeout=60
        )

    client = threading.Thread(target=request)
    client.start()
    assert gate.entered.wait(30)
    stopper = threading.Thread(target=server.stop)
    stopper.start()  # uvicorn stops accepting, waits for the in-flight request
    wait_until(lambda: refuses_connections(server.port), message="the server still accepts")
    assert stopper.is_alive()
    gate.release.set()
    client.join(30)
    stopper.join(30)
    assert result["response"].status_code == 200
    expected = run_direct(
        repo / "gru" / "1" / "model.onnx", {"x": x, "lengths": np.array([3], np.int32)}
    )["y"]
    np.testing.assert_allclose(outputs_of(result["response"].json())["y"], expected, atol=ATOL)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live")


def test_inputs_merged_step_by_step_are_padded_together(tmp_path):
    """Two sequence inputs merged step by step (``aligned_with``) and one lengths input: the
    scheduler pads both (the signature's rule, which Triton's model.py applies too:
    test_triton_real.py). Requests of different lengths queued behind a held call share the next
    call, padded to the longest, and each gets its answer alone."""
    from keras_gates.serving.scheduler import ModelScheduler
    from keras_gates.signature import read_signature
    from tests.serving_models import make_aligned_model

    path = make_aligned_model(tmp_path / "aligned.onnx", seed=21)
    assert read_signature(path).padded_inputs == {"a", "b"}
    runtime = ModelRuntime(path, "aligned")
    shapes = []
    run = runtime.run
    runtime.run = lambda feeds: shapes.append(feeds["b"].shape) or run(feeds)
    gate = Gate(runtime)  # outermost: the worker waits before the call is recorded
    scheduler = ModelScheduler(runtime, SchedulerConfig(max_batch_size=16, max_queue_delay_ms=0))
    assert scheduler.can_pad and scheduler.padded_inputs == {"a", "b"}
    rng = np.random.default_rng(5)
    requests = []
    for rows, steps in ((1, 2), (2, 6), (1, 4), (2, 3)):
        inputs = {
            "a": rng.standard_normal((rows, steps, 3)).astype(np.float32),
            "b": rng.standard_normal((rows, steps, 2)).astype(np.float32),
        }
        if rows == 2:  # a padded row inside the request too
            inputs["lengths"] = np.array([steps, 1], np.int32)
        requests.append(inputs)
    held = {"a": np.ones((1, 1, 3), np.float32), "b": np.ones((1, 1, 2), np.float32)}

    async def scenario():
        first = asyncio.create_task(scheduler.infer(dict(held)))
        await asyncio.to_thread(gate.entered.wait, 30)  # the worker holds the first call
        tasks = [asyncio.create_task(scheduler.infer(dict(r))) for r in requests]
        for _ in range(1000):  # each task queues its request at its first step
            if scheduler.queued == len(requests):
                break
            await asyncio.sleep(0)
        gate.release.set()
        return await first, await asyncio.gather(*tasks)

    try:
        _, results = asyncio.run(scenario())
    finally:
        scheduler.close()
    assert shapes == [(1, 1, 2), (6, 6, 2)]  # the four requests: one call, padded to 6 steps
    for inputs, got in zip(requests, results, strict=True):
        rows, steps = inputs["a"].shape[:2]
        lengths = inputs.get("lengths", np.full(rows, steps, np.int32))
        want = run_direct(path, {**inputs, "lengths": lengths})  # the request alone
        assert got["y_steps"].shape == (rows, steps, 2)
        for name in ("y", "y_steps"):
            np.testing.assert_allclose(got[name], want[name], atol=ATOL, err_msg=name)


class FakeClock:
    """The batcher's clock, moved only by the test: arrival gaps and deadlines are what it says."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def held_batcher(max_batch_size: int, delay_s: float):
    """A Batcher whose model call doubles ``x``, records the rows of each call and holds the
    first call until ``release`` is set."""
    from keras_gates.serving.batcher import Batcher, BatchLayout

    calls, entered, release = [], threading.Event(), threading.Event()

    def run(feeds):
        calls.append([float(v) for v in feeds["x"][:, 0]])
        entered.set()
        assert release.wait(30), "never released"
        return {"y": feeds["x"] * 2}

    clock = FakeClock()
    layout = BatchLayout(max_batch_size=max_batch_size)
    batcher = Batcher(run, layout, max_queue_delay_s=delay_s, clock=clock, name="held")
    return batcher, calls, entered, release, clock


async def forming(batcher, requests: int) -> None:
    """Wait until the worker waits to fill a batch of ``requests`` requests."""
    message = f"the worker forming a batch of {requests} requests"
    await asyncio.to_thread(wait_until, lambda: batcher.forming == requests, 30, 0.005, message)


def one_row(value: float, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((1, width), value, np.float32)}


def test_busy_model_gathers_requests_arriving_one_at_a_time():
    """Requests that reach a busy model one at a time (as gRPC hands them over) share a call:
    the batch waits for the next arrival instead of running the one request it has."""
    batcher, calls, entered, release, clock = held_batcher(max_batch_size=3, delay_s=1000.0)

    async def scenario():
        first = batcher.submit(one_row(1), 1, None)
        await asyncio.to_thread(entered.wait, 30)  # the model is busy with request 1
        second = batcher.submit(one_row(2), 1, None)  # arrives while it runs
        release.set()
        await forming(batcher, 1)
        futures = [first, second]
        for value in (3, 4):  # one at a time, each after the worker waits for more
            clock.now += 0.001
            futures.append(batcher.submit(one_row(value), 1, None))
            if value == 3:
                await forming(batcher, 2)
        return await asyncio.wait_for(asyncio.gather(*futures), 30)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close()
    assert calls == [[1.0], [2.0, 3.0, 4.0]]  # the three arrivals met in one full batch
    for value, result in zip((1, 2, 3, 4), results, strict=True):
        np.testing.assert_array_equal(result["y"], np.full((1, 2), 2 * value, np.float32))


def test_idle_model_runs_a_lone_request_at_once():
    """An idle model does not wait for company, however long the queue delay: a lone client's
    latency does not grow (a wait would outlast the test's hang bound)."""
    batcher, calls, _, release, _ = held_batcher(max_batch_size=8, delay_s=1e6)
    release.set()

    async def scenario():
        answers = []
        for value in (1, 2, 3):  # a closed-loop client: the next request after the answer
            answers.append(await asyncio.wait_for(batcher.submit(one_row(value), 1, None), 30))
        return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        batcher.close()
    assert calls == [[1.0], [2.0], [3.0]]
    assert [float(a["y"][0, 0]) for a in answers] == [2.0, 4.0, 6.0]


def test_lone_client_whose_next_request_beats_the_worker_back_does_not_wait(monkeypatch):
    """The interleaving a loaded machine makes: the answer reaches the client, whose next request
    is queued before the worker thread comes back for it. That request did not arrive while the
    model ran, so it runs at once instead of waiting (here forever) for company."""
    batcher, calls, _, release, _ = held_batcher(max_batch_size=8, delay_s=1e6)
    release.set()
    back, took = threading.Event(), batcher._next_batch

    def next_batch():
        assert back.wait(30), "the worker was never let back"
        return took()

    monkeypatch.setattr(batcher, "_next_batch", next_batch)  # from the worker's next pass on

    async def scenario():
        answers = [await asyncio.wait_for(batcher.submit(one_row(1), 1, None), 30)]
        following = batcher.submit(one_row(2), 1, None)  # queued; the worker is held
        back.set()
        answers.append(await asyncio.wait_for(following, 30))
        return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        back.set()
        batcher.close()
    assert calls == [[1.0], [2.0]]
    assert [float(a["y"][0, 0]) for a in answers] == [2.0, 4.0]


def test_busy_model_waits_at_most_the_queue_delay():
    """A busy model's batch runs with what it has once max_queue_delay has passed since the model
    became free; a request of another shape arriving then gets its own call."""
    batcher, calls, entered, release, clock = held_batcher(max_batch_size=4, delay_s=0.2)

    async def scenario():
        first = batcher.submit(one_row(1), 1, None)
        await asyncio.to_thread(entered.wait, 30)
        second = batcher.submit(one_row(2), 1, None)
        release.set()
        await forming(batcher, 1)
        clock.now += 1.0  # past the delay: the next wake-up runs the batch as it is
        other = batcher.submit(one_row(3, width=3), 1, None)  # wakes it; cannot share the call
        clock.now += 1.0  # and the delay of the batch that the other one starts passes too
        return await asyncio.wait_for(asyncio.gather(first, second, other), 30)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close()
    assert calls == [[1.0], [2.0], [3.0]]
    assert results[2]["y"].shape == (1, 3)


def test_lengths_the_server_fills_are_checked_where_they_can_fail():
    """The server skips the feed checks on the lengths it fills itself only where they cannot
    fail: a masked input's holes and rows shorter than its ``min_length`` are still refused."""
    import types

    from keras_gates.serving.errors import BadRequest
    from keras_gates.serving.runtime import TensorInfo
    from keras_gates.serving.scheduler import ModelScheduler
    from keras_gates.signature import TensorSpec

    x = TensorSpec("x", "sequence", "float32", (None, None, 2), min_length=2, mask_value=0.0)
    lengths = TensorSpec("lengths", "lengths", "int32", (None,), sequence_input="x")
    runtime = types.SimpleNamespace(
        name="masked",
        version="1",
        inputs=(TensorInfo(x, "FP32"), TensorInfo(lengths, "INT32")),
        outputs=(TensorInfo(TensorSpec("y", "output", "float32", (None, 1)), "FP32"),),
        run=lambda feeds: {"y": feeds["lengths"].astype(np.float32).reshape(-1, 1)},
    )
    scheduler = ModelScheduler(runtime, SchedulerConfig(max_batch_size=4, max_queue_delay_ms=0))
    holes = np.ones((1, 3, 2), np.float32)
    holes[0, 0] = 0.0  # a masked step before unmasked ones
    try:
        with pytest.raises(BadRequest, match=r"masked steps \(equal to 0\) before unmasked"):
            asyncio.run(scheduler.infer({"x": holes}))
        with pytest.raises(BadRequest, match="expected at least 2 steps per row"):
            asyncio.run(scheduler.infer({"x": np.ones((1, 1, 2), np.float32)}))
        answer = asyncio.run(scheduler.infer({"x": np.ones((1, 3, 2), np.float32)}))
    finally:
        scheduler.close()
    np.testing.assert_array_equal(answer["y"], [[3.0]])  # the lengths the server filled
