"""Triton's Python-backend flavour under mixed-length traffic, with and without ragged batching.

One real Triton (``tritonserver`` 2.51 from the ``nvidia-pytriton`` wheel, set up by
``tests/triton_server.py``) serves two copies of the repository ``write_triton_repo(...,
backend="python")`` writes for the reference model (LSTM 128 units + Dense(1), 32 features): the
default export (``allow_ragged_batch: true`` on ``x`` and ``lengths``, so requests of different
lengths reach one ``execute()`` and model.py pads them into one onnxruntime call) and the same
export with the flag cleared (Triton's dynamic batcher then only batches requests of equal
shape). ``--clients`` closed-loop HTTP clients (binary tensors, one sequence per request, a random
length in ``--min-steps..--max-steps`` each) drive each model in turn for ``--duration`` seconds,
``--rounds`` turns; the table shows medians, requests per ``execute()`` (Triton's statistics) and
the ratio of the two throughputs measured side by side in the same run.

    python benchmarks/triton_ragged.py [--clients 8] [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = (("ragged", True), ("same_shape", False))


def write_repo(model: Path, repo: Path, env: str) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from keras_gates.export.triton import write_triton_repo

    for name, ragged in MODELS:
        folder = write_triton_repo(model, repo, name, backend="python", execution_env=env)
        config = text_format.Parse(
            (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert all(t.allow_ragged_batch for t in config.input), "the default export is ragged"
        for tensor in config.input:
            tensor.allow_ragged_batch = ragged
        (folder / "config.pbtxt").write_text(text_format.MessageToString(config))


def drive(url: str, model: str, args: argparse.Namespace, seed: int) -> dict:
    """``args.clients`` closed-loop clients for ``args.duration`` seconds."""
    import tritonclient.http as http

    host = url.removeprefix("http://")
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + args.duration

    def client(k: int) -> None:
        rng = np.random.default_rng(seed * 100 + k)
        connection = http.InferenceServerClient(host)
        mine = []
        try:
            while time.perf_counter() < stop:
                steps = int(rng.integers(args.min_steps, args.max_steps + 1))
                x = rng.standard_normal((1, steps, args.features)).astype(np.float32)
                tensor = http.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                start = time.perf_counter()
                try:
                    connection.infer(model, [tensor])
                except Exception:  # noqa: BLE001 - counted and shown in the table
                    with lock:
                        errors[0] += 1
                    continue
                mine.append(time.perf_counter() - start)
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    stats = http.InferenceServerClient(host)
    before = stats.get_inference_statistics(model)["model_stats"][0]
    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    after = stats.get_inference_statistics(model)["model_stats"][0]
    stats.close()
    executions = after["execution_count"] - before["execution_count"]
    ms = np.array(latencies) * 1000
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "per_execute": (after["inference_count"] - before["inference_count"]) / max(executions, 1),
        "errors": errors[0],
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=3, help="turns per model; table: medians")
    parser.add_argument("--min-steps", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--units", type=int, default=128)
    args = parser.parse_args(argv)
    if not 1 <= args.min_steps <= args.max_steps:
        parser.error(
            "Received an invalid value for arguments `--min-steps`/`--max-steps`, expected "
            f"1 <= min <= max, got {args.min_steps} and {args.max_steps}"
        )
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serve_load import build_model

    from tests import triton_server

    reason = triton_server.unsupported()
    if reason:
        print(f"triton_ragged: no Triton on this machine: {reason}")
        return 2
    env = str(triton_server.ensure()["env"])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model(work / "source", args.units, args.features)
        write_repo(model, work / "repo", env)
        server = triton_server.TritonServer(work / "repo", work / "log")
        runs: dict[str, list[dict]] = {name: [] for name, _ in MODELS}
        with server:
            for round_ in range(args.rounds):
                for name, _ in MODELS:
                    result = drive(server.url, name, args, seed=round_)
                    runs[name].append(result)
                    print(
                        f"{name:<10} round {round_}: {result['rps']:7.0f} req/s  "
                        f"p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms  "
                        f"{result['per_execute']:.2f} req/execute  errors {result['errors']}",
                        flush=True,
                    )
    medians = {
        name: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for name, rs in runs.items()
    }
    print(
        f"\n{args.clients} clients, lengths {args.min_steps}..{args.max_steps}, medians of "
        f"{args.rounds} rounds of {args.duration:g} s\n"
    )
    print("| allow_ragged_batch | req/s | p50 ms | p99 ms | requests per execute() | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ragged in MODELS:
        m = medians[name]
        print(
            f"| {'true (default export)' if ragged else 'false'} | {m['rps']:.0f} | "
            f"{m['p50']:.2f} | {m['p99']:.2f} | {m['per_execute']:.2f} | {m['errors']:.0f} |"
        )
    ratio = medians["ragged"]["rps"] / medians["same_shape"]["rps"]
    print(f"\nthroughput ratio ragged / same-shape: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
