"""The model repository extension of ``keras-gates serve``: load and unload without a restart
(in-flight requests finish, open sequences end with a clear error) and the poll mode that picks up
a version folder copied into the repository."""

from __future__ import annotations

import shutil
import threading

import httpx
import numpy as np
import pytest

from keras_gates.serving import ModelRepository, ServerConfig, create_app
from tests.serving_fixtures import ATOL, json_input, outputs_of, sample
from tests.serving_models import ServerThread, make_rnn_model, run_direct, serve_process
from tests.waiting import wait_until


@pytest.fixture()
def small_repo(tmp_path):
    make_rnn_model(tmp_path / "gru" / "1" / "model.onnx", cell="gru", seed=2)
    make_rnn_model(tmp_path / "lstm" / "1" / "model.onnx", streaming=True, seed=3)
    return tmp_path


def infer(client: httpx.Client, model: str, x: np.ndarray, **parameters) -> httpx.Response:
    body = {"inputs": [json_input("x", x)]}
    if parameters:
        body["parameters"] = parameters
    return client.post(f"/v2/models/{model}/infer", json=body)


def reference(path, x: np.ndarray) -> np.ndarray:
    return run_direct(path, {"x": x, "lengths": np.full(len(x), x.shape[1], np.int32)})["y"]


def states(index: list[dict]) -> dict[tuple, str]:
    return {(e["name"], e.get("version")): e.get("state") for e in index}


def test_unload_and_load(small_repo):
    x = sample((1, 4, 3), seed=1)
    with ServerThread(create_app(small_repo)) as server, httpx.Client(base_url=server.url) as c:
        assert c.post("/v2/repository/models/gru/unload").status_code == 200
        gone = infer(c, "gru", x)
        assert gone.status_code == 404
        assert (
            "unloaded" in gone.json()["error"]
            and "/v2/repository/models/gru/load" in (gone.json()["error"])
        )
        index = c.post("/v2/repository/index").json()
        assert states(index)[("gru", "1")] == "UNAVAILABLE"
        assert {
            "name": "gru",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        } in index
        ready = c.post("/v2/repository/index", json={"ready": True}).json()
        assert ("gru", "1") not in states(ready) and ("lstm", "1") in states(ready)
        assert c.post("/v2/repository/index", content=b"[").status_code == 400
        assert c.post("/v2/repository/models/gru/unload").status_code == 200  # again: no-op
        assert c.post("/v2/repository/models/gru/load").status_code == 200
        answer = infer(c, "gru", x)
        assert answer.status_code == 200
        want = reference(small_repo / "gru" / "1" / "model.onnx", x)
        np.testing.assert_allclose(outputs_of(answer.json())["y"], want, atol=ATOL)
        # A new version folder, then load: both versions served, the newest by default.
        make_rnn_model(small_repo / "gru" / "2" / "model.onnx", cell="gru", seed=9)
        assert c.post("/v2/repository/models/gru/load").status_code == 200
        want = reference(small_repo / "gru" / "2" / "model.onnx", x)
        np.testing.assert_allclose(outputs_of(infer(c, "gru", x).json())["y"], want, atol=ATOL)
        assert c.get("/v2/models/gru").json()["versions"] == ["1", "2"]
        missing = c.post("/v2/repository/models/nope/load")
        assert missing.status_code == 400 and "nope/VERSION/model.onnx" in missing.json()["error"]
        assert c.post("/v2/repository/models/nope/unload").status_code == 404


