"""`make demo`: the whole keras-gates path on the sunspot series, end to end.

train a GatedLSTM -> open its forget gate -> inspection report -> ONNX export with validation ->
Predictor -> v2 inference server on loopback, queried plain and streamed -> stop the server.
Exits non-zero if any step fails. Artefacts go to ``--out`` (default ``artifacts/``).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import sunspots_forecast as forecast
from streaming_client import stream_series
from sunspots import SCALE, load_windows


def serve_and_query(repo: Path, model, data, out: Path) -> None:
    """Start `keras-gates serve` on loopback, query it with tritonclient, compare, stop it."""
    forecast.banner("serve on loopback (Open Inference Protocol v2), query with tritonclient")
    import tritonclient.http as http

    port = _free_port()
    log_path = out / "server.log"
    command = [sys.executable, "-m", "keras_gates.cli", "serve", str(repo), "--port", str(port)]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = http.InferenceServerClient(f"127.0.0.1:{port}")
        _wait_until_ready(client, server, log_path)
        print(f"server ready on http://127.0.0.1:{port} (log: {log_path})")
        x = data.x_test[-5:]
        inputs = [
            http.InferInput("input", list(x.shape), "FP32"),
            http.InferInput("lengths", [len(x), 1], "INT32"),  # [B, 1], as on Triton
        ]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(np.full((len(x), 1), x.shape[1], np.int32))
        served = client.infer("sunspots", inputs).as_numpy("dense")
        local = model.predict(x, verbose=0)
        print("year  truth  keras  served (one v2 request, binary tensors, 5 sequences)")
        for year, truth, k, s in zip(data.years_test[-5:], data.y_test[-5:], local, served):
            print(f"{year}  {truth[0] * SCALE:5.1f}  {k[0] * SCALE:5.1f}  {s[0] * SCALE:6.1f}")
        print("the last window streamed as a v2 sequence, 8 years per request:")
        for step, value in stream_series(client, "sunspots_stream", x[-1], 2008, chunk=8):
            print(f"  after {step:2d} years: forecast {value * SCALE:5.1f}")
        gap = abs(value - local[-1, 0])
        print(f"streamed = whole window: |difference| = {gap:.1e}")
        if gap > 1e-4 or np.abs(served - local).max() > 1e-4:
            raise RuntimeError("served forecasts differ from Keras")
    finally:
        server.terminate()
        server.wait(timeout=30)
        print("server stopped")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_ready(client, server, log_path: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited early; see {log_path}")
        try:
            if client.is_server_ready():
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s; see {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="2 epochs, for the test suite")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_windows(forecast.WINDOW)
    model = forecast.train(data, 2 if args.quick else args.epochs, args.out)
    forecast.show_forget_gate(model)
    forecast.evaluate(model, data)
    report = forecast.inspect_gates(model, data, args.out)
    np.save(args.out / "samples.npy", data.x_test)  # what `keras-gates inspect --input` reads
    repo = forecast.export(model, data, args.out)
    serve_and_query(repo, model, data, args.out)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s. Artefacts in {args.out}/:")
    for path in (
        args.out / "sunspots.keras",
        args.out / "samples.npy",
        report,
        args.out / "sunspots.onnx",
        args.out / "sunspots_streaming.onnx",
        repo,
        args.out / "server.log",
    ):
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
