"""Forecast next year's sunspot number with a GatedLSTM, look inside it, and export it to ONNX.

    python examples/sunspots_forecast.py [--epochs 40] [--out artifacts] [--quick]

The yearly series (1700-2008) ships with statsmodels, so this runs offline. The model reads the
last 24 years and predicts the next; the last 40 years are held out and compared with the naive
last-value forecast. Then the gates are inspected (HTML report) and the model is exported to ONNX
with onnxruntime validated against Keras.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # export traces on the CPU path
os.environ.setdefault("MPLBACKEND", "Agg")

from keras_gates.native_logs import quiet_native_logs  # noqa: E402

quiet_native_logs(verbose=False)  # TensorFlow's C++ log, as `keras-gates export` hides it

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sunspots import SCALE, Windows, load_windows  # noqa: E402

from keras_gates import GatedLSTM  # noqa: E402

WINDOW = 24


def banner(step: str) -> None:
    print(f"\n=== {step} " + "=" * max(0, 70 - len(step)), flush=True)


def train(data: Windows, epochs: int, out: Path) -> keras.Model:
    """A GatedLSTM(16) + Dense(1) trained on the windows before the held-out years."""
    banner(f"train GatedLSTM(16) on sunspots 1700-{data.years_test[0] - 1}")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 1)), GatedLSTM(16, name="gated_lstm"), keras.layers.Dense(1)],
        name="sunspots",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=2)
    model.save(out / "sunspots.keras")
    print(f"saved {out / 'sunspots.keras'}")
    return model


def show_forget_gate(model: keras.Model) -> None:
    """Open the forget gate: its learned bias per unit."""
    banner("open the gates: learned forget-gate bias per unit")
    bias = model.get_layer("gated_lstm").get_gate_weights()["forget"]["bias"]
    print("unit  forget bias  sigmoid (share of the cell state kept per step at zero input)")
    for unit, value in enumerate(bias):
        print(f"{unit:4d}  {value:+11.3f}  {1 / (1 + np.exp(-value)):.3f}")


def evaluate(model: keras.Model, data: Windows) -> float:
    """Mean absolute error on the held-out years, next to the last-value forecast."""
    banner(f"forecast the held-out years {data.years_test[0]}-{data.years_test[-1]}")
    pred = model.predict(data.x_test, verbose=0)
    mae = float(np.abs(pred - data.y_test).mean() * SCALE)
    naive = float(np.abs(data.x_test[:, -1] - data.y_test).mean() * SCALE)
    print(f"mean absolute error: GatedLSTM {mae:.1f} sunspots, last-value forecast {naive:.1f}")
    return mae


def inspect_gates(model: keras.Model, data: Windows, out: Path) -> Path:
    """Saturation statistics, plots and the HTML report of every gate on the held-out windows."""
    banner("inspect every gate: saturation statistics, plots, HTML report")
    from keras_gates.inspect import write_report

    paths = write_report(model, data.x_test, out / "inspect")
    print(f"report: {paths['html']}")
    return Path(paths["html"])


def export(model: keras.Model, data: Windows, out: Path) -> Path:
    """ONNX exports (plain and streaming), validated, in a Triton-layout model repository."""
    banner("export to ONNX (one native LSTM node), validated against Keras")
    from keras_gates.export import Predictor, to_onnx, write_triton_repo

    plain = to_onnx(model, out / "sunspots.onnx")
    print(f"wrote {plain.path}: nodes {plain.op_counts}")
    streaming = to_onnx(model, out / "sunspots_streaming.onnx", streaming=True)
    print(f"wrote {streaming.path} (state inputs/outputs for chunked streaming)")
    repo = out / "model_repository"
    repo.mkdir(exist_ok=True)
    write_triton_repo(plain.path, repo, "sunspots")
    write_triton_repo(streaming.path, repo, "sunspots_stream")
    print(f"model repository: {repo}")
    predictor = Predictor(plain.path)
    (forecast,) = predictor.predict(data.x_test[-1:]).values()
    print(
        f"Predictor on {predictor.provider}: {data.years_test[-1]} forecast "
        f"{forecast.item() * SCALE:.1f} (truth {data.y_test[-1].item() * SCALE:.1f})"
    )
    return repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="2 epochs, for the test suite")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_windows(WINDOW)
    model = train(data, 2 if args.quick else args.epochs, args.out)
    show_forget_gate(model)
    evaluate(model, data)
    inspect_gates(model, data, args.out)
    export(model, data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
