"""Triton's surface beyond inference, on both transports of one in-process server: restricted API
groups (``--restricted-api``), repository errors that keep the server's paths in its log, and the
classification extension. The stock ``tritonclient`` clients over real sockets; the real Triton's
answers to the same requests are compared in ``tests/test_triton_real.py``."""

from __future__ import annotations

import logging
import queue
import re

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from keras_gates.serving import ServerConfig, create_app
from keras_gates.serving import cli as serve_cli
from keras_gates.serving.grpc_server import GrpcConfig
from keras_gates.serving.restricted import GROUPS, RestrictedApi, http_group
from tests.serving_models import ServerThread, add_labels, make_rnn_model, run_direct

ADMIN = {"admin-key": "s3cret"}
STATS = {"stats-key": "s2"}
RESTRICTIONS = ["model-repository,inference:admin-key=s3cret", "statistics:stats-key=s2"]


class Served:
    def __init__(self, root, url: str, grpc_address: str):
        self.root, self.url, self.grpc_address = root, url, grpc_address


@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    """A server restricting model-repository and inference (admin-key), statistics
    (stats-key), with HTTP and gRPC."""
    root = tmp_path_factory.mktemp("restricted")
    make_rnn_model(root / "plain" / "1" / "model.onnx", units=4, seed=3)
    config = ServerConfig(restricted_api=RestrictedApi.parse(RESTRICTIONS))
    app = create_app(root, config, GrpcConfig(port=0))
    with ServerThread(app) as server:
        yield Served(root, server.url, f"127.0.0.1:{app.state.grpc.port}")


def x_body() -> dict:
    data = np.zeros((1, 2, 3), np.float32).ravel().tolist()
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": data}]}


# ---- restricted API groups ---------------------------------------------------------------------
def test_restricted_http_groups_answer_403_as_triton(restricted):
    refused = [
        ("POST", "/v2/repository/index", None, "admin-key"),
        ("POST", "/v2/repository/models/plain/unload", None, "admin-key"),
        ("POST", "/v2/repository/models/plain/load", None, "admin-key"),
        ("POST", "/v2/models/plain/infer", x_body(), "admin-key"),  # before the fast path
        ("POST", "/v2/models/plain/versions/1/infer", x_body(), "admin-key"),
        ("GET", "/v2/models/stats", None, "stats-key"),
        ("GET", "/v2/models/plain/stats", None, "stats-key"),
    ]
    with httpx.Client(base_url=restricted.url, timeout=30) as client:
        for method, path, body, header in refused:
            for headers in ({}, {header: "wrong"}, {"other": "s3cret"}):
                answer = client.request(method, path, json=body, headers=headers)
                assert answer.status_code == 403, (path, headers, answer.text)
                # Triton 2.51's answer, word for word
                want = f"This API is restricted, expecting header '{header}'"
                assert answer.json() == {"error": want}, (path, answer.text)
        key = {"admin-key": ADMIN, "stats-key": STATS}
        for method, path, body, header in refused:
            if path.endswith("/unload"):
                continue
            # header names are case-insensitive, values exact
            headers = {k.upper(): v for k, v in key[header].items()}
            answer = client.request(method, path, json=body, headers=headers)
            assert answer.status_code == 200, (path, answer.text)
        for path in ("/v2/health/ready", "/v2", "/v2/models/plain", "/v2/models/plain/config"):
            assert client.get(path).status_code == 200, path  # groups left open
        assert client.get("/metrics").status_code == 200  # never restricted (as in Triton)


