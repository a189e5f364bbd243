"""The gRPC streaming stress workload ("a gRPC stream never hangs"), shared by the bounded
``tests/test_serving_grpc_stress.py`` and the full ``benchmarks/grpc_stream_stress.py``.

Every scenario drives the README's streaming pattern (a fresh ``tritonclient.grpc`` client, one
sequence in chunks on one stream, ``stop_stream``, ``close``) against a ``keras-gates serve
--grpc-port`` subprocess of the serving test repository's streaming ``lstm`` model, and compares
every answer with that model run on the whole sequence by a fresh onnxruntime session. Every wait
has a timeout: a hang fails with every thread's stack (``tests/serving_grpc.within``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tritonclient.utils import InferenceServerException

from tests.serving_fixtures import ATOL
from tests.serving_grpc import (
    Stream,
    chunks_of,
    stream_sequence,
    whole_lstm,
    within,
)

MODEL, VERSION, FEATURES = "lstm", "1", 3  # the streaming model of the serving test repository
TIMEOUT = 30.0  # seconds any one wait may take before the scenario fails as a hang
_VERSION = {"model_version": VERSION}


@dataclasses.dataclass
class Workload:
    """``n`` sequences, each cut in chunks, and the model's answers on the whole sequences."""

    xs: np.ndarray  # [n, steps, FEATURES]
    sizes: list[list[int]]  # chunk lengths of each sequence
    expected: dict[str, np.ndarray]  # y_steps [n, steps, 2], y [n, 2]

    def parts(self, k: int) -> list[np.ndarray]:
        return chunks_of(self.xs[k : k + 1], self.sizes[k])

    def check(self, k: int, results: list, first: int = 0) -> None:
        """Results of chunks ``first, first + 1, ...`` of sequence ``k`` equal the whole run's
        steps they cover (and ``y`` after the last chunk)."""
        start = sum(self.sizes[k][:first])
        for i, result in enumerate(results, first):
            stop = start + self.sizes[k][i]
            want = self.expected["y_steps"][k : k + 1, start:stop]
            np.testing.assert_allclose(result.as_numpy("y_steps"), want, atol=ATOL)
            start = stop
        if results and first + len(results) == len(self.sizes[k]):
            want_y = self.expected["y"][k : k + 1]
            np.testing.assert_allclose(results[-1].as_numpy("y"), want_y, atol=ATOL)


def workload(repo: Path, n: int, seed: int, steps: int = 12, chunks: int = 3) -> Workload:
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((n, steps, FEATURES)).astype(np.float32)
    sizes = []
    for _ in range(n):
        cuts = np.sort(rng.choice(np.arange(1, steps), chunks - 1, replace=False))
        sizes.append(np.diff([0, *cuts, steps]).tolist())
    return Workload(xs, sizes, whole_lstm(repo, xs, VERSION))


def one_stream(address: str, work: Workload, k: int, seq_id: str, early_stop: bool) -> float:
    """Sequence ``k`` on its own stream, checked; returns its wall time."""
    start = time.perf_counter()
    results = stream_sequence(
        address,
        MODEL,
        seq_id,
        work.parts(k),
        early_stop=early_stop,
        timeout=TIMEOUT,
        model_version=VERSION,
    )
    work.check(k, results)
    return time.perf_counter() - start


def sequential(address: str, work: Workload, prefix: str) -> list[float]:
    """Every sequence on its own stream, one after another; every other one stops its stream
    right after sending (the server answers every chunk before it ends the stream)."""
    return [one_stream(address, work, k, f"{prefix}{k}", k % 2 == 1) for k in range(len(work.xs))]


def concurrent(address: str, work: Workload, threads: int, prefix: str) -> list[float]:
    """The same from ``threads`` threads at once (each its own client and stream)."""
    with ThreadPoolExecutor(threads) as pool:
        futures = [
            pool.submit(one_stream, address, work, k, f"{prefix}{k}", k % 2 == 1)
            for k in range(len(work.xs))
        ]
        return [f.result(timeout=TIMEOUT * len(work.xs)) for f in futures]


