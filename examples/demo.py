"""`make demo`: the whole keras-gates path on the sunspot series, end to end.

train a GatedLSTM -> read its gates -> inspection report -> ONNX export with validation ->
Predictor -> v2 inference server on loopback, queried plain and streamed -> stop.
Exits non-zero if any step fails. Artefacts go to ``--out`` (default ``artifacts/``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # export traces on the CPU path
os.environ.setdefault("MPLBACKEND", "Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sunspots import SCALE, load_windows  # noqa: E402

from keras_gates import GatedLSTM  # noqa: E402

WINDOW = 24


def banner(step: str) -> None:
    print(f"\n=== {step} " + "=" * max(0, 70 - len(step)), flush=True)


def train(data, epochs: int, out: Path) -> keras.Model:
    banner(f"1. train GatedLSTM(16) on sunspots 1700-{data.years_test[0] - 1}")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((WINDOW, 1)), GatedLSTM(16, name="gated_lstm"), keras.layers.Dense(1)],
        name="sunspots",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=2)
    path = out / "sunspots.keras"
    model.save(path)
    print(f"saved {path}")
    return model


def show_gates(model: keras.Model) -> None:
    banner("2. open the gates: learned forget-gate bias per unit")
    layer = model.get_layer("gated_lstm")
    bias = layer.get_gate_weights()["forget"]["bias"]
    print("unit  forget bias  sigmoid (share of the cell state kept per step at zero input)")
    for unit, value in enumerate(bias):
        print(f"{unit:4d}  {value:+11.3f}  {1 / (1 + np.exp(-value)):.3f}")


def evaluate(model: keras.Model, data) -> np.ndarray:
    banner(f"3. forecast the held-out years {data.years_test[0]}-{data.years_test[-1]}")
    pred = model.predict(data.x_test, verbose=0)
    naive = data.x_test[:, -1]
    mae, naive_mae = (np.abs(p - data.y_test).mean() * SCALE for p in (pred, naive))
    print(f"mean absolute error: GatedLSTM {mae:.1f} sunspots, last-value forecast {naive_mae:.1f}")
    return pred


def inspect_gates(model: keras.Model, data, out: Path) -> None:
    banner("4. inspect every gate: saturation statistics, plots, HTML report")
    from keras_gates.inspect import write_report

    paths = write_report(model, data.x_test, out / "inspect")
    print(f"report: {paths['html']}")


def export(model: keras.Model, data, out: Path) -> tuple[Path, Path]:
    banner("5. export to ONNX (one native LSTM node), validated against Keras")
    from keras_gates.export import Predictor, to_onnx, write_triton_repo

    plain = to_onnx(model, out / "sunspots.onnx")
    print(f"wrote {plain.path}: nodes {plain.op_counts}")
    streaming = to_onnx(model, out / "sunspots_streaming.onnx", streaming=True)
    print(f"wrote {streaming.path} (state inputs/outputs for chunked streaming)")
    repo = out / "model_repository"
    repo.mkdir(exist_ok=True)
    write_triton_repo(plain.path, repo, "sunspots")
    write_triton_repo(streaming.path, repo, "sunspots_stream")
    print(f"Triton model repository: {repo}")
    predictor = Predictor(plain.path)
    (forecast,) = predictor.predict(data.x_test[-1:]).values()
    print(
        f"Predictor on {predictor.provider}: {data.years_test[-1]} forecast "
        f"{forecast.item() * SCALE:.1f} (truth {data.y_test[-1].item() * SCALE:.1f})"
    )
    return repo, plain.path


def serve_and_query(repo: Path, onnx_path: Path, model: keras.Model, data, out: Path) -> None:
    banner("6. serve on loopback (Open Inference Protocol v2) and query with tritonclient")
    import tritonclient.http as http

    from keras_gates.export import read_signature

    port = _free_port()
    log_path = out / "server.log"
    command = [sys.executable, "-m", "keras_gates.cli", "serve", str(repo), "--port", str(port)]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = http.InferenceServerClient(f"127.0.0.1:{port}")
        _wait_until_ready(client, server, log_path)
        print(f"server ready on http://127.0.0.1:{port} (log: {log_path})")
        signature = read_signature(onnx_path)
        seq_name = signature.inputs_with("sequence")[0].name
        out_name = signature.outputs_with("output")[0].name

        def infer(model_name, x, **sequence):
            inputs = [
                http.InferInput(seq_name, list(x.shape), "FP32"),
                http.InferInput("lengths", [len(x)], "INT32"),
            ]
            inputs[0].set_data_from_numpy(x)
            inputs[1].set_data_from_numpy(np.full(len(x), x.shape[1], np.int32))
            result = client.infer(model_name, inputs, **sequence)
            return result.as_numpy(out_name)

        x = data.x_test[-5:]
        served = infer("sunspots", x)
        local = model.predict(x, verbose=0)
        print("year  truth  keras  served (one v2 request, binary tensors)")
        for year, truth, k, s in zip(data.years_test[-5:], data.y_test[-5:], local, served):
            print(f"{year}  {truth[0] * SCALE:5.1f}  {k[0] * SCALE:5.1f}  {s[0] * SCALE:6.1f}")
        chunks = np.split(x[-1:], 3, axis=1)  # the last window, 8 years per request
        for i, chunk in enumerate(chunks):
            streamed = infer(
                "sunspots_stream",
                chunk,
                sequence_id=2008,
                sequence_start=i == 0,
                sequence_end=i == len(chunks) - 1,
            )
            print(
                f"streamed chunk {i + 1}/{len(chunks)}: forecast so far "
                f"{streamed[0, 0] * SCALE:.1f}"
            )
        gap = abs(streamed[0, 0] - local[-1, 0])
        print(f"streamed in 3 chunks = whole window: |difference| = {gap:.2e}")
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
    parser.add_argument("--quick", action="store_true", help="a few epochs, for the test suite")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_windows(WINDOW)
    model = train(data, 2 if args.quick else args.epochs, args.out)
    show_gates(model)
    evaluate(model, data)
    inspect_gates(model, data, args.out)
    repo, onnx_path = export(model, data, args.out)
    serve_and_query(repo, onnx_path, model, data, args.out)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; artefacts in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
