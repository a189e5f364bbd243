"""The Open Inference Protocol over gRPC: the stock ``tritonclient.grpc`` grpc_client (and the
protocol's generated stub) against a ``keras-gates serve --grpc-port`` subprocess, next to the HTTP
transport of the same process."""

from __future__ import annotations

import socket
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from keras_gates.serving.grpc_codec import CONTENTS_FIELD
from tests import children
from tests.serving_fixtures import ATOL, sample, zero_state
from tests.serving_grpc import (
    MAX_SESSIONS,
    grpc_error,
    inputs,
    whole_lstm,
)
from tests.serving_models import V2_TYPES, run_direct


# ---- every RPC -------------------------------------------------------------------------------
def test_health_metadata_config_index(grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    meta = grpc_client.get_server_metadata()
    assert meta.name == "keras-gates" and "sequence" in meta.extensions
    assert grpc_client.is_model_ready("lstm") and grpc_client.is_model_ready("lstm", "2")
    model = grpc_client.get_model_metadata("lstm")
    assert list(model.versions) == ["1", "2"] and model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs][:2] == [
        ("x", "FP32", [-1, -1, 3]),
        ("lengths", "INT32", [-1, 1]),  # [batch] tensors are advertised as Triton does
    ]
    assert list(grpc_client.get_model_metadata("lstm", "2").versions) == ["2"]
    config = grpc_client.get_model_config("lstm").config
    assert (config.name, config.max_batch_size, list(config.input[0].dims)) == ("lstm", 8, [-1, 3])
    assert config.sequence_batching.oldest.max_candidate_sequences == 8
    assert config.sequence_batching.oldest.max_queue_delay_microseconds == 5000  # 5 ms
    assert config.sequence_batching.max_sequence_idle_microseconds == 60_000_000
    assert [s.input_name for s in config.sequence_batching.state] == ["rnn.h_in", "rnn.c_in"]
    assert grpc_client.get_model_config(
        "dense"
    ).config.dynamic_batching.max_queue_delay_microseconds
    index = {(m.name, m.version, m.state) for m in grpc_client.get_model_repository_index().models}
    assert {("lstm", "1", "READY"), ("lstm", "2", "READY"), ("gru", "1", "READY")} <= index


def test_statistics_count_both_transports(grpc_client, triton_http):
    x = sample((1, 4, 3), seed=1)

    def count() -> int:
        stats = grpc_client.get_inference_statistics("lstm", "1").model_stats[0]
        return stats.inference_stats.success.count

    before = count()
    grpc_client.infer("lstm", inputs(tg, x=x), model_version="1")
    triton_http.infer("lstm", inputs(th, x=x), model_version="1")
    assert count() == before + 2
    every = grpc_client.get_inference_statistics().model_stats  # no name: every model and version
    assert {(s.name, s.version) for s in every} >= {("lstm", "1"), ("lstm", "2"), ("dense", "1")}
    assert len(grpc_client.get_inference_statistics("lstm").model_stats) == 2


def test_unknown_model_is_not_found_everywhere(grpc_client):
    for call in (
        grpc_client.get_model_metadata,
        grpc_client.get_model_config,
        grpc_client.is_model_ready,
    ):
        err = grpc_error(call, "nope")
        assert err.status() == "StatusCode.NOT_FOUND"
        assert (
            "Unknown model 'nope'; available models: dense, gru, identity, lstm." in err.message()
        )
    err = grpc_error(grpc_client.load_model, "nope")  # the repository RPCs, as over HTTP
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "failed to load 'nope': no version of it in the model repository" in err.message()
    err = grpc_error(grpc_client.unload_model, "nope")
    assert err.status() == "StatusCode.NOT_FOUND" and "Unknown model 'nope'" in err.message()
    err = grpc_error(grpc_client.get_inference_statistics, "lstm", "9")
    assert err.status() == "StatusCode.NOT_FOUND" and "available versions: 1, 2" in err.message()


# ---- inference -------------------------------------------------------------------------------
def test_infer_is_bit_equal_to_http_and_onnxruntime(grpc_client, triton_http, repo):
    x = sample((3, 6, 3), seed=2)
    lengths = np.array([6, 4, 2], np.int32)
    expected = run_direct(
        repo / "lstm" / "1" / "model.onnx", {"x": x, "lengths": lengths, **zero_state(3)}
    )
    over_grpc = grpc_client.infer(
        "lstm", inputs(tg, x=x, lengths=lengths), model_version="1", request_id="abc"
    )
    over_http = triton_http.infer("lstm", inputs(th, x=x, lengths=lengths), model_version="1")
    assert over_grpc.get_response().id == "abc"
    assert over_grpc.get_response().raw_output_contents  # raw bytes, not typed contents
    for name in ("y", "y_steps", "rnn.h_out", "rnn.c_out"):
        got = over_grpc.as_numpy(name)
        assert got.dtype == expected[name].dtype and got.shape == expected[name].shape
        np.testing.assert_array_equal(got, expected[name], err_msg=name)
        np.testing.assert_array_equal(got, over_http.as_numpy(name), err_msg=name)
    only = grpc_client.infer("lstm", inputs(tg, x=x), outputs=[tg.InferRequestedOutput("y")])
    assert [o.name for o in only.get_response().outputs] == ["y"]


