"""Shared by the serving protocol and error tests: a repository of tiny ONNX models served by
a real uvicorn server in a thread, an httpx client, and helpers to build and read v2 documents."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from keras_gates.serving import SchedulerConfig, ServerConfig, create_app
from keras_gates.serving.datatypes import V2_TO_NUMPY
from tests.reference import SERVING_ATOL
from tests.serving_models import (
    ServerThread,
    make_dense_model,
    make_identity_model,
    make_rnn_model,
    run_direct,
)

ATOL = SERVING_ATOL  # tests/reference.py says why
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    make_rnn_model(root / "lstm" / "1" / "model.onnx", streaming=True, seed=0)
    make_rnn_model(root / "lstm" / "2" / "model.onnx", streaming=True, seed=5)
    make_rnn_model(root / "gru" / "1" / "model.onnx", cell="gru", seed=2)
    make_dense_model(root / "dense" / "1" / "model.onnx")
    make_identity_model(root / "identity" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def server(repo):
    config = ServerConfig(scheduler=SchedulerConfig(max_batch_size=8), max_body_bytes=MAX_BODY)
    with ServerThread(create_app(repo, config)) as running:
        yield running


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def zero_state(batch: int = 1, units: int = 8) -> dict[str, np.ndarray]:
    return {n: np.zeros((batch, units), np.float32) for n in ("rnn.h_in", "rnn.c_in")}


def lstm_reference(repo, x: np.ndarray, version: str = "1") -> dict[str, np.ndarray]:
    feeds = {"x": x, "lengths": np.full(len(x), x.shape[1], np.int32), **zero_state(len(x))}
    return run_direct(repo / "lstm" / version / "model.onnx", feeds)


def json_input(name: str, array: np.ndarray, datatype: str = "FP32", nested: bool = False):
    data = array.tolist() if nested else array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def outputs_of(doc: dict) -> dict[str, np.ndarray]:
    return {
        o["name"]: np.array(o["data"], V2_TO_NUMPY[o["datatype"]]).reshape(o["shape"])
        for o in doc["outputs"]
    }


def sample(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
