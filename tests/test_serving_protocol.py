"""The Open Inference Protocol over a real uvicorn server: stock tritonclient, JSON and binary
tensors, metadata endpoints, metrics and statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keras_gates.serving.datatypes import V2_TO_NUMPY
from tests.serving_fixtures import (
    ATOL,
    json_input,
    lstm_reference,
    outputs_of,
    sample,
    zero_state,
)
from tests.serving_models import (
    V2_TYPES,
    binary_body,
    run_direct,
)


# ---- stock tritonclient ------------------------------------------------------------------------
def test_tritonclient_health_and_metadata(server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        meta = client.get_server_metadata()
        assert "binary_tensor_data" in meta["extensions"] and "sequence" in meta["extensions"]
        model = client.get_model_metadata("lstm")
        assert model["versions"] == ["1", "2"]
        assert [t["name"] for t in model["inputs"]] == ["x", "lengths", "rnn.h_in", "rnn.c_in"]
        assert model["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, -1, 3]}
        assert client.is_model_ready("lstm", "2") and client.is_model_ready("gru")
        config = client.get_model_config("lstm")
        assert config["max_batch_size"] == 8
        assert config["input"][0]["dims"] == [-1, 3]
        assert config["sequence_batching"]["keras_gates_pads_variable_lengths"] is True
        assert config["sequence_batching"]["state"][0] == {
            "input_name": "rnn.h_in",
            "output_name": "rnn.h_out",
            "data_type": "TYPE_FP32",
            "dims": [8],
            "initial_state": [
                {"data_type": "TYPE_FP32", "dims": [8], "zero_data": True, "name": "zeros"}
            ],
        }
        assert client.get_model_config("dense")["max_batch_size"] == 8
        assert "sequence_batching" not in client.get_model_config("gru")
        index = client.get_model_repository_index()
        assert {(m["name"], m["version"]) for m in index} >= {("lstm", "1"), ("lstm", "2")}
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_inference(server, repo, binary):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        x = sample((2, 5, 3))
        inp = triton.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("y", "y_steps")]
        result = client.infer("lstm", [inp], model_version="1", outputs=outs, request_id="r1")
        expected = lstm_reference(repo, x)
        np.testing.assert_allclose(result.as_numpy("y"), expected["y"], atol=ATOL)
        np.testing.assert_allclose(result.as_numpy("y_steps"), expected["y_steps"], atol=ATOL)
        assert result.get_response()["id"] == "r1"
        assert result.as_numpy("rnn.h_out") is None  # not requested
        # no outputs named: tritonclient asks for all of them in binary
        everything = client.infer("lstm", [inp], model_version="1")
        np.testing.assert_allclose(
            everything.as_numpy("rnn.c_out"), expected["rnn.c_out"], atol=ATOL
        )
    finally:
        client.close()


def test_tritonclient_errors(server):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        inp = triton.InferInput("x", [1, 4, 3], "FP64")
        inp.set_data_from_numpy(np.zeros((1, 4, 3), np.float64))
        with pytest.raises(InferenceServerException) as err:
            client.infer("lstm", [inp])
        assert err.value.status() == "400" and "expected FP32" in err.value.message()
        with pytest.raises(InferenceServerException) as err:
            client.infer("nope", [inp])
        assert err.value.status() == "404" and "available models" in err.value.message()
        assert client.is_server_live()  # still serving
    finally:
        client.close()


# ---- JSON and binary tensors by hand -------------------------------------------------------
def test_json_nested_and_flat_every_datatype(client):
    rng = np.random.default_rng(3)
    arrays = {}
    for datatype in V2_TYPES:
        dtype = V2_TO_NUMPY[datatype]
        if dtype.kind == "b":
            arrays[datatype] = rng.random((2, 3)) > 0.5
        elif dtype.kind == "f":
            arrays[datatype] = rng.standard_normal((2, 3)).astype(dtype)
        else:
            arrays[datatype] = rng.integers(0, 100, (2, 3)).astype(dtype)
    inputs = [
        json_input(f"in_{t}", a, t, nested=i % 2 == 0) for i, (t, a) in enumerate(arrays.items())
    ]
    response = client.post("/v2/models/identity/infer", json={"id": "dt", "inputs": inputs})
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"] == "dt" and doc["model_name"] == "identity" and doc["model_version"] == "1"
    got = outputs_of(doc)
    for datatype, array in arrays.items():
        assert got[f"out_{datatype}"].dtype == array.dtype
        np.testing.assert_array_equal(got[f"out_{datatype}"], array)


def test_binary_request_and_mixed_outputs(client, repo):
    x = sample((1, 6, 3), seed=4)
    lengths = np.array([4], np.int32)
    body, size = binary_body(
        [("x", x, "FP32"), ("lengths", lengths, "INT32")],
        outputs=[{"name": "y", "parameters": {"binary_data": True}}, {"name": "y_steps"}],
    )
    response = client.post(
        "/v2/models/lstm/versions/1/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(size)},
    )
    assert response.status_code == 200, response.text
    header_size = int(response.headers["Inference-Header-Content-Length"])
    doc = json.loads(response.content[:header_size])
    y_meta, steps_meta = doc["outputs"]
    assert y_meta["parameters"]["binary_data_size"] == 8 and "data" not in y_meta
    y = np.frombuffer(response.content[header_size:], np.float32).reshape(y_meta["shape"])
    expected = run_direct(
        repo / "lstm" / "1" / "model.onnx", {"x": x, "lengths": lengths, **zero_state()}
    )
    np.testing.assert_allclose(y, expected["y"], atol=ATOL)
    steps = np.array(steps_meta["data"], np.float32).reshape(steps_meta["shape"])
    np.testing.assert_allclose(steps, expected["y_steps"], atol=ATOL)


def test_newest_version_answers_by_default(client, repo):
    x = sample((1, 4, 3), seed=9)
    response = client.post("/v2/models/lstm/infer", json={"inputs": [json_input("x", x)]})
    assert response.json()["model_version"] == "2"
    np.testing.assert_allclose(
        outputs_of(response.json())["y"], lstm_reference(repo, x, "2")["y"], atol=ATOL
    )


def test_generic_model_without_metadata(client, repo):
    x = sample((3, 4), seed=5)
    response = client.post("/v2/models/dense/infer", json={"inputs": [json_input("x", x)]})
    expected = run_direct(repo / "dense" / "1" / "model.onnx", {"x": x})["y"]
    np.testing.assert_allclose(outputs_of(response.json())["y"], expected, atol=ATOL)


def test_gzip_request_body(client, repo):
    import gzip

    x = sample((1, 3, 3), seed=6)
    body = gzip.compress(json.dumps({"inputs": [json_input("x", x)]}).encode())
    response = client.post(
        "/v2/models/gru/infer",
        content=body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    expected = run_direct(
        repo / "gru" / "1" / "model.onnx", {"x": x, "lengths": np.array([3], np.int32)}
    )
    np.testing.assert_allclose(outputs_of(response.json())["y"], expected["y"], atol=ATOL)


def test_docs_and_unknown_route(client):
    assert client.get("/docs").status_code == 200
    assert "/v2/models/{model_name}/infer" in client.get("/openapi.json").json()["paths"]
    response = client.get("/v3/nothing")
    assert response.status_code == 404 and "No route" in response.json()["error"]


def test_metadata_errors(client):
    assert client.get("/v2/models/nope").status_code == 404
    response = client.get("/v2/models/lstm/versions/3/config")
    assert response.status_code == 404 and "available versions" in response.json()["error"]
    assert client.get("/v2/models/nope/ready").status_code == 404
    assert client.get("/v2/models/lstm/versions/1/ready").json()["ready"] is True


# ---- metrics and statistics ---------------------------------------------------------------
def _samples(text: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_metrics_and_stats(client):
    before = _samples(client.get("/metrics").text)
    labels = (("model", "gru"), ("version", "1"))
    body = {"inputs": [json_input("x", sample((1, 5, 3)))]}
    for _ in range(3):
        assert client.post("/v2/models/gru/infer", json=body).status_code == 200
    assert client.post("/v2/models/gru/infer", content=b"{").status_code == 400
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)

    def delta(name, extra=()):
        key = (name, tuple(sorted(labels + extra)))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("keras_gates_request_success_total") == 3
    assert delta("keras_gates_request_failure_total", (("code", "400"),)) == 1
    assert delta("keras_gates_request_duration_seconds_count") == 3
    assert delta("keras_gates_queue_duration_seconds_count") == 3
    assert delta("keras_gates_batch_size_sum") == 3
    assert ("keras_gates_active_sessions", (("model", "lstm"), ("version", "1"))) in after
    stats = client.get("/v2/models/gru/stats").json()["model_stats"][0]
    assert stats["name"] == "gru" and stats["inference_stats"]["success"]["count"] >= 3
    assert stats["inference_stats"]["fail"]["count"] >= 1
    assert stats["inference_count"] >= 3 and stats["batch_stats"][0]["batch_size"] >= 1
    assert len(client.get("/v2/models/stats").json()["model_stats"]) == 5
