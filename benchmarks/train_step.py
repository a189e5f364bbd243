"""Training-step and predict time of GatedLSTM/GatedGRU against keras.layers.LSTM/GRU on CPU.

Measured side by side in one process, alternating the two models each round, so machine noise
hits both alike. Prints a table of medians and the gated/stock ratio (target: <= 0.8).

    python benchmarks/train_step.py [--batch 64] [--steps 100] [--features 32] [--units 128]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_gates import GatedGRU, GatedLSTM  # noqa: E402


def build(layer_cls, args) -> keras.Model:
    model = keras.Sequential(
        [keras.Input((args.steps, args.features)), layer_cls(args.units), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def compare(name: str, gated: keras.Model, stock: keras.Model, x, y, args) -> list[tuple]:
    rows = []
    kinds = {
        "train step": lambda m: lambda: m.train_on_batch(x, y),
        "predict": lambda m: lambda: m.predict_on_batch(x),
    }
    for kind, make in kinds.items():
        fns = {"gated": make(gated), "stock": make(stock)}
        for fn in fns.values():  # compile and warm up
            timed(fn, 3)
        samples = {"gated": [], "stock": []}
        for _ in range(args.rounds):
            for who in ("gated", "stock") if _ % 2 == 0 else ("stock", "gated"):
                samples[who] += timed(fns[who], args.repeats)
        g, s = np.median(samples["gated"]), np.median(samples["stock"])
        rows.append((name, kind, g * 1e3, s * 1e3, g / s))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.steps, args.features)).astype("float32")
    y = rng.standard_normal((args.batch, 1)).astype("float32")
    rows = []
    for name, gated_cls, stock_cls in (
        ("LSTM", GatedLSTM, keras.layers.LSTM),
        ("GRU", GatedGRU, keras.layers.GRU),
    ):
        rows += compare(name, build(gated_cls, args), build(stock_cls, args), x, y, args)
    print(
        f"batch {args.batch}, {args.steps} steps, {args.features} features, {args.units} units, "
        f"CPU, {os.cpu_count()} cores, keras {keras.__version__}"
    )
    print(f"{'layer':<6} {'measure':<11} {'gated ms':>9} {'stock ms':>9} {'ratio':>6}")
    for name, kind, g, s, ratio in rows:
        print(f"{name:<6} {kind:<11} {g:9.1f} {s:9.1f} {ratio:6.2f}")


if __name__ == "__main__":
    main()
