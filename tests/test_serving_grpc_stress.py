"""A gRPC stream never hangs: the README's streaming pattern a hundred times in a row and from
8 threads at once, clients that vanish mid-sequence, and SIGTERM with streams open, against a
``keras-gates serve`` subprocess; every answer is compared with the model's, every wait has a
timeout (``tests/grpc_stress.py``; ``benchmarks/grpc_stream_stress.py`` runs more of each)."""

from __future__ import annotations

import pytest

from tests.grpc_stress import (
    cancelled_midway,
    concurrent,
    killed_midway,
    sequential,
    sigterm_during_churn,
    sigterm_with_open_streams,
    workload,
)
from tests.serving_models import grpc_port, serve_process

pytestmark = pytest.mark.slow  # hundreds of streams, server processes: not in make check


def test_streams_one_after_another(grpc_served, repo):
    work = workload(repo, 100, seed=20)
    assert len(sequential(grpc_served[1], work, "one-after-another-")) == 100


def test_streams_from_eight_threads_at_once(grpc_served, repo):
    work = workload(repo, 80, seed=21)
    assert len(concurrent(grpc_served[1], work, 8, "eight-threads-")) == 80


def test_a_cancelled_stream_leaves_its_sequence_to_go_on(grpc_served, repo):
    cancelled_midway(grpc_served[1], workload(repo, 1, seed=22), 0, "cancelled")


def test_a_killed_client_leaves_its_sequence_to_go_on(grpc_served, repo):
    killed_midway(grpc_served[1], workload(repo, 1, seed=23), 0, "killed")


def test_sigterm_with_open_streams_ends_them_and_exits(repo):
    with serve_process(repo, "--grpc-port", "0", "--no-request-log") as served:
        port, proc = grpc_port(served), served.proc
        shutdown = sigterm_with_open_streams(port, proc, workload(repo, 8, seed=24), "term-")
    assert len(shutdown.answered) == 8 and min(shutdown.answered) >= 1


def test_sigterm_while_clients_keep_opening_streams(repo):
    with serve_process(repo, "--grpc-port", "0", "--no-request-log") as served:
        port, proc = grpc_port(served), served.proc
        churn = sigterm_during_churn(port, proc, workload(repo, 160, seed=25), 8, "churn-")
    assert churn.complete >= 16 and churn.ended == 8  # each client: 2 right, then the end


def test_shutdown_after_the_client_half_closed_still_ends_the_stream():
    """SIGTERM between a client's half-close and its last answer: the stream still answers and
    ends (shutdown once cancelled the reader while it waited for the last answers, so the end
    was never queued and the stream stayed open until the grace period ran out)."""
    import asyncio
    import types

    from tritonclient.grpc import service_pb2

    from keras_gates.serving.grpc_server import _Stream

    async def scenario():
        release, exhausted = asyncio.Event(), asyncio.Event()

        class Service:  # answers once released
            server = types.SimpleNamespace(ready=True)

            async def infer(self, request, context, path, admitted, response):
                await release.wait()
                response.id = request.id  # written into the stream's message, as GrpcService
                return response

        async def requests():  # one message, then the client half-closes
            yield service_pb2.ModelInferRequest(id="last")
            exhausted.set()

        stream = _Stream(Service(), requests(), None)
        await asyncio.wait_for(exhausted.wait(), 10)  # the reader now waits for the answer
        stream.shutdown()  # SIGTERM
        release.set()
        first = await asyncio.wait_for(stream.queue.get(), 10)
        end = await asyncio.wait_for(stream.queue.get(), 10)
        return first, end, stream.shut_down

    first, end, shut_down = asyncio.run(scenario())
    assert first.infer_response.id == "last" and end is None
    assert not shut_down  # nothing the client sent was refused: the stream ends with OK


def test_shutdown_before_the_stream_read_anything_still_ends_it():
    """A stream opened as SIGTERM arrives (shut down before its reader ever ran) ends at once
    (its reader, cancelled before it started, once never ended it)."""
    import asyncio

    from keras_gates.serving.grpc_server import _Stream

    async def scenario():
        async def requests():  # a client that keeps its stream open and sends nothing
            await asyncio.Event().wait()
            yield

        stream = _Stream(None, requests(), None)
        stream.shutdown()
        return await asyncio.wait_for(stream.queue.get(), 10), stream.shut_down

    assert asyncio.run(scenario()) == (None, True)


def test_a_message_read_before_sigterm_is_answered_not_refused(repo):
    """A stream's message read just before SIGTERM, whose answer had not started, gets its
    answer (it once got "The server is shutting down", refused like a new request)."""
    import asyncio
    import types

    import numpy as np
    from tritonclient.grpc import service_pb2

    from keras_gates.serving import ModelRepository, ModelRuntime, ServerConfig
    from keras_gates.serving.grpc_server import GrpcService, _Stream
    from keras_gates.serving.server import InferenceServer
    from tests.serving_fixtures import ATOL
    from tests.serving_models import run_direct

    path = repo / "dense" / "1" / "model.onnx"
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    server = InferenceServer(
        ModelRepository({"dense": {"1": ModelRuntime(path, "dense")}}), ServerConfig()
    )
    server.phase = "ready"
    request = service_pb2.ModelInferRequest(model_name="dense", id="read")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(x.tobytes())

    async def scenario():
        streams = []

        async def requests():
            yield request
            server.phase = "stopping"  # SIGTERM, after the read, before the answer ran
            streams[0].shutdown()
            await asyncio.Event().wait()
            yield

        streams.append(_Stream(GrpcService(server), requests(), types.SimpleNamespace(peer=str)))
        answer = await asyncio.wait_for(streams[0].queue.get(), 10)
        end = await asyncio.wait_for(streams[0].queue.get(), 10)
        return answer, end, streams[0].shut_down

    try:
        answer, end, shut_down = asyncio.run(scenario())
    finally:
        server.close()
    assert answer.error_message == "" and end is None and shut_down
    y = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32).reshape(1, -1)
    np.testing.assert_allclose(y, run_direct(path, {"x": x})["y"], atol=ATOL)
