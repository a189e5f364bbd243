"""One gRPC client for both servers: the same ``tritonclient.grpc`` code against a real NVIDIA
Triton's gRPC port (Python-backend repository) and against ``keras-gates serve --grpc-port`` on
the same folder: health, metadata, a padded batch, a sequence streamed over one bidirectional
stream in chunks (equal to the whole sequence and to onnxruntime on the file), and a bad request.
"""

from __future__ import annotations

import queue

import numpy as np
import pytest

from tests import triton_server
from tests.reference import FP32_ATOL
from tests.triton_fixtures import assert_same_classes, reference, sample

pytestmark = pytest.mark.slow  # child processes or real servers: make test, not make check

if triton_server.unsupported():  # printed with -ra, the suite's default
    pytest.skip(f"no real Triton here: {triton_server.unsupported()}", allow_module_level=True)

SERVERS = ("triton", "keras-gates")


@pytest.fixture(params=SERVERS)
def client(request, grpc_urls):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_urls[request.param])
    yield client
    client.close()


def _inputs(x: np.ndarray, lengths: np.ndarray | None = None) -> list:
    """The request tensors both servers get (``lengths`` as ``[B, 1]``, the advertised form)."""
    import tritonclient.grpc as grpcclient

    tensors = [grpcclient.InferInput("x", list(x.shape), "FP32")]
    tensors[0].set_data_from_numpy(x)
    if lengths is not None:
        column = lengths.astype(np.int32).reshape(-1, 1)
        tensors.append(grpcclient.InferInput("lengths", list(column.shape), "INT32"))
        tensors[1].set_data_from_numpy(column)
    return tensors


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("plain") and client.is_model_ready("stream")
    metadata = client.get_model_metadata("plain", as_json=True)
    assert {t["name"] for t in metadata["inputs"]} >= {"x", "lengths"}
    assert {t["name"] for t in metadata["outputs"]} >= {"y", "y_steps"}


def test_padded_batch(client, sources):
    x = sample((3, 7, 3), seed=61)
    lengths = np.array([7, 4, 2])
    result = client.infer("plain", _inputs(x, lengths))
    want = reference(sources, "plain", x, lengths)
    np.testing.assert_allclose(result.as_numpy("y"), want["y"], atol=FP32_ATOL)


def test_sequence_streamed_on_one_stream_equals_whole(client, sources):
    x = sample((1, 9, 3), seed=62)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    cuts = [(0, 4), (4, 5), (5, 9)]
    try:
        for i, (a, b) in enumerate(cuts):
            client.async_stream_infer(
                "stream",
                _inputs(np.ascontiguousarray(x[:, a:b])),
                sequence_id=77,
                sequence_start=i == 0,
                sequence_end=i == len(cuts) - 1,
            )
        got = [answers.get(timeout=30) for _ in cuts]
    finally:
        client.stop_stream()
    assert not [g for g in got if isinstance(g, Exception)], got
    want = reference(sources, "stream", x, np.array([9]))
    np.testing.assert_allclose(got[-1].as_numpy("y"), want["y"], atol=FP32_ATOL)
    steps = np.concatenate([g.as_numpy("y_steps") for g in got], axis=1)
    np.testing.assert_allclose(steps, want["y_steps"], atol=FP32_ATOL)


def test_unknown_input_is_invalid_argument(client):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    bad = grpcclient.InferInput("nope", [1, 2, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(InferenceServerException) as error:
        client.infer("plain", [bad])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_ready()  # and it keeps serving


def test_classification_agrees(grpc_urls, sources):
    """The same ``class_count`` request to both servers' gRPC ports: the same classes, labels
    and scores, as BYTES in ``raw_output_contents``."""
    import tritonclient.grpc as grpcclient

    x = sample((2, 5, 3), seed=63)
    values = reference(sources, "labelled", x, np.full(2, 5))
    answers = {}
    for server, address in grpc_urls.items():
        with grpcclient.InferenceServerClient(address) as client:
            outputs = [
                grpcclient.InferRequestedOutput("y", class_count=3),
                grpcclient.InferRequestedOutput("y_steps", class_count=4),
            ]
            result = client.infer("labelled", _inputs(x), outputs=outputs)
            answers[server] = {name: result.as_numpy(name) for name in ("y", "y_steps")}
    for name, k in (("y", 3), ("y_steps", 4)):
        assert_same_classes(answers["keras-gates"][name], answers["triton"][name], values[name], k)