def test_restricted_grpc_groups_answer_permission_denied(restricted):
    x = tg.InferInput("x", [1, 2, 3], "FP32")
    x.set_data_from_numpy(np.zeros((1, 2, 3), np.float32))
    triton_key = {"triton-grpc-protocol-admin-key": "s3cret"}  # what Triton's clients send
    with tg.InferenceServerClient(restricted.grpc_address) as client:
        calls = [
            (client.get_model_repository_index, (), "admin-key"),
            (client.load_model, ("plain",), "admin-key"),
            (client.infer, ("plain", [x]), "admin-key"),
            (client.get_inference_statistics, ("plain",), "stats-key"),
        ]
        for call, args, header in calls:
            for headers in (None, {header: "wrong"}, {f"triton-grpc-protocol-{header}": "no"}):
                with pytest.raises(InferenceServerException) as refused:
                    call(*args, headers=headers)
                assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
                want = (
                    f"This protocol is restricted, expecting header 'triton-grpc-protocol-{header}'"
                )
                assert refused.value.message() == want
        assert client.get_model_repository_index(headers=triton_key).models
        assert client.get_model_repository_index(headers=ADMIN).models  # the bare key too
        assert client.infer("plain", [x], headers=triton_key).as_numpy("y").shape == (1, 2)
        stats = client.get_inference_statistics("plain", headers=STATS).model_stats
        assert stats[0].name == "plain"
        assert client.is_server_ready() and client.get_model_config("plain").config.name
        answers: queue.Queue = queue.Queue()  # a stream is refused as a whole
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        try:
            try:  # the refusal may come before this message is sent
                client.async_stream_infer("plain", [x])
            except InferenceServerException as unsent:
                assert "no longer in valid state" in unsent.message()
            error = answers.get(timeout=30)
        finally:
            client.stop_stream()
        assert isinstance(error, InferenceServerException), error
        assert "expecting header 'triton-grpc-protocol-admin-key'" in str(error)


def test_restricted_api_flags_are_checked_at_start(tmp_path, caplog):
    cases = {
        "model-repository": "expected GROUP[,GROUP...]:HEADER=VALUE",
        "model-repository:admin-key": "expected GROUP[,GROUP...]:HEADER=VALUE",
        "model-repository:admin-key=": "expected GROUP[,GROUP...]:HEADER=VALUE",
        ":a=b": "expected GROUP[,GROUP...]:HEADER=VALUE",
        "repository:a=b": "unknown group(s) 'repository'; expected groups among health, metadata",
        "statistics,nope:a=b": "unknown group(s) 'nope'",
        "statistics:a b=c": "header 'a b' is not a valid header name",
    }
    for spec, message in cases.items():
        args = parse_serve(str(tmp_path), "--restricted-api", spec)
        with pytest.raises(ValueError, match=re.escape(message)):
            serve_cli.run(args)  # before any model is loaded (tmp_path holds none)
    twice = ("--restricted-api", "statistics:a=b", "--restricted-api", "metadata,statistics:c=d")
    with pytest.raises(ValueError, match="group 'statistics' in two settings"):
        serve_cli.run(parse_serve(str(tmp_path), *twice))
    parsed = RestrictedApi.parse(["model-repository,statistics:Admin-Key=x=y"])
    assert parsed.restrictions[0].header == "admin-key" and parsed.restrictions[0].value == "x=y"
    # beyond loopback without model-repository restricted: a warning naming the fix
    with caplog.at_level(logging.WARNING, logger="keras_gates.serving"):
        for host, spec in (("127.0.0.1", None), ("::1", None), ("0.0.0.0", "model-repository:a=b")):
            serve_cli._warn_if_open(
                host, ServerConfig(restricted_api=RestrictedApi.parse([spec] if spec else []))
            )
        assert not caplog.records
        serve_cli._warn_if_open("0.0.0.0", ServerConfig())
    assert "--restricted-api model-repository:admin-key=SECRET" in caplog.text


def test_every_route_and_rpc_has_triton_group(restricted):
    """The OpenAPI document's routes and the service's RPCs all map to a group of Triton's
    (or, for /metrics and the docs, to none, as in Triton)."""
    from tritonclient.grpc import service_pb2

    from keras_gates.serving.restricted import GRPC_GROUPS

    openapi = httpx.get(f"{restricted.url}/openapi.json").json()
    for path, methods in openapi["paths"].items():
        concrete = path.replace("{model_name}", "m").replace("{version}", "1")
        group = http_group(next(iter(methods)).upper(), concrete)
        assert (group is None) == (path == "/metrics"), path
        assert group is None or group in GROUPS
    rpcs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    assert set(rpcs) == set(GRPC_GROUPS) and set(GRPC_GROUPS.values()) <= set(GROUPS)


