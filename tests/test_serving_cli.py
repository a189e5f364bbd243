"""``keras-gates serve`` arguments, model discovery in Triton's layout, and request logs."""

from __future__ import annotations

import argparse
import json
import logging

import httpx
import numpy as np
import pytest

from keras_gates.serving import ModelRepository, NotFound, create_app, discover
from keras_gates.serving import cli as serve_cli
from tests.serving_models import ServerThread, make_dense_model


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_bind_loopback():
    args = parse("model.onnx")
    assert (args.host, args.port, args.max_batch_size) == ("127.0.0.1", 8000, 32)


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--max-batch-size, expected a positive integer, got 0"):
        serve_cli.run(parse(str(tmp_path), "--max-batch-size", "0"))
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
