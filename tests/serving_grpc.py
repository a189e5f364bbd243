"""Shared by the gRPC transport tests and ``benchmarks/grpc_stream_stress.py``: a ``keras-gates
serve --grpc-port`` subprocess of the serving test repository, stock ``tritonclient`` clients of
both transports, and stream helpers whose every wait has a timeout."""

from __future__ import annotations

import queue
import sys
import threading
import traceback

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


def thread_stacks() -> str:
    """Every thread's Python stack (what a stuck wait is waiting on)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}"
        for ident, frame in sys._current_frames().items()
    )


def within(timeout: float, what: str, call, *args) -> None:
    """``call(*args)`` in a daemon thread; fails naming ``what`` and every thread's stack when it
    has not returned after ``timeout`` seconds (a hang becomes a failure, not a stuck suite)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call(*args)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            errors.append(err)

    worker = threading.Thread(target=run, name=what, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise AssertionError(f"{what} did not return within {timeout:g} s\n{thread_stacks()}")
    if errors:
        raise errors[0]


class Stream:
    """A ``start_stream`` of a fresh client whose callback fills a queue."""

    def __init__(self, address: str):
        self.client = tg.InferenceServerClient(address)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def send(self, model: str, x: np.ndarray, **kwargs) -> None:
        self.client.async_stream_infer(model, inputs(tg, x=x), **kwargs)

    def get(self, timeout: float = 30):
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no answer and no end of the stream within {timeout:g} s\n{thread_stacks()}"
            ) from None

    def stop(self, timeout: float = 30) -> None:
        """``stop_stream``: half-close, then wait until the server has answered and ended it.
        When it does not, the call is cancelled (so that tritonclient's stream thread, not a
        daemon, lets the process exit) and the test fails."""
        try:
            within(timeout, "stop_stream", self.client.stop_stream)
        except AssertionError:
            within(timeout, "stop_stream(cancel_requests=True)", self.client.stop_stream, True)
            raise

    def close(self, timeout: float = 30) -> None:
        """Stop the stream and close the client's channel (before the interpreter exits: see
        the README's gRPC section), each within ``timeout``."""
        self.stop(timeout)
        within(timeout, "InferenceServerClient.close", self.client.close)


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


def stream_sequence(
    address: str,
    model: str,
    seq_id,
    parts: list[np.ndarray],
    *,
    early_stop=False,
    timeout=30.0,
    **kwargs,
) -> list:
    """The README's streaming client: a fresh client whose stream carries one sequence in
    ``parts``, its answers awaited, then ``stop_stream`` and ``close`` (``early_stop``: the stream
    is stopped right after sending, and must still answer every part before it ends). Returns
    the results in order; raises the first error answer."""
    stream = Stream(address)
    results = []
    try:
        send_sequence(stream, model, seq_id, parts, **kwargs)
        if early_stop:
            stream.stop(timeout)
        for _ in parts:
            result, error = stream.get(timeout)
            if error is not None:  # an error answer, or the end of the stream
                raise error
            results.append(result)
    finally:
        stream.close(timeout)
    ids = [result.get_response().id for result in results]
    assert ids == [f"{seq_id}/{i}" for i in range(len(parts))], ids
    return results
