"""Cost of the memory-horizon analysis on the demo's model: GatedLSTM(16) + Dense(1), one input
feature, a batch of 64 sequences of 100 steps (the demo's windows are 24 steps; here 100).

Each row is timed in one process, side by side: the first call (which builds TensorFlow graphs;
the last row runs on a fresh copy of the model, so its first call builds everything) and the
median of the following calls. The whole analysis is ``inspect_model(horizon=True)``;
the row without the horizon is the saturation inspection it adds to.

    .venv/bin/python benchmarks/horizon_cost.py [--repeats 3] [--steps 100] [--batch 64]
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
from keras_gates.inspect import (  # noqa: E402
    gradient_flow,
    inspect_model,
    memory_retention,
    state_gradient_flow,
)


def timed(call, repeats: int) -> tuple[float, float]:
    """(first call, median of the next ``repeats``) in seconds."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def build(steps: int) -> keras.Model:
    """The demo's model (examples/sunspots_forecast.py) over ``steps`` steps."""
    return keras.Sequential(
        [keras.Input((steps, 1)), GatedLSTM(16, name="gated_lstm"), keras.layers.Dense(1)]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model, fresh = build(args.steps), build(args.steps)  # fresh: nothing compiled for it yet
    fresh.set_weights(model.get_weights())
    x = np.random.default_rng(0).random((args.batch, args.steps, 1)).astype("float32")
    rows = {
        "inspect_model(horizon=False)": lambda: inspect_model(model, x, horizon=False),
        "memory_retention": lambda: memory_retention(model, x),
        "gradient_flow (dy/dx_t)": lambda: gradient_flow(model, x),
        "state_gradient_flow (dh_T/ds_t)": lambda: state_gradient_flow(model, x),
        "inspect_model(horizon=True)": lambda: inspect_model(fresh, x),
    }
    print(f"GatedLSTM(16) + Dense(1), batch {args.batch} x {args.steps} steps x 1 feature")
    print(f"{'analysis':<34} {'first call s':>12} {'then s':>8}")
    results = {}
    for name, call in rows.items():
        results[name] = timed(call, args.repeats)
        first, then = results[name]
        print(f"{name:<34} {first:>12.2f} {then:>8.2f}", flush=True)
    base = results["inspect_model(horizon=False)"][1]
    whole = results["inspect_model(horizon=True)"][1]
    print(f"horizon / saturation-only inspection: {whole / base:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