def cancelled_midway(address: str, work: Workload, k: int, seq_id: str) -> None:
    """A client has two chunks of sequence ``k`` answered, sends a message that is still in
    flight (another sequence's) and cancels its stream (no ``sequence_end``); the third chunk
    then goes on a new stream and must continue from the state the cancelled stream left."""
    parts = work.parts(k)
    stream = Stream(address)
    try:
        stream.send(MODEL, parts[0], sequence_id=seq_id, sequence_start=True, **_VERSION)
        stream.send(MODEL, parts[1], sequence_id=seq_id, **_VERSION)
        answered = [stream.get(TIMEOUT) for _ in range(2)]
        lost = f"{seq_id}-lost"
        stream.send(MODEL, parts[2], sequence_id=lost, sequence_start=True, model_version=VERSION)
        within(TIMEOUT, "stop_stream(cancel_requests=True)", stream.client.stop_stream, True)
    finally:
        stream.close(TIMEOUT)
    assert [e for _, e in answered] == [None, None]
    work.check(k, [r for r, _ in answered])
    _finish(address, work, k, seq_id)


_VANISHING_CLIENT = """
import json, sys, queue
import numpy as np
import tritonclient.grpc as grpcclient

address, seq_id, parts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = grpcclient.InferenceServerClient(address)
answers = queue.Queue()
client.start_stream(callback=lambda result, error: answers.put(error or result))
for i, part in enumerate(parts):
    chunk = np.array(part, np.float32)
    tensor = grpcclient.InferInput("x", list(chunk.shape), "FP32")
    tensor.set_data_from_numpy(chunk)
    client.async_stream_infer("lstm", [tensor], model_version="1", sequence_id=seq_id,
                              sequence_start=i == 0)
for _ in parts:
    answers.get(timeout=30).as_numpy("y_steps")
print("answered", flush=True)
sys.stdin.read()  # killed here, with its stream open and no sequence_end
"""


