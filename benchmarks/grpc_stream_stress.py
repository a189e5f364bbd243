"""gRPC streaming under stress: does a stream ever hang, or answer wrong?

Against one ``keras-gates serve --grpc-port`` subprocess of a small streaming LSTM (built with
``tests/serving_models.py``), the README's streaming pattern (a fresh ``tritonclient.grpc``
client, one sequence in chunks on one stream, ``stop_stream``, ``close``; every other stream
stopped right after sending) runs ``--sequential`` times one after another and ``--threads`` ×
``--per-thread`` times from threads at once; ``--vanishing`` clients cancel their stream or are
killed (SIGKILL) mid-sequence, whose sequence then goes on over a new stream; then SIGTERM
reaches a second server with ``--open-streams`` streams open and messages in flight, and a third
while ``--threads`` clients keep opening streams. Every answer
is compared with the model run on the whole sequence (``tests/grpc_stress.py``); every wait has
a 30 s timeout, after which the run fails with every thread's stack.

Last, the README's client block itself runs ``--readme-runs`` times, each in its own Python
process as a reader runs it (4 at a time), against a model of the README's shape; a process that
has not exited after ``--hang-s`` seconds counts as a hang and its stack is printed.
``--unclosed-runs`` runs the block as it was before it closed its client (which hung at
interpreter exit in about 1 run in 150) for comparison.

    python benchmarks/grpc_stream_stress.py [--sequential 500] [--threads 8] [--per-thread 50]
        [--vanishing 20] [--open-streams 32] [--readme-runs 100] [--unclosed-runs 0]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The README's block before it closed its client (what hung at interpreter exit).
UNCLOSED = """
import queue
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient("localhost:8001")
x = np.random.rand(1, 12, 4).astype("float32")
tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
tensor.set_data_from_numpy(x)
whole = client.infer("stream", [tensor]).as_numpy("y")
answers = queue.Queue()
client.start_stream(callback=lambda result, error: answers.put(error or result))
for i, chunk in enumerate(np.split(x, [4, 8], axis=1)):
    tensor = grpcclient.InferInput("x", list(chunk.shape), "FP32")
    tensor.set_data_from_numpy(chunk)
    client.async_stream_infer("stream", [tensor], sequence_id=42,
                              sequence_start=i == 0, sequence_end=i == 2)
