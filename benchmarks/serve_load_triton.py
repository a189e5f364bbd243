"""Load benchmark of ``keras-gates serve`` and of NVIDIA Triton with ``wrk`` on loopback.

Starts one server at a time: ``keras-gates serve`` (batching on, then off; with each ``--workers``
count), then a real Triton (``tritonserver`` 2.51 from the ``nvidia-pytriton`` wheel, set up by
``tests/triton_server.py``) serving the repository ``keras-gates export --triton-backend python``
writes for the same model (onnxruntime inside Triton's Python backend, dynamic batching, one
instance, one onnxruntime thread). Drives ``/infer`` with wrk (the same bodies: one sequence per
request, JSON and binary) at concurrency 1, 8 and 32 for a bounded time per cell, and prints
throughput, p50/p99 latency and errors next to in-process onnxruntime on the same model.

The model is the issue's reference: an LSTM of 128 units + Dense(1) on 100-step sequences of 32
features, built with ``tests/serving_models.py`` (native ONNX LSTM with a lengths input), unless
``--model`` names another .onnx file with a ``x``/``lengths`` signature.

Needs ``wrk`` (Debian: ``apt-get install -y wrk``); this script installs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "serve_load.lua"


def build_model(directory: Path, units: int, features: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.serving_models import make_rnn_model

    return make_rnn_model(
        directory / "model.onnx", units=units, features=features, outputs=1, per_step=False
    )


def write_bodies(directory: Path, steps: int, features: int) -> dict[str, tuple[Path, str]]:
    """One JSON and one binary request body for one sequence; returns {kind: (file, hdr len)}."""
    x = np.random.default_rng(0).standard_normal((1, steps, features)).astype(np.float32)
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape)}
    json_body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    bodies = {"json": (json_body, ""), "binary": (header + x.tobytes(), str(len(header)))}
    found = {}
    for kind, (body, header_length) in bodies.items():
        path = directory / f"body.{kind}"
        path.write_bytes(body)
        found[kind] = (path, header_length)
    return found


def start_server(model: Path, port: int, max_batch: int, delay_ms: float, threads: int, workers=1):
    command = [sys.executable, "-m", "keras_gates.cli", "serve", str(model), "--port", str(port)]
    command += ["--max-batch-size", str(max_batch), "--max-queue-delay-ms", str(delay_ms)]
    command += ["--threads", str(threads), "--no-request-log", "--log-level", "warning"]
    command += ["--workers", str(workers)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready in 120 s")


def start_triton(model: Path, work: Path, port: int, threads: int):
    """Triton serving ``model`` as ``model`` (Python-backend flavour); returns (server, url)."""
    sys.path.insert(0, str(ROOT))
    from keras_gates.export.triton import write_triton_repo
    from tests import triton_server
    from tests.serving_models import free_port

    reason = triton_server.unsupported()
    if reason:
        raise RuntimeError(f"no Triton on this machine: {reason}")
    env = triton_server.ensure()["env"]
    repo = work / "triton_repo"
    repo.mkdir(exist_ok=True)
    folder = write_triton_repo(model, repo, "model", backend="python", execution_env=str(env))
    config = folder / "config.pbtxt"
    param = f'parameters {{ key: "intra_op_threads" value {{ string_value: "{threads}" }} }}\n'
    config.write_text(config.read_text() + param)
    server = triton_server.TritonServer(repo, port, free_port(), work / "triton.log")
    return server.__enter__(), server.url


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_wrk(url: str, body: tuple[Path, str], connections: int, seconds: float) -> dict:
    env = {**os.environ, "BODY_FILE": str(body[0]), "HEADER_LENGTH": body[1]}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    command += ["-s", str(LUA), f"{url}/v2/models/model/infer"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


def in_process(model: Path, steps: int, features: int, threads: int, batch: int, seconds=1.0):
    """Sequences per second and ms per call of onnxruntime.run at ``batch``, in this process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, steps, features)).astype(np.float32)
    feeds = {"x": x, "lengths": np.full(batch, steps, np.int32)}
    session.run(None, feeds)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feeds)
        calls += 1
    elapsed = time.perf_counter() - start
    return calls * batch / elapsed, elapsed / calls * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an .onnx model (default: build the reference)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per cell (default 4)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated connections")
    parser.add_argument("--bodies", default="json,binary", help="json, binary or both")
    parser.add_argument("--batch-sizes", default="32,1", help="server --max-batch-size values")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="server --max-queue-delay-ms")
    parser.add_argument("--threads", type=int, default=1, help="server onnxruntime threads")
    parser.add_argument("--workers", default="1", help="server --workers values, e.g. 1,2")
    parser.add_argument(
        "--servers", default="keras-gates,triton", help="keras-gates, triton or both (default)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="turns per server; the table shows medians"
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--units", type=int, default=128)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("serve_load: wrk is missing; install it (Debian: apt-get install -y wrk).")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or build_model(work, args.units, args.features)
        bodies = write_bodies(work, args.steps, args.features)
        servers = []
        if "keras-gates" in args.servers.split(","):
            servers += [
                ("keras-gates", int(w), int(b))
                for w in args.workers.split(",")
                for b in args.batch_sizes.split(",")
            ]
        if "triton" in args.servers.split(","):
            servers.append(("triton", 1, 64))
        results: dict[tuple, list[dict]] = {}
        for _ in range(args.rounds):  # servers take turns, one at a time
            for server, workers, max_batch in servers:
                if server == "triton":
                    proc, url = start_triton(model, work, args.port, args.threads)
                else:
                    proc, url = start_server(
                        model, args.port, max_batch, args.delay_ms, args.threads, workers
                    )
                try:
                    for kind in args.bodies.split(","):
                        for c in [int(c) for c in args.concurrency.split(",")]:
                            result = run_wrk(url, bodies[kind], c, args.duration)
                            cell = (server, workers, max_batch, kind, c)
                            results.setdefault(cell, []).append(result)
                            print_row(*cell, result, flush=True)
                finally:
                    if server == "triton":
                        proc.stop()
                    else:
                        stop_server(proc)
        rows = [(*cell, median(runs)) for cell, runs in results.items()]
        print_table(rows)
        for batch in (1, 32):
            rate, ms = in_process(model, args.steps, args.features, args.threads, batch)
            print(f"in-process onnxruntime batch {batch:>2}: {rate:8.0f} seq/s ({ms:.2f} ms/call)")
    return 0


def median(runs: list[dict]) -> dict:
    """The median of each figure over rounds (errors: the total)."""
    merged = {key: float(np.median([r[key] for r in runs])) for key in ("rps", "p50_us", "p99_us")}
    for key in ("status_errors", "socket_errors"):
        merged[key] = sum(r[key] for r in runs)
    return merged


def print_row(server, workers, max_batch, kind, c, r, flush=False) -> None:
    batching = "on " if max_batch > 1 else "off"
    errors = r["status_errors"] + r["socket_errors"]
    print(
        f"{server:<11} workers {workers} batching {batching} {kind:<6} c={c:<3} "
        f"{r['rps']:8.0f} req/s  "
        f"p50 {r['p50_us'] / 1000:7.2f} ms  p99 {r['p99_us'] / 1000:7.2f} ms  errors {errors}",
        flush=flush,
    )


def print_table(rows) -> None:
    print(
        "\n| server | workers | batching | body | concurrency | req/s | p50 ms | p99 ms | errors |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for server, workers, max_batch, kind, c, r in rows:
        errors = r["status_errors"] + r["socket_errors"]
        batching = f"on (max {max_batch})" if max_batch > 1 else "off"
        print(
            f"| {server} | {workers} | {batching} | {kind} | {c} | {r['rps']:.0f} | "
            f"{r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {errors} |"
        )


if __name__ == "__main__":
    sys.exit(main())