def test_unload_lets_in_flight_requests_finish(small_repo):
    with ServerThread(create_app(small_repo)) as server, httpx.Client(base_url=server.url) as c:
        scheduler, _ = server.server.config.app.state.server.get("gru")
        entered, release = threading.Event(), threading.Event()
        run = scheduler._batcher._run

        def held(feeds):
            entered.set()
            assert release.wait(30)
            return run(feeds)

        scheduler._batcher._run = held
        x = sample((1, 5, 3), seed=2)
        result = {}
        worker = threading.Thread(target=lambda: result.setdefault("r", infer(c, "gru", x)))
        worker.start()
        assert entered.wait(30)
        unload_url = f"{server.url}/v2/repository/models/gru/unload"
        unloading = threading.Thread(
            target=lambda: result.setdefault("u", httpx.post(unload_url, timeout=60))
        )
        unloading.start()
        # the unload stops routing to the model at once (not ready, new requests 404) and
        # waits for the request inside it
        wait_until(lambda: c.get("/v2/models/gru/ready").status_code != 200, message="gru ready")
        assert infer(c, "gru", x).status_code == 404
        assert unloading.is_alive()
        release.set()
        worker.join(30)
        unloading.join(30)
        assert result["r"].status_code == 200 and result["u"].status_code == 200
        want = reference(small_repo / "gru" / "1" / "model.onnx", x)
        np.testing.assert_allclose(outputs_of(result["r"].json())["y"], want, atol=ATOL)


def test_sequences_of_an_unloaded_model_end(small_repo):
    x = sample((1, 2, 3), seed=3)
    with ServerThread(create_app(small_repo)) as server, httpx.Client(base_url=server.url) as c:
        assert infer(c, "lstm", x, sequence_id=5, sequence_start=True).status_code == 200
        c.post("/v2/repository/models/lstm/unload")
        ended = infer(c, "lstm", x, sequence_id=5)
        assert ended.status_code == 404 and "open sequences ended" in ended.json()["error"]
        c.post("/v2/repository/models/lstm/load")
        again = infer(c, "lstm", x, sequence_id=5)
        assert again.status_code == 400 and "sequence_start" in again.json()["error"]


def test_poll_mode_follows_the_folder(small_repo):
    config = ServerConfig(model_control_mode="poll", repository_poll_s=0.05)
    x = sample((1, 3, 3), seed=4)
    app = create_app(small_repo, config)
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as c:
        refused = c.post("/v2/repository/models/gru/load")
        assert refused.status_code == 400 and "polling" in refused.json()["error"]
        staged = make_rnn_model(small_repo / "staging" / "model.onnx", cell="gru", seed=8)
        shutil.move(staged.parent, small_repo / "gru" / "2")  # a version folder appears
        assert wait_until(lambda: ("gru", "2") in states(c.post("/v2/repository/index").json()))
        want = reference(small_repo / "gru" / "2" / "model.onnx", x)
        np.testing.assert_allclose(outputs_of(infer(c, "gru", x).json())["y"], want, atol=ATOL)
        shutil.rmtree(small_repo / "lstm")  # a model leaves
        assert wait_until(lambda: infer(c, "lstm", x).status_code == 404)
        assert states(c.post("/v2/repository/index").json())[("lstm", "1")] == "UNAVAILABLE"


def test_cli_poll_mode(small_repo):
    """``keras-gates serve REPO --model-control-mode poll`` as a user runs it."""
    flags = ("--model-control-mode", "poll", "--repository-poll-secs", "0.2", "--no-request-log")
    with serve_process(small_repo, *flags) as (url, _), httpx.Client(base_url=url) as c:
        make_rnn_model(small_repo / "staging" / "model.onnx", cell="gru", seed=7)
        (small_repo / "staging").rename(small_repo / "gru" / "3")
        assert wait_until(lambda: c.get("/v2/models/gru").json()["versions"] == ["1", "3"])
        x = sample((2, 3, 3), seed=5)
        want = reference(small_repo / "gru" / "3" / "model.onnx", x)
        np.testing.assert_allclose(outputs_of(infer(c, "gru", x).json())["y"], want, atol=ATOL)


def test_in_memory_models_have_no_repository_to_load_from(small_repo):
    runtime = ModelRepository.load(small_repo).loaded("gru")["1"]
    app = create_app(ModelRepository({"gru": {"1": runtime}}))
    with ServerThread(app) as server:
        answer = httpx.post(f"{server.url}/v2/repository/models/gru/load")
        assert answer.status_code == 400 and "in-memory" in answer.json()["error"]