last = [answers.get(timeout=10) for _ in range(3)][-1].as_numpy("y")
client.stop_stream()
print(np.abs(last - whole).max() < 1e-5)
"""


def readme_block() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return next(b for b in blocks if "start_stream" in b)


def timings(label: str, seconds: list[float], wall: float) -> None:
    ms = sorted(1000 * s for s in seconds)
    print(
        f"{label:<34} {len(ms):>5} streams, all answers right, {wall:6.1f} s wall, "
        f"{len(ms) / wall:6.0f}/s; per stream median {statistics.median(ms):.1f} ms, "
        f"p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms",
        flush=True,
    )


def run_processes(code: str, port: int, runs: int, hang_s: float) -> tuple[int, int, list[str]]:
    """``code`` (a README block, its port localized) in ``runs`` fresh processes, 4 at a time;
    returns (right, hung, stacks of the hung ones)."""
    code = code.replace("localhost:8001", f"127.0.0.1:{port}")
    watchdog = f"import faulthandler; faulthandler.dump_traceback_later({hang_s}, exit=True)\n"

    def one(k: int) -> tuple[str, str]:
        seq = code.replace("sequence_id=42", f"sequence_id={1_000_000 + k}")
        done = subprocess.run(
            [sys.executable, "-c", watchdog + seq],
            capture_output=True,
            text=True,
            timeout=hang_s + 60,
        )
        if "Timeout (" in done.stderr:
            return "hung", done.stderr
        return ("right" if done.returncode == 0 and done.stdout.strip() == "True" else "wrong"), (
            done.stdout + done.stderr
        )

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, range(runs)))
    wrong = [text for kind, text in outcomes if kind == "wrong"]
    if wrong:
        raise AssertionError(f"{len(wrong)} runs printed a wrong answer or failed:\n{wrong[0]}")
    hung = [text for kind, text in outcomes if kind == "hung"]
    return runs - len(hung), len(hung), hung


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--per-thread", type=int, default=50)
    parser.add_argument("--vanishing", type=int, default=20, help="cancelled and killed, each")
    parser.add_argument("--open-streams", type=int, default=32)
    parser.add_argument("--readme-runs", type=int, default=100)
    parser.add_argument("--unclosed-runs", type=int, default=0)
    parser.add_argument("--hang-s", type=float, default=30.0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests import grpc_stress as stress
    from tests.serving_models import grpc_port, make_rnn_model, serve_process

    flags = ["--no-request-log", "--max-batch-size", "8"]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        make_rnn_model(repo / "lstm" / "1" / "model.onnx", streaming=True, seed=0)
        make_rnn_model(repo / "stream" / "1" / "model.onnx", streaming=True, features=4, seed=1)
        with serve_process(repo, "--grpc-port", "0", *flags) as served:
            address, port = served.grpc_address, grpc_port(served)
            work = stress.workload(repo, args.sequential, seed=1)
            start = time.perf_counter()
            seconds = stress.sequential(address, work, "seq-")
            timings("one after another", seconds, time.perf_counter() - start)

            work = stress.workload(repo, args.threads * args.per_thread, seed=2)
            start = time.perf_counter()
            seconds = stress.concurrent(address, work, args.threads, "thr-")
            timings(f"{args.threads} threads at once", seconds, time.perf_counter() - start)

            work = stress.workload(repo, args.vanishing, seed=3)
            start = time.perf_counter()
            for k in range(args.vanishing):
                stress.cancelled_midway(address, work, k, f"cancelled-{k}")
                stress.killed_midway(address, work, k, f"killed-{k}")
            print(
                f"{'vanishing clients':<34} {2 * args.vanishing:>5} clients (half cancelled, "
                f"half killed) mid-sequence, each sequence finished right on a new stream, "
                f"{time.perf_counter() - start:.1f} s",
                flush=True,
            )
            if args.readme_runs or args.unclosed_runs:
                for label, code, runs in (
                    ("README block, one process each", readme_block(), args.readme_runs),
                    ("pre-fix block (client left open)", UNCLOSED, args.unclosed_runs),
                ):
                    if not runs:
                        continue
                    start = time.perf_counter()
                    right, hung, stacks = run_processes(code, port, runs, args.hang_s)
                    print(
                        f"{label:<34} {runs:>5} runs: {right} exited with the right answer, "
                        f"{hung} hung (> {args.hang_s:g} s), {time.perf_counter() - start:.1f} s",
                        flush=True,
                    )
                    if stacks:
                        print(stacks[0])

        with serve_process(repo, "--grpc-port", "0", *flags) as served:
            port, proc = grpc_port(served), served.proc
            work = stress.workload(repo, args.open_streams, seed=4, steps=40)
            shutdown = stress.sigterm_with_open_streams(port, proc, work, "term-")
        print(
            f"{'SIGTERM with streams open':<34} {args.open_streams:>5} streams: server exited "
            f"{shutdown.exit_s:.2f} s after SIGTERM; each answered {min(shutdown.answered)}-"
            f"{max(shutdown.answered)} of its messages right, then UNAVAILABLE",
            flush=True,
        )
        with serve_process(repo, "--grpc-port", "0", *flags) as served:
            port, proc = grpc_port(served), served.proc
            work = stress.workload(repo, args.threads * args.per_thread, seed=5)
            churn = stress.sigterm_during_churn(port, proc, work, args.threads, "churn-")
        ends = ", ".join(f"{n} {kind!r}" for kind, n in churn.errors.most_common())
        print(
            f"{'SIGTERM while clients open streams':<34} {args.threads:>5} clients: "
            f"{churn.complete} streams right, then each client's next stream ended ({ends}); "
            f"server exited {churn.exit_s:.2f} s after SIGTERM",
            flush=True,
        )


if __name__ == "__main__":
    main()
