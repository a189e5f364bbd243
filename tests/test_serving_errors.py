"""Every bad input answers its documented status with a message saying what was expected, the
server keeps serving, and unexpected errors become an opaque 500 (the error boundary)."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest

from keras_gates.serving import (
    ModelRepository,
    ModelRuntime,
    create_app,
)
from tests.serving_fixtures import (
    ATOL,
    json_input,
    lstm_reference,
    outputs_of,
    sample,
)
from tests.serving_models import (
    ServerThread,
    binary_body,
)


# ---- every bad input: documented status, a message saying what was expected, still serving -
def _json_body(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


X = np.ones((1, 4, 3), np.float32)
_NAN = X.copy()
_NAN[0, 1, 2] = np.nan
_GOOD_BINARY, _GOOD_SIZE = binary_body([("x", X, "FP32")])
_NAN_BINARY, _NAN_SIZE = binary_body([("x", _NAN, "FP32")])
_SHORT_BINARY, _SHORT_SIZE = binary_body([("x", X.reshape(-1)[:11], "FP32")])
_SHORT_BINARY = _SHORT_BINARY.replace(b"[11]", b"[1, 4, 3]")
_SHORT_SIZE += len(b"[1, 4, 3]") - len(b"[11]")
_BAD_SIZE_HEADER = json.dumps(
    {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4, 3]},
        ]
    }
)

BAD_CASES = {
    "unknown model": (
        "/v2/models/nope/infer",
        _json_body(json_input("x", X)),
        {},
        404,
        "available models",
    ),
    "unknown version": (
        "/v2/models/lstm/versions/7/infer",
        _json_body(json_input("x", X)),
        {},
        404,
        "available versions: 1, 2",
    ),
    "missing input": (
        "/v2/models/lstm/infer",
        _json_body(json_input("lengths", np.array([4], np.int32), "INT32")),
        {},
        400,
        "missing input 'x'",
    ),
    "extra input": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", X), json_input("bogus", X)),
        {},
        400,
        "has no input 'bogus'; expected inputs: x (FP32 [-1, -1, 3])",
    ),
    "wrong shape": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", np.ones((1, 4, 5), np.float32))),
        {},
        400,
        "shape [1, 4, 5], expected [-1, -1, 3]",
    ),
    "wrong rank": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", np.ones((4, 3), np.float32))),
        {},
        400,
        "expected [-1, -1, 3]",
    ),
    "wrong datatype": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", X, "FP64")),
        {},
        400,
        "datatype FP64, expected FP32",
    ),
    "unknown datatype": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", X, "FLOAT")),
        {},
        400,
        "expected one of BOOL",
    ),
    "data length": (
        "/v2/models/lstm/infer",
        _json_body({"name": "x", "datatype": "FP32", "shape": [1, 4, 3], "data": [0.0] * 11}),
        {},
        400,
        "needs 12 values, but data holds 11",
    ),
    "ragged data": (
        "/v2/models/lstm/infer",
        _json_body(
            {"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [[1, 2, 3], [4, 5]]}
        ),
        {},
        400,
        "not a (nested) list of FP32",
    ),
    "text data": (
        "/v2/models/lstm/infer",
        _json_body({"name": "x", "datatype": "FP32", "shape": [1, 1, 3], "data": ["a", "b", "c"]}),
        {},
        400,
        "not a (nested) list of FP32",
    ),
    "float lengths": (
        "/v2/models/lstm/infer",
        _json_body(
            json_input("x", X),
            {"name": "lengths", "datatype": "INT32", "shape": [1], "data": [2.5]},
        ),
        {},
        400,
        "not a (nested) list of INT32",
    ),
    "lengths too long": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", X), json_input("lengths", np.array([9], np.int32), "INT32")),
        {},
        400,
        "between 1 and the time length 4",
    ),
    "batch mismatch": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", X), json_input("lengths", np.array([4, 4], np.int32), "INT32")),
        {},
        400,
        "same batch size",
    ),
    "empty time": (
        "/v2/models/lstm/infer",
        _json_body({"name": "x", "datatype": "FP32", "shape": [1, 0, 3], "data": []}),
        {},
        400,
        "one common length >= 1",
    ),
    "unknown output": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", X), outputs=[{"name": "z"}]),
        {},
        400,
        "has no output 'z'; expected outputs: y",
    ),
    "malformed json": ("/v2/models/lstm/infer", b'{"inputs": [', {}, 400, "Malformed JSON"),
    "infinity json": (
        "/v2/models/lstm/infer",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 3], '
        b'"data": [1e999, 0, 0]}]}',
        {},
        400,
        "Malformed JSON",
    ),
    "no inputs": ("/v2/models/lstm/infer", b'{"input": []}', {}, 400, 'non-empty "inputs" list'),
    "not an object": ("/v2/models/lstm/infer", b"[1, 2]", {}, 400, 'non-empty "inputs" list'),
    "no data": ("/v2/models/lstm/infer", _BAD_SIZE_HEADER.encode(), {}, 400, 'neither "data" nor'),
    "binary extra bytes": (
        "/v2/models/lstm/infer",
        _GOOD_BINARY + b"\0\0\0\0",
        {"Inference-Header-Content-Length": str(_GOOD_SIZE)},
        400,
        "do not add up",
    ),
    "binary short": (
        "/v2/models/lstm/infer",
        _GOOD_BINARY[:-4],
        {"Inference-Header-Content-Length": str(_GOOD_SIZE)},
        400,
        "do not add up: input 'x' needs bytes 0...48 but only 44",
    ),
    "binary size wrong": (
        "/v2/models/lstm/infer",
        _SHORT_BINARY,
        {"Inference-Header-Content-Length": str(_SHORT_SIZE)},
        400,
        "declares binary_data_size 44, expected 48 bytes",
    ),
    "binary header too long": (
        "/v2/models/lstm/infer",
        _GOOD_BINARY,
        {"Inference-Header-Content-Length": str(len(_GOOD_BINARY) + 5)},
        400,
        "expected the length of the JSON header",
    ),
    "binary header not a number": (
        "/v2/models/lstm/infer",
        _GOOD_BINARY,
        {"Inference-Header-Content-Length": "ten"},
        400,
        "must be an integer",
    ),
    "binary NaN": (
        "/v2/models/lstm/infer",
        _NAN_BINARY,
        {"Inference-Header-Content-Length": str(_NAN_SIZE)},
        400,
        "contains NaN or Inf; expected finite values",
    ),
    "oversize body": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", np.ones((1, 10000, 3), np.float32))),
        {},
        413,
        "exceeds the limit of 65536 bytes",
    ),
    "bad sequence flag": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", X), parameters={"sequence_id": 3, "sequence_start": "yes"}),
        {},
        400,
        "must be true or false",
    ),
    "bad encoding": (
        "/v2/models/lstm/infer",
        _json_body(json_input("x", X)),
        {"Content-Encoding": "br"},
        400,
        "use gzip or deflate",
    ),
}


@pytest.mark.parametrize("case", BAD_CASES, ids=list(BAD_CASES))
def test_bad_request(client, repo, case):
    path, body, headers, status, expected = BAD_CASES[case]
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    assert expected in response.json()["error"]
    ok = client.post("/v2/models/lstm/versions/1/infer", json={"inputs": [json_input("x", X)]})
    assert ok.status_code == 200
    np.testing.assert_allclose(outputs_of(ok.json())["y"], lstm_reference(repo, X)["y"], atol=ATOL)


# ---- the error boundary -------------------------------------------------------------------
def test_unexpected_error_is_logged_and_opaque(repo, caplog):
    runtime = ModelRuntime(repo / "gru" / "1" / "model.onnx", "boom")

    def explode(feeds):
        raise RuntimeError("secret internal detail")

    runtime.run = explode
    app = create_app(ModelRepository({"boom": {"1": runtime}}))
    body = {"inputs": [json_input("x", sample((1, 2, 3)))]}
    with ServerThread(app) as running, caplog.at_level(logging.ERROR, "keras_gates.serving"):
        response = httpx.post(f"{running.url}/v2/models/boom/infer", json=body, timeout=30)
        assert response.status_code == 500
        assert "secret" not in response.text and "server log" in response.json()["error"]
        assert httpx.get(f"{running.url}/v2/health/live").status_code == 200
    assert any("secret internal detail" in r.exc_text for r in caplog.records if r.exc_text)


def test_ready_only_while_the_lifespan_runs(repo):
    """Ready (and serving inference) from the lifespan's start to its end, never before."""
    runtime = ModelRuntime(repo / "gru" / "1" / "model.onnx", "gru")
    body = {"inputs": [json_input("x", sample((1, 2, 3)))]}
    app = create_app(ModelRepository({"gru": {"1": runtime}}))
    with ServerThread(app, lifespan="off") as running, httpx.Client(base_url=running.url) as c:
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/gru/ready").json()["ready"] is False
        refused = c.post("/v2/models/gru/infer", json=body)
        assert refused.status_code == 503 and "--lifespan off" in refused.json()["error"]
    app.state.server.close()  # what the lifespan would have done
    app = create_app(ModelRepository({"gru": {"1": runtime}}))
    with ServerThread(app) as running, httpx.Client(base_url=running.url) as c:
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.post("/v2/models/gru/infer", json=body).status_code == 200
    assert not app.state.server.ready  # the lifespan ended: shutting down
