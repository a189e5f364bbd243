"""int8 export vs float32 vs onnxruntime's ``quantize_dynamic``: size, latency, accuracy.

One process, one command. For GatedLSTM and GatedGRU models of 128 and 512 units (32 features ->
one gated layer -> Dense(16)) it writes three files: the float32 export, the int8 export
(``to_onnx(..., quantize="int8")``) and the float32 export quantized by hand with
``onnxruntime.quantization.quantize_dynamic`` (default settings: the reference a user would
otherwise use). Latency: batch 1 and 64, 100 steps, one intra-op thread, the three sessions timed
in alternation (round-robin) and the median kept, so that machine noise hits them alike.
Accuracy: max abs error against Keras on 64 sequences of 100 steps, run one by one (batch 1) and
as one batch (batch 64), relative to the range of Keras' outputs. Then the sunspot demo's model
(examples/sunspots_forecast.py) is trained and its forecast error on the held-out years is
reported for Keras, float32 and int8.

    .venv/bin/python benchmarks/quantize.py [--rounds 11] [--epochs 40] [--out DIR]
    .venv/bin/python benchmarks/quantize.py --crossover [--kind GRU] [--units 64] [--batches 1,2]

``--crossover`` measures where the int8 design stops beating float32, by units and batch
(``--units``, ``--batches``: comma-separated lists): ``DynamicQuantizeLSTM`` against the
``LSTM`` (``--kind LSTM``, ``export/lstm_int8.py``) or the ``Loop`` of int8 steps against the
``GRU`` (``--kind GRU``, ``export/gru_loop.py``); each export switches to float32 where it loses.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
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

STEPS, FEATURES, HEAD = 100, 32, 16
BATCHES = (1, 64)
LAYERS = {"LSTM": GatedLSTM, "GRU": GatedGRU}
UNITS = (128, 512)
VARIANTS = ("float32", "int8", "quantize_dynamic")
CROSSOVER_UNITS = {"LSTM": "32,48,64,96,128,256,512", "GRU": "256,384,512,768,1024"}
CROSSOVER_BATCHES = "1,2,3,4,5,6,8,16,64"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def build(kind: str, units: int) -> keras.Model:
    keras.utils.set_random_seed(units)
    x = keras.Input((None, FEATURES), name="x")
    y = keras.layers.Dense(HEAD, name="dense")(LAYERS[kind](units, name="rnn")(x))
    return keras.Model(x, y)


def write_variants(model: keras.Model, folder: Path, tag: str) -> dict[str, Path]:
    """The three files of one model."""
    from onnxruntime.quantization import quantize_dynamic

    paths = {v: folder / f"{tag}_{v}.onnx" for v in VARIANTS}
    to_onnx(model, paths["float32"], print_fn=None)
    to_onnx(model, paths["int8"], quantize="int8", print_fn=None)
    quantize_dynamic(str(paths["float32"]), str(paths["quantize_dynamic"]))
    return paths


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": x, "lengths": np.full(len(x), x.shape[1], np.int32)}


def latencies(sessions: dict[str, ort.InferenceSession], rounds: int) -> dict:
    """``{(variant, batch): median seconds}``, the variants timed in alternation."""
    rng = np.random.default_rng(1)
    times: dict = {}
    for batch in BATCHES:
        x = feeds(rng.normal(size=(batch, STEPS, FEATURES)).astype(np.float32))
        for s in sessions.values():  # warm-up: session start, constant folding, packing
            s.run(None, x)
        for _ in range(rounds * (5 if batch == 1 else 1)):  # batch 1 is cheap: more rounds
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, x)
                times.setdefault((name, batch), []).append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def relative_error(model: keras.Model, sessions: dict[str, ort.InferenceSession]) -> dict:
    """``{variant: (error at batch 1, error at batch 64)}``: max abs error against Keras over
    the range of Keras' outputs, on 64 sequences run one by one and all together (the int8 LSTM
    takes its int8 branch for the first, its float32 branch for the second)."""
    x = np.random.default_rng(2).normal(size=(64, STEPS, FEATURES)).astype(np.float32)
    want = np.asarray(model(x, training=False))
    scale = float(np.ptp(want))
    errors = {}
    for name, s in sessions.items():
        alone = np.concatenate([s.run(None, feeds(x[i : i + 1]))[0] for i in range(len(x))])
        together = s.run(None, feeds(x))[0]
        errors[name] = tuple(float(np.abs(got - want).max()) / scale for got in (alone, together))
    return errors


def measure(rounds: int, folder: Path) -> list[dict]:
    rows = []
    for kind in LAYERS:
        for units in UNITS:
            model = build(kind, units)
            paths = write_variants(model, folder, f"{kind}{units}")
            sessions = {v: session(p) for v, p in paths.items()}
            times = latencies(sessions, rounds)
            errors = relative_error(model, sessions)
            for v in VARIANTS:
                rows.append(
                    {
                        "model": f"Gated{kind}({units})",
                        "variant": v,
                        "bytes": paths[v].stat().st_size,
                        "ratio": paths[v].stat().st_size / paths["float32"].stat().st_size,
                        "b1": times[(v, 1)],
                        "b64": times[(v, 64)],
                        "speed1": times[("float32", 1)] / times[(v, 1)],
                        "speed64": times[("float32", 64)] / times[(v, 64)],
                        "error1": errors[v][0],
                        "error64": errors[v][1],
                    }
                )
            print(f"measured Gated{kind}({units})", file=sys.stderr, flush=True)
    return rows


def crossover(
    rounds: int, folder: Path, kind: str, widths: list[int], batches: list[int]
) -> str:
    """float32 time / int8 design time by units and batch (> 1: int8 faster)."""
    lines = []
    lines.append("| units | " + " | ".join(f"batch {b}" for b in batches) + " |")
    lines.append("|---:|" + "---:|" * len(batches))
    for units in widths:
        paths = {v: folder / f"cross{units}_{v}.onnx" for v in ("float32", "int8")}
        to_onnx(build(kind, units), paths["float32"], print_fn=None)
        onnx.save(int8_branch_only(onnx.load(paths["float32"]), kind), paths["int8"])
        sessions = {v: session(p) for v, p in paths.items()}
        rng, ratios = np.random.default_rng(3), []
        for batch in batches:
            x = feeds(rng.normal(size=(batch, STEPS, FEATURES)).astype(np.float32))
            times: dict = {v: [] for v in sessions}
            for s in sessions.values():
                s.run(None, x)
            for _ in range(max(rounds, 320 // batch)):
                for v, s in sessions.items():
                    start = time.perf_counter()
                    s.run(None, x)
                    times[v].append(time.perf_counter() - start)
            ratios.append(statistics.median(times["float32"]) / statistics.median(times["int8"]))
        lines.append(f"| {units} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
        print(f"measured {kind}({units})", file=sys.stderr, flush=True)
    return "\n".join(lines)


def int8_branch_only(model: onnx.ModelProto, kind: str) -> onnx.ModelProto:
    """``model`` with its ``LSTM``/``GRU`` node replaced by the int8 export's design whose int8
    branch (``DynamicQuantizeLSTM``, the ``Loop`` of int8 steps) runs at every batch, whatever
    the width."""
    from onnx import helper, numpy_helper

    from keras_gates.export.gru_loop import int8_gru
    from keras_gates.export.lstm_int8 import int8_lstm

    graph = model.graph
    stored = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    (index,) = [i for i, n in enumerate(graph.node) if n.op_type == kind]
    node = graph.node[index]
    w, r, name, always = stored[node.input[1]], stored[node.input[2]], node.name or kind, 1 << 30
    if kind == "LSTM":
        nodes, inits = int8_lstm(node, w, r, name, threshold=always)
    else:
        nodes, inits = int8_gru(node, w, r, stored.get(node.input[3]), name, threshold=always)
    kept = [*graph.node[:index], *nodes, *graph.node[index + 1 :]]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(inits)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def table(rows: list[dict]) -> str:
    lines = [
        "| model | file | size | x float32 | batch 1 | speed-up | batch 64 | speed-up | "
        "error b1 | error b64 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['bytes'] / 1e6:.2f} MB | {r['ratio']:.2f}x | "
            f"{r['b1'] * 1e3:.2f} ms | {r['speed1']:.2f}x | {r['b64'] * 1e3:.1f} ms | "
            f"{r['speed64']:.2f}x | {r['error1'] * 100:.2f}% | {r['error64'] * 100:.2f}% |"
        )
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[str]:
    """The issue's goals, each with its verdict (speed within 5% counts as not slower)."""
    by = {(r["model"], r["variant"]): r for r in rows}
    lines = []
    for model in sorted({r["model"] for r in rows}):
        q, ref, f = by[(model, "int8")], by[(model, "quantize_dynamic")], by[(model, "float32")]
        if "LSTM" in model:
            ok = q["bytes"] <= ref["bytes"] * 1.01 and all(
                q[b] <= ref[b] * 1.05 for b in ("b1", "b64")
            )
            goal = "int8 at least as small and fast as quantize_dynamic"
        else:
            ok = q["ratio"] <= 0.4 and all(q[b] <= f[b] * 1.05 for b in ("b1", "b64"))
            goal = "int8 <= 0.4x float32 size, not slower than float32"
        error = max(q["error1"], q["error64"])
        ok_error = error <= 0.02
        base = ref if "LSTM" in model else f
        speed = ", ".join(f"{base[b] / q[b]:.2f}x" for b in ("b1", "b64"))
        lines.append(
            f"{model}: {goal}: {'yes' if ok else 'NO'} (speed vs {base['variant']} at batch 1, "
            f"64: {speed}; size {q['bytes'] / base['bytes']:.2f}x); within 2% of the output "
            f"range: {'yes' if ok_error else 'NO'} ({error * 100:.2f}%)"
        )
    return lines


