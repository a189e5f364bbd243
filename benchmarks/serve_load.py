"""Load benchmark of ``keras-gates serve`` over HTTP and gRPC on loopback, next to NVIDIA Triton.

    python benchmarks/serve_load.py            # 4 s per cell, 1.5 to 4 minutes
    python benchmarks/serve_load.py --quick    # 2 s per cell, 1 to 2 minutes

One command gives the serving table of the README: ``keras-gates serve`` with batching on (at
most 32 rows) driven over HTTP with JSON bodies, HTTP with binary tensors, gRPC ``ModelInfer``
(raw tensors) and gRPC ``ModelStreamInfer`` (a streamed sequence of ``--chunks`` chunks per
client, next to the same sequence over HTTP, one request per chunk) at concurrency 1, 8 and 32;
then the same server with batching off (``--max-batch-size 1``) for HTTP binary and gRPC unary at
the highest concurrency. Every cell is driven by the closed-loop clients of ``load_clients.py``
(the same generator for every transport, so that they compare; ``--http-client wrk`` drives the
HTTP unary cells with wrk instead). Each row gives throughput, p50/p99 latency, errors, the server
process's CPU time per request, the average rows per model call (from the model's ``/stats``)
and the client processes' CPU use. In-process onnxruntime on the same model at batch 1 and 32
(one thread, as the server's) is measured before and after the servers as the ceiling, and the
issue's ratios are printed last, as markdown tables ready for the README.

With ``--servers keras-gates,triton`` a real Triton (``tritonserver`` 2.51 from the
``nvidia-pytriton`` wheel, set up by ``tests/triton_server.py``) follows, serving the repository
``keras-gates export --triton-backend python`` writes for the same model (onnxruntime inside
Triton's Python backend, dynamic batching, one instance, one onnxruntime thread), over HTTP.
``--workers 1,2`` adds servers with more processes; ``--rounds N`` gives each cell's medians.

The model is the issue's reference: an LSTM of 128 units + Dense(1) on 100-step sequences of 32
features, built with ``tests/serving_models.py`` (native ONNX LSTM with a lengths input), unless
``--model`` names another .onnx file with a ``x``/``lengths`` signature.
"""

from __future__ import annotations

import argparse
import functools
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
SERVERS = ("keras-gates", "triton")
GRPC_CELLS = ("unary", "stream", "none")


