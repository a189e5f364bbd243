"""Cost of concept probes: a GatedLSTM(256) on a batch of 64 sequences of 500 steps (32
features), three concepts (two binary, one continuous), every unit and every signal (hidden, cell,
four gates: 1,536 scores per concept from 32,000 steps each).

The model is traced once (``trace_model``, one Keras pass that records every gate); ``probe`` then
scores the traces (numpy only: one sort per layer and signal, no loop over units). Each row is the
median of ``--repeats`` calls after one warm-up call.

    .venv/bin/python benchmarks/probe_speed.py [--repeats 3] [--batch 64] [--steps 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_gates import GatedLSTM  # noqa: E402
from keras_gates.inspect import probe, trace_model  # noqa: E402


def median_seconds(call, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``call`` after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--features", type=int, default=32)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.steps)
    x = rng.normal(size=(*shape, args.features)).astype("float32")
    inputs = keras.Input((None, args.features))
    model = keras.Model(inputs, GatedLSTM(args.units, return_sequences=True)(inputs))
    labels = {
        "binary_a": rng.random(shape) < 0.3,
        "binary_b": x[..., 0] > 0,
        "continuous": x[..., 1].astype("float64") + rng.normal(size=shape),
    }
    traces = trace_model(model, x)
    trace_s = median_seconds(lambda: trace_model(model, x), args.repeats)
    probe_s = median_seconds(lambda: probe(model, x, labels, traces=traces), args.repeats)
    result = probe(model, x, labels, traces=traces)
    per_layer = result.scores["binary_a"]
    signals = sorted({signal for per in per_layer.values() for signal in per})
    scored = sum(len(values) for per in per_layer.values() for values in per.values())
    print(
        f"batch {args.batch} x {args.steps} steps, {args.units} units, {len(labels)} concepts: "
        f"{scored} scores per concept ({len(per_layer)} layer, signals {', '.join(signals)})"
    )
    print(f"{'step':<34}{'median s':>10}")
    print(f"{'trace_model (Keras, every gate)':<34}{trace_s:>10.2f}")
    print(f"{'probe on the traces (numpy)':<34}{probe_s:>10.2f}")
    print(f"{'probe(model, x, labels) in all':<34}{trace_s + probe_s:>10.2f}")
    best = result.top("binary_b", k=1)[0]
    print(
        f"strongest unit for binary_b: {best.layer}/{best.signal}/{best.unit} AUC {best.score:.3f}"
    )


if __name__ == "__main__":
    main()
