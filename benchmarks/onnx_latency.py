"""onnxruntime latency: keras-gates exports vs the stock Keras layers exported by ``model.export``.

One process; the four models are timed in alternation (round-robin, many rounds) so that machine
noise hits them alike. Batch 1 and 64, 100 steps, 32 features, 128 units, one intra-op thread.
Each gated layer gets the stock layer's weights (``from_keras``) and the outputs are compared.

    .venv/bin/python benchmarks/onnx_latency.py [--rounds 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from keras_gates import GatedGRU, GatedLSTM  # noqa: E402
from keras_gates.export import to_onnx  # noqa: E402

STEPS, FEATURES, UNITS = 100, 32, 128
BATCHES = (1, 64)


def build_pair(stock_cls, gated_cls, seed):
    """A stock model and a gated model with the same weights."""
    keras.utils.set_random_seed(seed)
    stock = keras.Sequential([keras.Input((None, FEATURES)), stock_cls(UNITS)])
    stock(np.zeros((1, 2, FEATURES), np.float32))  # model.export needs a called model
    gated_layer = gated_cls.from_keras(stock.layers[0])
    gated = keras.Sequential([keras.Input((None, FEATURES)), gated_layer])
    return stock, gated


def export_both(stock, gated, folder: Path, tag: str) -> dict[str, tuple[Path, float]]:
    paths = {}
    start = time.perf_counter()
    to_onnx(gated, folder / f"gated_{tag}.onnx", print_fn=None)
    paths[f"Gated{tag} (keras-gates)"] = (folder / f"gated_{tag}.onnx", time.perf_counter() - start)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        stock.export(str(folder / f"stock_{tag}.onnx"), format="onnx", verbose=False)
    paths[f"{tag} (model.export)"] = (folder / f"stock_{tag}.onnx", time.perf_counter() - start)
    return paths


def session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(sess, x):
    feeds = {}
    for spec in sess.get_inputs():
        feeds[spec.name] = np.full(x.shape[0], STEPS, np.int32) if spec.name == "lengths" else x
    return feeds


def op_summary(path: Path) -> str:
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return ", ".join(f"{op}={ops.count(op)}" for op in ("LSTM", "GRU", "Loop", "Scan") if op in ops)


def measure(sessions, x, rounds, per_round):
    """Median and p90 ms per run, alternating between the sessions every round."""
    times = {name: [] for name in sessions}
    for sess, feeds in sessions.values():  # warm-up
        for _ in range(3):
            sess.run(None, feeds)
    for _ in range(rounds):
        for name, (sess, feeds) in sessions.items():
            for _ in range(per_round):
                start = time.perf_counter()
                sess.run(None, feeds)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), float(np.percentile(t, 90))) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="keep the .onnx files here")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="onnx_latency_"))
    folder.mkdir(parents=True, exist_ok=True)

    models, exports = {}, {}
    for seed, (stock_cls, gated_cls, tag) in enumerate(
        [(keras.layers.LSTM, GatedLSTM, "LSTM"), (keras.layers.GRU, GatedGRU, "GRU")]
    ):
        stock, gated = build_pair(stock_cls, gated_cls, seed)
        for name, (path, seconds) in export_both(stock, gated, folder, tag).items():
            exports[name] = (path, seconds)
            models[name] = stock
    rng = np.random.default_rng(0)
    print(
        f"onnxruntime {ort.__version__}, 1 intra-op thread, {STEPS} steps, "
        f"{FEATURES} features, {UNITS} units, rounds={args.rounds}x{args.per_round}\n"
    )
    print(f"{'model':<24} {'export s':>8}  nodes")
    for name, (path, seconds) in exports.items():
        print(f"{name:<24} {seconds:>8.2f}  {op_summary(path)}")
    results = {}
    for batch in BATCHES:
        x = rng.normal(size=(batch, STEPS, FEATURES)).astype(np.float32)
        sessions = {}
        for name, (path, _) in exports.items():
            sess = session(path)
            sessions[name] = (sess, feeds_for(sess, x))
        outs = {n: s.run(None, f)[0] for n, (s, f) in sessions.items()}
        for tag in ("LSTM", "GRU"):
            diff = np.abs(outs[f"Gated{tag} (keras-gates)"] - outs[f"{tag} (model.export)"]).max()
            assert diff < 1e-4, f"{tag}: gated and stock exports disagree by {diff}"
        results[batch] = measure(sessions, x, args.rounds, args.per_round)
    print(f"\n{'model':<24} {'batch':>5} {'median ms':>10} {'p90 ms':>8}  vs stock")
    for batch, timings in results.items():
        for name, (median, p90) in timings.items():
            tag = "LSTM" if "LSTM" in name else "GRU"
            stock_median = timings[f"{tag} (model.export)"][0]
            ratio = f"{median / stock_median:.2f}x time" if "Gated" in name else ""
            print(f"{name:<24} {batch:>5} {median:>10.3f} {p90:>8.3f}  {ratio}")
    b1 = results[1]
    lstm_ratio = b1["GatedLSTM (keras-gates)"][0] / b1["LSTM (model.export)"][0]
    gru_speedup = b1["GRU (model.export)"][0] / b1["GatedGRU (keras-gates)"][0]
    print(
        f"\nbatch 1: GatedLSTM/LSTM time ratio {lstm_ratio:.3f} (target <= 1.05): "
        f"{'met' if lstm_ratio <= 1.05 else 'MISSED'}"
    )
    print(
        f"batch 1: GatedGRU speed-up over stock GRU {gru_speedup:.2f}x (target >= 3): "
        f"{'met' if gru_speedup >= 3 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