def test_every_datatype_in_raw_and_typed_contents(grpc_client, grpc_served):
    arrays = {}
    for i, datatype in enumerate(V2_TYPES):
        values = np.arange(6).reshape(2, 3) + i
        dtype = tg.triton_to_np_dtype(datatype)
        arrays[datatype] = (
            (values % 2).astype(dtype) if datatype == "BOOL" else values.astype(dtype)
        )
    tensors = []
    for datatype, array in arrays.items():
        tensors.append(tg.InferInput(f"in_{datatype}", [2, 3], datatype))
        tensors[-1].set_data_from_numpy(array)
    result = grpc_client.infer("identity", tensors)
    for datatype, array in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got.dtype == array.dtype and np.array_equal(got, array), datatype
    # The same through typed contents (FP16 has none: it must travel raw, so it is left out).
    request = service_pb2.ModelInferRequest(model_name="identity")
    for datatype, array in arrays.items():
        if datatype == "FP16":
            continue
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[2, 3])
        getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    with grpc.insecure_channel(grpc_served[1]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "missing input 'in_FP16'" in caught.value.details()
        fp16 = arrays["FP16"]
        request.inputs.add(name="in_FP16", datatype="FP16", shape=[2, 3])
        request.inputs[-1].contents.fp32_contents.extend(fp16.ravel().tolist())
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert "datatype FP16, so its values go in raw_input_contents" in caught.value.details()
        del request.inputs[-1]
        request.inputs.add(name="in_FP16", datatype="FP16", shape=[2, 3])
        request.raw_input_contents.extend([b""] * (len(request.inputs) - 1) + [fp16.tobytes()])
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert "has values both in contents and in raw_input_contents" in caught.value.details()


def test_typed_contents_are_served(grpc_served, repo):
    x = sample((2, 5, 3), seed=4)
    request = service_pb2.ModelInferRequest(model_name="lstm", model_version="1", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    lengths = request.inputs.add(name="lengths", datatype="INT32", shape=[2])
    lengths.contents.int_contents.extend([5, 3])
    with grpc.insecure_channel(grpc_served[1]) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert response.id == "typed" and response.model_version == "1"
    names = [o.name for o in response.outputs]
    y = np.frombuffer(response.raw_output_contents[names.index("y")], np.float32).reshape(2, 2)
    expected = run_direct(
        repo / "lstm" / "1" / "model.onnx",
        {"x": x, "lengths": np.array([5, 3], np.int32), **zero_state(2)},
    )
    np.testing.assert_array_equal(y, expected["y"])


# ---- errors ----------------------------------------------------------------------------------
X = np.ones((1, 2, 3), np.float32)
BAD = {  # name: (inputs, parameters, gRPC status, message fragment)
    "missing input": ({"lengths": np.array([2], np.int32)}, {}, "INVALID_ARGUMENT", "input 'x'"),
    "wrong shape": ({"x": np.ones((1, 2, 5), np.float32)}, {}, "INVALID_ARGUMENT", "[-1, -1, 3]"),
    "NaN": ({"x": X * np.nan}, {}, "INVALID_ARGUMENT", "NaN or Inf"),
    "lengths too long": (
        {"x": X, "lengths": np.array([3], np.int32)},
        {},
        "INVALID_ARGUMENT",
        "expected values between 1 and the time length 2",
    ),
    "unknown sequence": (
        {"x": X},
        {"sequence_id": 991},
        "INVALID_ARGUMENT",
        "Sequence 991 is not open: it was never started",
    ),
    "oversize": ({"x": np.ones((1, 10000, 3), np.float32)}, {}, "RESOURCE_EXHAUSTED", "max"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_requests_get_status_codes_and_http_messages(grpc_client, triton_http, repo, case):
    arrays, parameters, status, fragment = BAD[case]
    err = grpc_error(
        grpc_client.infer, "lstm", inputs(tg, **arrays), model_version="1", **parameters
    )
    assert err.status() == f"StatusCode.{status}" and fragment in err.message()
    if status != "RESOURCE_EXHAUSTED":  # same message as over HTTP
        with pytest.raises(InferenceServerException) as over_http:
            triton_http.infer("lstm", inputs(th, **arrays), model_version="1", **parameters)
        assert over_http.value.message() == err.message()
    x = sample((1, 3, 3), seed=5)  # the server goes on serving
    got = grpc_client.infer("lstm", inputs(tg, x=x), model_version="1").as_numpy("y")
    np.testing.assert_allclose(got, whole_lstm(repo, x)["y"], atol=ATOL)


def test_session_table_full_is_unavailable(grpc_client):
    x = sample((1, 1, 3), seed=6)
    ids = range(5000, 5000 + MAX_SESSIONS)
    for seq_id in ids:
        grpc_client.infer(
            "lstm", inputs(tg, x=x), model_version="2", sequence_id=seq_id, sequence_start=True
        )
    try:
        err = grpc_error(
            grpc_client.infer,
            "lstm",
            inputs(tg, x=x),
            model_version="2",
            sequence_id=1,
            sequence_start=True,
        )
        assert err.status() == "StatusCode.UNAVAILABLE"
        assert f"Too many open sequences: {MAX_SESSIONS}" in err.message()
    finally:
        for seq_id in ids:
            grpc_client.infer(
                "lstm", inputs(tg, x=x), model_version="2", sequence_id=seq_id, sequence_end=True
            )


def test_grpc_port_in_use_is_refused(repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "keras_gates.cli", "serve", str(repo)]
        command += ["--port", "0", "--grpc-port", str(port)]
        done = children.run(command, timeout=120, check=False)
    assert done.returncode == 1
    assert (
        f"error: Received --grpc-port {port}, but 127.0.0.1:{port} cannot be bound" in done.stderr
    )
    assert "pick a free port" in done.stderr