def sunspots(epochs: int, folder: Path) -> str:
    """The demo's forecast error (mean absolute error, sunspots) for Keras, float32, int8."""
    sys.path.insert(0, str(EXAMPLES))
    import sunspots_forecast as forecast
    from sunspots import SCALE, load_windows

    data = load_windows(forecast.WINDOW)
    with contextlib.redirect_stdout(io.StringIO()):  # its banner and epochs
        model = forecast.train(data, epochs, folder)
    keras_mae = float(np.abs(model.predict(data.x_test, verbose=0) - data.y_test).mean() * SCALE)
    errors = {"Keras": keras_mae}
    for variant, mode in (("float32", None), ("int8", "int8")):
        path = folder / f"sunspots_{variant}.onnx"
        to_onnx(model, path, quantize=mode, print_fn=None)
        got = session(path).run(None, {"input": data.x_test, "lengths": _full(data.x_test)})[0]
        errors[variant] = float(np.abs(got - data.y_test).mean() * SCALE)
    parts = ", ".join(f"{k} {v:.2f}" for k, v in errors.items())
    return f"sunspot demo, mean absolute error on the held-out years (sunspots): {parts}"


def _full(x: np.ndarray) -> np.ndarray:
    return np.full(len(x), x.shape[1], np.int32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=11, help="timed runs at batch 64 (5x at batch 1); median"
    )
    parser.add_argument("--epochs", type=int, default=40, help="sunspot demo training epochs")
    parser.add_argument("--out", type=Path, default=None, help="keep the files here")
    parser.add_argument(
        "--crossover", action="store_true", help="int8 vs float32 LSTM speed by batch and units"
    )
    parser.add_argument("--kind", choices=("LSTM", "GRU"), default="LSTM", help="--crossover")
    parser.add_argument("--units", default=None, help="--crossover: layer widths (comma-separated)")
    parser.add_argument("--batches", default=CROSSOVER_BATCHES, help="--crossover: batch sizes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if args.crossover:
            units = args.units or CROSSOVER_UNITS[args.kind]
            widths, batches = ([int(v) for v in a.split(",")] for a in (units, args.batches))
            design = {"LSTM": "DynamicQuantizeLSTM", "GRU": "the Loop of int8 GRU steps"}
            print(f"float32 / {design[args.kind]} time, one thread, {STEPS} steps")
            print(crossover(args.rounds, folder, args.kind, widths, batches))
            print(f"({time.perf_counter() - start:.0f} s)")
            return 0
        rows = measure(args.rounds, folder)
        print(
            f"onnxruntime {ort.__version__}, one thread, {STEPS} steps, {FEATURES} features, "
            f"median of {5 * args.rounds} (batch 1) and {args.rounds} (batch 64) alternating runs"
        )
        print(table(rows))
        print("\n".join(goals(rows)))
        print(sunspots(args.epochs, folder))
        print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
