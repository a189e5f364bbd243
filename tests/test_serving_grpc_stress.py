"""A gRPC stream never hangs: the README's streaming pattern a hundred times in a row and from
8 threads at once, clients that vanish mid-sequence, and SIGTERM with streams open, against a
``keras-gates serve`` subprocess; every answer is compared with the model's, every wait has a
timeout (``tests/grpc_stress.py``; ``benchmarks/grpc_stream_stress.py`` runs more of each)."""

from __future__ import annotations

from tests.grpc_stress import (
    cancelled_midway,
    concurrent,
    killed_midway,
    sequential,
    sigterm_with_open_streams,
    workload,
)
from tests.serving_models import free_port, serve_process


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
    port = free_port()
    with serve_process(repo, "--grpc-port", str(port), "--no-request-log") as (_, proc):
        shutdown = sigterm_with_open_streams(port, proc, workload(repo, 8, seed=24), "term-")
    assert len(shutdown.answered) == 8 and min(shutdown.answered) >= 1


def test_shutdown_after_the_client_half_closed_still_ends_the_stream():
    """SIGTERM between a client's half-close and its last answer: the stream still answers and
    ends (shutdown once cancelled the reader while it waited for the last answers, so the end
    was never queued and the stream stayed open until the grace period ran out)."""
    import asyncio

    from tritonclient.grpc import service_pb2

    from keras_gates.serving.grpc_server import _Stream

    async def scenario():
        release, exhausted = asyncio.Event(), asyncio.Event()

        class Service:  # answers once released
            async def infer(self, request, context, path):
                await release.wait()
                return service_pb2.ModelInferResponse(id=request.id)

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
