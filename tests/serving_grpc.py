"""Shared by the gRPC transport tests: a ``keras-gates serve --grpc-port`` subprocess of the
serving test repository, stock ``tritonclient`` clients of both transports, and a stream helper."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serving_fixtures import lstm_reference
from tests.serving_models import serve_process

MAX_SESSIONS = 32


@pytest.fixture(scope="module")
def grpc_served(repo):
    """``(http address, grpc address)`` of one server with both transports."""
    flags = ["--grpc-port", "0", "--max-batch-size", "8", "--max-queue-delay-ms", "5"]
    flags += ["--max-body-mb", "0.0625", "--max-sessions", str(MAX_SESSIONS), "--no-request-log"]
    with serve_process(repo, *flags) as served:
        yield served.url.removeprefix("http://"), served.grpc_address


@pytest.fixture(scope="module")
def grpc_client(grpc_served):
    with tg.InferenceServerClient(grpc_served[1]) as c:
        yield c


@pytest.fixture(scope="module")
def triton_http(grpc_served):
    c = th.InferenceServerClient(grpc_served[0])
    yield c
    c.close()


def inputs(module, **arrays):
    """``InferInput`` s of ``module`` (tritonclient.grpc or .http) from numpy arrays."""
    found = []
    for name, array in arrays.items():
        datatype = "INT32" if array.dtype == np.int32 else "FP32"
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        found.append(tensor)
    return found


def chunks_of(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1], axis=1)


def whole_lstm(repo, x: np.ndarray, version: str = "1") -> dict[str, np.ndarray]:
    return lstm_reference(repo, x, version)


def grpc_error(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


class Stream:
    """A ``start_stream`` of a fresh client whose callback fills a queue."""

    def __init__(self, address: str):
        self.client = tg.InferenceServerClient(address)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def send(self, model: str, x: np.ndarray, **kwargs) -> None:
        self.client.async_stream_infer(model, inputs(tg, x=x), **kwargs)

    def get(self, timeout: float = 30):
        return self.results.get(timeout=timeout)

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def send_sequence(stream: Stream, model: str, seq_id, parts: list[np.ndarray], **kwargs) -> None:
    for i, part in enumerate(parts):
        stream.send(
            model,
            part,
            sequence_id=seq_id,
            sequence_start=i == 0,
            sequence_end=i == len(parts) - 1,
            request_id=f"{seq_id}/{i}",
            **kwargs,
        )