def killed_midway(address: str, work: Workload, k: int, seq_id: str) -> None:
    """A client process sends the first two chunks of sequence ``k``, has them answered and is
    killed (SIGKILL: its connection drops, no ``sequence_end``); the third chunk then goes on a
    new stream and must continue from the state the killed client left."""
    parts = work.parts(k)
    args = [address, seq_id, json.dumps([p.tolist() for p in parts[:2]])]
    child = subprocess.Popen(
        [sys.executable, "-c", _VANISHING_CLIENT, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _readline(child, TIMEOUT)
        assert line == "answered\n", f"the client failed: {line!r} {child.stderr.read()}"
    finally:
        child.kill()
        child.communicate(timeout=TIMEOUT)
    _finish(address, work, k, seq_id)


def _finish(address: str, work: Workload, k: int, seq_id: str) -> None:
    """The last chunk of sequence ``k`` on a new stream, checked."""
    stream = Stream(address)
    try:
        last = work.parts(k)[-1]
        stream.send(MODEL, last, sequence_id=seq_id, sequence_end=True, model_version=VERSION)
        result, error = stream.get(TIMEOUT)
    finally:
        stream.close(TIMEOUT)
    assert error is None, error
    work.check(k, [result], first=len(work.sizes[k]) - 1)


def _readline(child: subprocess.Popen, timeout: float) -> str:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(child.stdout.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


@dataclasses.dataclass
class Shutdown:
    """What SIGTERM with streams open did: how long the server took to exit and, per stream,
    how many chunks were answered before the stream ended with UNAVAILABLE."""

    exit_s: float
    answered: list[int]


def sigterm_with_open_streams(port: int, proc, work: Workload, prefix: str) -> Shutdown:
    """One stream per sequence of ``work``; each has its first chunk answered, then sends the
    rest one step per message, and SIGTERM arrives with those in flight. The server must exit
    within the timeout (its grace is 30 s); every stream must end with UNAVAILABLE after answers
    that are right (its first chunks, in order)."""
    address = f"127.0.0.1:{port}"
    streams = [Stream(address) for _ in work.xs]
    steps = work.xs.shape[1]
    answers: list[list] = [[] for _ in streams]
    try:
        for k, stream in enumerate(streams):
            first = work.parts(k)[0]
            stream.send(MODEL, first, sequence_id=f"{prefix}{k}", sequence_start=True, **_VERSION)
            result, error = stream.get(TIMEOUT)
            assert error is None, error
            answers[k].append(result)
        for k, stream in enumerate(streams):
            for t in range(work.sizes[k][0], steps):
                x = work.xs[k : k + 1, t : t + 1]
                stream.send(MODEL, x, sequence_id=f"{prefix}{k}", **_VERSION)
        started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(TIMEOUT)
        exit_s = time.perf_counter() - started
        assert code == -signal.SIGTERM, code  # uvicorn re-raises it once shut down
        for k, stream in enumerate(streams):
            while (answer := stream.get(TIMEOUT))[1] is None:
                answers[k].append(answer[0])
            assert "StatusCode.UNAVAILABLE" in str(answer[1]), answer[1]
            assert "The server is shutting down" in str(answer[1])
            one_step = [work.sizes[k][0]] + [1] * (steps - work.sizes[k][0])
            Workload(work.xs[k : k + 1], [one_step], _row(work.expected, k)).check(0, answers[k])
    finally:
        for stream in streams:
            stream.close(TIMEOUT)
    return Shutdown(exit_s, [len(a) for a in answers])


def _row(expected: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    return {name: value[k : k + 1] for name, value in expected.items()}


@dataclasses.dataclass
class Churn:
    """What SIGTERM did to clients that kept opening streams: how many streams finished with
    every answer right, how many ended with an error (refused or ended by the shutdown), and
    how long the server took to exit."""

    complete: int
    ended: int
    errors: collections.Counter
    exit_s: float


def sigterm_during_churn(port: int, proc, work: Workload, threads: int, prefix: str) -> Churn:
    """``threads`` clients run the README pattern over and over (every other stream stopped
    right after sending) until SIGTERM, sent once each has finished ``warmup`` streams; each
    then runs until a stream of its fails. No client may hang, every stream that finished
    must be right, and the server must exit."""
    address, warmup = f"127.0.0.1:{port}", 2
    finished = threading.Semaphore(0)
    terminated = threading.Event()
    lock = threading.Lock()
    counts = {"complete": 0, "ended": 0}
    errors: collections.Counter = collections.Counter()

    def client(t: int) -> None:
        for n, k in enumerate(range(t, len(work.xs), threads)):
            try:
                results = stream_sequence(
                    address, MODEL, f"{prefix}{k}", work.parts(k), early_stop=k % 2 == 1, **_VERSION
                )
            except InferenceServerException as err:
                assert terminated.is_set(), err  # only the shutdown may end a stream
                with lock:
                    counts["ended"] += 1
                    errors[_kind(err)] += 1
                return
            work.check(k, results)
            with lock:
                counts["complete"] += 1
            if n + 1 == warmup:
                finished.release()
        raise AssertionError(f"client {t} ran out of sequences before the server went away")

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(client, t) for t in range(threads)]
        for _ in range(threads):
            assert finished.acquire(timeout=TIMEOUT), "the clients did not get going"
        started = time.perf_counter()
        terminated.set()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(TIMEOUT)
        exit_s = time.perf_counter() - started
        for future in futures:
            future.result(timeout=TIMEOUT)
    assert code == -signal.SIGTERM, code
    return Churn(counts["complete"], counts["ended"], errors, exit_s)


def _kind(err: InferenceServerException) -> str:
    """A short name for how a stream ended (for the benchmark's counts)."""
    text = str(err)
    for kind in ("shutting down", "UNAVAILABLE", "no longer in valid state", "CANCELLED"):
        if kind in text:
            return kind
    return text[:80]