def build_model(directory: Path, units: int, features: int, streaming: bool = False) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.serving_models import make_rnn_model

    name = "stream" if streaming else "model"
    return make_rnn_model(
        directory / name / "1" / "model.onnx",
        units=units,
        features=features,
        outputs=1,
        per_step=False,
        streaming=streaming,
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
    command += ["--workers", str(workers), "--grpc-port", str(port + 1)]
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

    reason = triton_server.unsupported()
    if reason:
        raise RuntimeError(f"no Triton on this machine: {reason}")
    env = triton_server.ensure()["env"]
    repo = work / "triton_repo"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    folder = write_triton_repo(model, repo, "model", backend="python", execution_env=str(env))
    config = folder / "config.pbtxt"
    param = f'parameters {{ key: "intra_op_threads" value {{ string_value: "{threads}" }} }}\n'
    config.write_text(config.read_text() + param)
    server = triton_server.TritonServer(repo, work / "triton.log", http_port=port)
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
            r = json.loads(line[len("RESULT ") :])
            return {
                "rps": r["requests"] / (r["duration_us"] / 1e6),
                "seconds": r["duration_us"] / 1e6,
                "p50_ms": r["p50_us"] / 1000,
                "p99_ms": r["p99_us"] / 1000,
                "errors": r["status_errors"] + r["socket_errors"],
                "client_cores": None,
            }
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an .onnx model (default: build the reference)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per cell (default 4)")
    parser.add_argument("--quick", action="store_true", help="2 s per cell (1 to 2 minutes)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated connections")
    parser.add_argument("--bodies", default="json,binary", help="json, binary or both")
    parser.add_argument(
        "--http-client",
        default="clients",
        choices=("clients", "wrk"),
        help="what drives the HTTP unary cells: load_clients.py (the generator of the gRPC cells, "
        "so that transports compare; default) or wrk",
    )
    parser.add_argument("--batch-sizes", default="32,1", help="server --max-batch-size values")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="server --max-queue-delay-ms")
    parser.add_argument("--threads", type=int, default=1, help="server onnxruntime threads")
    parser.add_argument("--workers", default="1", help="server --workers values, e.g. 1,2")
    parser.add_argument(
        "--servers", default="keras-gates", help="keras-gates, triton or keras-gates,triton"
    )
    parser.add_argument("--rounds", type=int, default=1, help="turns per server; table: medians")
    parser.add_argument("--port", type=int, default=8765, help="HTTP port; gRPC on the next one")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument(
        "--grpc",
        default="unary,stream",
        help="cells on the first keras-gates server: unary, stream, both, or none",
    )
    parser.add_argument("--chunks", type=int, default=10, help="chunks per streamed sequence")
    parser.add_argument("--client-processes", type=int, default=4, help="load generator processes")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 2.0
    checks = {
        "servers": (args.servers, SERVERS),
        "grpc": (args.grpc, GRPC_CELLS),
        "bodies": (args.bodies, ("json", "binary")),
    }
    for name, (value, allowed) in checks.items():
        if not value or any(item not in allowed for item in value.split(",")):
            parser.error(
                f"Received an invalid value for argument `--{name}`, expected a comma-separated "
                f"list of {', '.join(allowed)}, got {value!r}"
            )
    if args.rounds < 1:
        parser.error(
            f"Received an invalid value for argument `--rounds`, expected >= 1, got {args.rounds}"
        )
    if args.http_client == "wrk" and shutil.which("wrk") is None:
        parser.error("--http-client wrk: wrk is missing; install it (apt-get install -y wrk)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or build_model(work / "repo", args.units, args.features)
        plain = work / "plain"
        (plain / "model" / "1").mkdir(parents=True)
        (plain / "model" / "1" / "model.onnx").symlink_to(model.resolve())
        streaming = args.model is None and "stream" in args.grpc
        if streaming:  # the streaming export next to the plain one (one worker only)
            build_model(work / "repo", args.units, args.features, streaming=True)
        bodies = write_bodies(work, args.steps, args.features)
        ceiling = {
            b: [in_process(model, args.steps, args.features, args.threads, b)] for b in (1, 32)
        }
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
            for n, (server, workers, max_batch) in enumerate(servers):
                if server == "triton":
                    proc, url = start_triton(model, work, args.port, args.threads)
                    pid = None  # the Python backend runs in a stub process of its own
                else:
                    repo = work / "repo" if streaming and workers == 1 else plain
                    proc, url = start_server(
                        repo, args.port, max_batch, args.delay_ms, args.threads, workers
                    )
                    pid = proc.pid if workers == 1 else None  # other workers are children
                first = n == 0 and server == "keras-gates"
                cells = server_cells(args, url, bodies, first, repo is not plain, server)
                try:
                    for label, c, stats_model, measure in cells:
                        before = server_cpu(pid), batch_counts(url, stats_model, server)
                        result = measure()
                        result["server_ms"] = per_request(pid, before[0], result)
                        result["rows"] = rows_per_batch(
                            before[1], batch_counts(url, stats_model, server)
                        )
                        cell = (server, workers, max_batch, label, c)
                        results.setdefault(cell, []).append(result)
                        print_row(*cell, result, flush=True)
                finally:
                    if server == "triton":
                        proc.stop()
                    else:
                        stop_server(proc)
        for b in (1, 32):
            ceiling[b].append(in_process(model, args.steps, args.features, args.threads, b))
        rows = [(*cell, median(runs)) for cell, runs in results.items()]
        print_table(rows, args.rounds)
        print_ceiling(ceiling)
        print_goals(rows, ceiling)
    return 0


HTTP_LABELS = {"json": "HTTP JSON", "binary": "HTTP binary"}


def server_cells(args, url: str, bodies, first: bool, streaming: bool, server: str) -> list:
    """``(label, concurrency, model for /stats, measure)`` of one server's cells: every transport
    at every concurrency on the first keras-gates server; HTTP binary and gRPC unary at the
    highest concurrency on the other keras-gates servers (batching off: the ratio); HTTP on
    Triton."""
    import load_clients

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    spec = client_spec(url, args.steps, args.features, args.chunks)
    drive = functools.partial(load_clients.drive, seconds=args.duration)
    drive = functools.partial(drive, processes=args.client_processes)
    cells = []
    for kind in args.bodies.split(","):
        for c in concurrencies if first or server == "triton" else concurrencies[-1:]:
            if kind == "json" and not (first or server == "triton"):
                continue
            if args.http_client == "wrk":
                measure = functools.partial(run_wrk, url, bodies[kind], c, args.duration)
                label = f"{HTTP_LABELS[kind]} (wrk)"
            else:
                mode = "http-unary" if kind == "binary" else "http-json"
                measure = functools.partial(drive, mode, spec, c)
                label = HTTP_LABELS[kind]
            cells.append((label, c, "model", measure))
    if server == "triton":
        return cells
    if "unary" in args.grpc:
        for c in concurrencies if first else concurrencies[-1:]:
            cells.append(
                ("gRPC unary", c, "model", functools.partial(drive, "grpc-unary", spec, c))
            )
    if streaming and first:
        for c in concurrencies:
            for mode, label in (("grpc-stream", "gRPC stream"), ("http-stream", "HTTP stream")):
                measure = functools.partial(drive, mode, spec, c)
                cells.append((f"{label}, per chunk", c, "stream", measure))
    return cells


def client_spec(url: str, steps: int, features: int, chunks: int) -> dict:
    """What ``load_clients.drive`` needs to reach a server started by :func:`start_server`."""
    port = int(url.rsplit(":", 1)[1])
    return {
        "http": f"127.0.0.1:{port}",
        "grpc": f"127.0.0.1:{port + 1}",
        "model": "model",
        "stream_model": "stream",
        "steps": steps,
        "features": features,
        "chunks": chunks,
    }


def batch_counts(url: str, model: str, server: str) -> tuple[int, int] | None:
    """The model's ``(inference_count, execution_count)`` from its Triton-style ``/stats``."""
    if server != "keras-gates":
        return None
    import urllib.request

    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as response:
        stats = json.loads(response.read())["model_stats"][0]
    return stats["inference_count"], stats["execution_count"]


def rows_per_batch(before, after) -> float | None:
    """Average rows per model call between two :func:`batch_counts`."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def server_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, every thread) the server process has used."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_request(pid: int | None, before: float, result: dict) -> float | None:
    """Server CPU milliseconds per request of a cell (``None`` where one pid is not the server)."""
    requests = result["rps"] * result.get("seconds", 0)
    if pid is None or not requests:
        return None
    return (server_cpu(pid) - before) * 1000 / requests


def median(runs: list[dict]) -> dict:
    """The median of each figure over rounds (errors: the total)."""
    merged = {"errors": sum(r["errors"] for r in runs)}
    for key in ("rps", "p50_ms", "p99_ms", "server_ms", "client_cores", "rows"):
        values = [r[key] for r in runs if r.get(key) is not None]
        merged[key] = float(np.median(values)) if values else None
    return merged


def _figure(value, digits: int = 2, none: str = "-") -> str:
    return none if value is None else f"{value:.{digits}f}"


def print_row(server, workers, max_batch, kind, c, r, flush=False) -> None:
    batching = "on " if max_batch > 1 else "off"
    print(
        f"{server:<11} workers {workers} batching {batching} {kind:<24} c={c:<3} "
        f"{r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
        f"errors {r['errors']}  server CPU {_figure(r.get('server_ms'))} ms/req  "
        f"rows/batch {_figure(r.get('rows'), 1)}  client CPU {_figure(r['client_cores'])} cores",
        flush=flush,
    )


def print_table(rows, rounds: int) -> None:
    if rounds > 1:
        print(f"\nmedians of {rounds} rounds (errors: total)")
    several = len({(server, workers) for server, workers, *_ in rows}) > 1
    lead = "| server | workers " if several else ""
    print(
        f"\n{lead}| batching | transport | concurrency | req/s | p50 (ms) | p99 (ms) | errors "
        "| server CPU (ms/req) | rows/batch | client CPU (cores) |"
    )
    print(("|---|---:" if several else "") + "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for server, workers, max_batch, kind, c, r in rows:
        batching = f"on (max {max_batch})" if max_batch > 1 else "off"
        lead = f"| {server} | {workers} " if several else ""
        print(
            f"{lead}| {batching} | {kind} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} | {_figure(r.get('server_ms'))} | "
            f"{_figure(r.get('rows'), 1)} | {_figure(r['client_cores'], none='wrk')} |"
        )


def print_ceiling(ceiling: dict) -> None:
    for batch, runs in ceiling.items():
        text = ", ".join(f"{rate:.0f} seq/s ({ms:.2f} ms/call)" for rate, ms in runs)
        print(f"in-process onnxruntime batch {batch:>2} (before, after the servers): {text}")


def print_goals(rows, ceiling: dict) -> None:
    """The issue's ratios, from the first keras-gates server (and the batching-off one)."""
    on, off = {}, {}
    for server, workers, max_batch, kind, c, r in rows:
        if server == "keras-gates" and workers == rows[0][1]:
            (on if max_batch > 1 else off)[(kind, c)] = r
    top = max((c for _, c in on), default=None)
    ort32 = float(np.mean([rate for rate, _ in ceiling[32]]))

    def rate(table, kind, c=top):
        found = table.get((kind, c)) or table.get((f"{kind} (wrk)", c))
        return found and found["rps"]

    def ratio(a, b):
        return a / b if a and b else None

    def cpu(kind):
        found = on.get((kind, top))
        return found and found.get("server_ms")

    stream = cpu("gRPC stream, per chunk"), cpu("HTTP stream, per chunk")
    c1 = on.get(("HTTP binary", 1)) or on.get(("HTTP binary (wrk)", 1))
    goals = [
        (
            "gRPC unary / HTTP binary req/s",
            ratio(rate(on, "gRPC unary"), rate(on, "HTTP binary")),
            ">= 0.9",
        ),
        ("server CPU per chunk, gRPC stream / HTTP stream", ratio(*stream), "<= 1"),
        (
            "HTTP binary / in-process onnxruntime at batch 32",
            ratio(rate(on, "HTTP binary"), ort32),
            ">= 0.45",
        ),
        (
            "HTTP JSON / in-process onnxruntime at batch 32",
            ratio(rate(on, "HTTP JSON"), ort32),
            ">= 0.35",
        ),
        (
            "HTTP binary, batching on / off",
            ratio(rate(on, "HTTP binary"), rate(off, "HTTP binary")),
            ">= 1.5",
        ),
        (
            "gRPC unary, batching on / off",
            ratio(rate(on, "gRPC unary"), rate(off, "gRPC unary")),
            "-",
        ),
    ]
    print(f"\n| ratio at c={top} | measured | goal |\n|---|---:|---|")
    for label, value, goal in goals:
        print(f"| {label} | {_figure(value)} | {goal} |")
    if c1:
        print(f"| HTTP binary p50 at c=1 (ms) | {c1['p50_ms']:.2f} | about 1 ms or less |")


if __name__ == "__main__":
    sys.exit(main())
