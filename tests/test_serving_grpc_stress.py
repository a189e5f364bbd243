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