def parse_serve(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


# ---- no server paths in client messages --------------------------------------------------------
def test_failed_load_keeps_paths_in_the_log(restricted, caplog):
    broken = restricted.root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    root = str(restricted.root)
    with caplog.at_level(logging.WARNING, logger="keras_gates.serving"):
        answer = httpx.post(f"{restricted.url}/v2/repository/models/broken/load", headers=ADMIN)
        missing = httpx.post(f"{restricted.url}/v2/repository/models/nope/load", headers=ADMIN)
        with tg.InferenceServerClient(restricted.grpc_address) as client:
            with pytest.raises(InferenceServerException) as over_grpc:
                client.load_model("broken", headers=ADMIN)
    assert answer.status_code == 400 and missing.status_code == 400
    message = answer.json()["error"]
    assert message.startswith("failed to load 'broken' version 1: ")
    assert "broken/1/model.onnx" in message and "Protobuf parsing failed" in message
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert over_grpc.value.message() == message  # the same words on both transports
    for text in (message, missing.json()["error"]):
        assert root not in text and "/tmp" not in text and str(restricted.root.name) not in text
    assert "no version of it in the model repository" in missing.json()["error"]
    assert f"{root}/broken/1/model.onnx" in caplog.text  # the operator's log has them
    assert f"no version of it under {root}" in caplog.text


# ---- the classification extension --------------------------------------------------------------
CLASSES = 5
LABELS = ["zero", "one", "two", "three", "four"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """An open server of three labelled copies of one model (``y [B, 5]``, ``y_steps [B, T, 5]``):
    labels in its metadata (``meta``), in files named by a Triton config (``configured``, as
    ``write_triton_repo`` writes them; ``labels_y.txt`` then edited: the file wins), and in a
    ``labels.txt`` of three lines (``filed``, a model with one output)."""
    from keras_gates.export.triton import write_triton_repo

    root = tmp_path_factory.mktemp("classifier")
    source = make_rnn_model(root / "meta" / "1" / "model.onnx", units=4, outputs=CLASSES, seed=7)
    add_labels(source, {"y": LABELS, "y_steps": LABELS})
    write_triton_repo(source, root, "configured", backend="python")
    (root / "configured" / "labels_y.txt").write_text("A\nB\nC\nD\nE\n")
    filed = root / "filed" / "1" / "model.onnx"
    make_rnn_model(filed, units=4, outputs=CLASSES, seed=7, per_step=False)
    (root / "filed" / "labels.txt").write_text("zero\none\ntwo\n")
    app = create_app(root, None, GrpcConfig(port=0))
    with ServerThread(app) as server:
        yield Served(root, server.url, f"127.0.0.1:{app.state.grpc.port}")


def top_k(values: np.ndarray, k: int, labels) -> list[list[bytes]]:
    """The witness: each row's values sorted in plain Python, formatted with C's %f."""
    found = []
    for row in values.reshape(len(values), -1).tolist():
        ranked = sorted(enumerate(row), key=lambda pair: (-pair[1], pair[0]))[:k]
        found.append(
            [
                (f"{v:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "")).encode()
                for i, v in ranked
            ]
        )
    return found


def test_classification_top_k_on_both_transports(classifier):
    import tritonclient.http as th

    x = np.random.default_rng(71).standard_normal((3, 4, 3)).astype(np.float32)
    lengths = np.array([[4], [2], [3]], np.int32)
    raw = run_direct(
        classifier.root / "meta" / "1" / "model.onnx", {"x": x, "lengths": lengths.ravel()}
    )
    cases = [  # model, output, K, labels the answer must carry
        ("meta", "y", 2, LABELS),
        ("meta", "y", 5, LABELS),
        ("meta", "y", 9, LABELS),  # more than the classes: all of them, as Triton
        ("meta", "y_steps", 3, LABELS),  # ranks each row's T * N values, as Triton
        ("configured", "y", 3, list("ABCDE")),
        ("configured", "y_steps", 2, LABELS),
        ("filed", "y", 4, ["zero", "one", "two"]),  # classes 3, 4 have no label
    ]
    with (
        th.InferenceServerClient(classifier.url.removeprefix("http://")) as over_http,
        tg.InferenceServerClient(classifier.grpc_address) as over_grpc,
    ):
        for model, output, k, labels in cases:
            want = top_k(raw[output], k, labels)
            for module, client, binary in (
                (th, over_http, True),
                (th, over_http, False),
                (tg, over_grpc, None),
            ):
                tensors = []
                for name, value in (("x", x), ("lengths", lengths)):
                    tensors.append(
                        module.InferInput(
                            name, list(value.shape), "FP32" if name == "x" else "INT32"
                        )
                    )
                    tensors[-1].set_data_from_numpy(value)
                extra = {} if binary is None else {"binary_data": binary}
                asked = module.InferRequestedOutput(output, class_count=k, **extra)
                result = client.infer(model, tensors, outputs=[asked])
                got = result.as_numpy(output)
                assert got.shape == (3, min(k, raw[output][0].size)), (model, output, k)
                got = [[g if isinstance(g, bytes) else g.encode() for g in row] for row in got]
                assert got == want, (model, output, k, module.__name__, binary)
        # classification 0 is the values themselves, as in Triton
        body = x_body() | {"outputs": [{"name": "y", "parameters": {"classification": 0}}]}
        answer = httpx.post(f"{classifier.url}/v2/models/filed/infer", json=body).json()
        assert answer["outputs"][0]["datatype"] == "FP32"
    config = httpx.get(f"{classifier.url}/v2/models/configured/config").json()
    assert {t["name"]: t["label_filename"] for t in config["output"]} == {
        "y": "labels_y.txt",
        "y_steps": "labels_y_steps.txt",
    }
    assert "classification" in httpx.get(f"{classifier.url}/v2").json()["extensions"]


@pytest.mark.parametrize("count", [-1, "2", 2.5, True, None, [2]])
def test_bad_classification_is_400(classifier, count):
    body = x_body() | {"outputs": [{"name": "y", "parameters": {"classification": count}}]}
    answer = httpx.post(f"{classifier.url}/v2/models/meta/infer", json=body)
    assert answer.status_code == 400, answer.text
    want = f"Output 'y' has parameter classification {count!r}, expected a non-negative integer"
    assert want in answer.json()["error"]


def test_bad_classification_is_invalid_argument_over_grpc(classifier):
    x = tg.InferInput("x", [1, 2, 3], "FP32")
    x.set_data_from_numpy(np.zeros((1, 2, 3), np.float32))
    with tg.InferenceServerClient(classifier.grpc_address) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("meta", [x], outputs=[tg.InferRequestedOutput("y", class_count=-3)])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "classification -3, expected a non-negative integer" in refused.value.message()
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("meta", [x], outputs=[tg.InferRequestedOutput("nope", class_count=2)])
        assert "has no output 'nope'" in unknown.value.message()


def test_labels_are_checked_where_they_are_given(tmp_path):
    from keras_gates.labels import resolve_labels

    outputs = [("y", 3), ("y_steps", 3)]
    assert resolve_labels({"y": ["a", "b", "c"]}, outputs) == {"y": ("a", "b", "c")}
    cases = {
        "as a list, but the model has 2 outputs": ["a", "b", "c"],
        "expected 3 (its last axis": {"y": ["a", "b"]},
        "'nope', which is not an output": {"nope": ["a", "b", "c"]},
        "not a non-empty list of one-line strings (e.g. 'b\\nc')": {"y": ["a", "b\nc", "d"]},
        "expected a list of strings or a dict": "abc",
    }
    for message, labels in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            resolve_labels(labels, outputs)
    # keras-gates export --labels [OUTPUT=]FILE, read before the export starts
    from keras_gates.export.cli import _labels

    (tmp_path / "a.txt").write_text("a\nb\n")
    assert _labels([]) is None and _labels([str(tmp_path / "a.txt")]) == ["a", "b"]
    assert _labels([f"y={tmp_path / 'a.txt'}"]) == {"y": ["a", "b"]}
    with pytest.raises(ValueError, match="is not a file; expected \\[OUTPUT=\\]FILE"):
        _labels([str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="both with and without OUTPUT="):
        _labels([str(tmp_path / "a.txt"), f"y={tmp_path / 'a.txt'}"])
    # a config naming a label file that is not there: the model does not load (as in Triton)
    from keras_gates.serving.runtime import ModelRuntime

    path = make_rnn_model(tmp_path / "m" / "1" / "model.onnx", units=4, per_step=False)
    (tmp_path / "m" / "config.pbtxt").write_text(
        'name: "m"\noutput { name: "y" data_type: TYPE_FP32 dims: [2] label_filename: "l.txt" }\n'
    )
    with pytest.raises(ValueError, match="label_filename 'l.txt' of output 'y'"):
        ModelRuntime(path, "m")
