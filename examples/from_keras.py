"""Open up an existing Keras model: swap its LSTM/GRU layers for gated ones, then read the gates.

1. Train (or load with ``--model``) a model built from stock ``keras.layers.LSTM``/``GRU``:
   ``Embedding(mask_zero=True) -> LSTM(return_sequences) -> GRU -> Dense``, taught to recall the
   first token of a variable-length, zero-padded sequence.
2. Convert: ``keras.models.clone_model`` rebuilds the model with ``GatedLSTM.from_keras`` /
   ``GatedGRU.from_keras`` in place of each recurrent layer (weights copied gate by gate); the
   other layers get their weights copied. The outputs must match to float precision.
3. Open the forget gate: its learned bias per unit and a ``trace`` of one sequence.

    python examples/from_keras.py                        # trains the toy model first
    python examples/from_keras.py --model my_model.keras # convert your own model
    python examples/from_keras.py --quick                # tiny run (the test suite uses it)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_gates import GatedGRU, GatedLSTM  # noqa: E402

VOCAB = 20  # token 0 is padding
CONVERTERS = {keras.layers.LSTM: GatedLSTM, keras.layers.GRU: GatedGRU}


def recall_data(samples: int, steps: int, rng: np.random.Generator):
    """Token sequences of random length, zero-padded; the target is the first token / VOCAB."""
    tokens = rng.integers(1, VOCAB, (samples, steps))
    lengths = rng.integers(steps // 2, steps + 1, samples)
    tokens[np.arange(steps) >= lengths[:, None]] = 0  # right padding, masked by the Embedding
    return tokens.astype("int32"), (tokens[:, :1] / VOCAB).astype("float32")


def stock_model(steps: int, units: int) -> keras.Model:
    """The "existing" model: nothing but stock Keras layers."""
    return keras.Sequential(
        [
            keras.Input((steps,), dtype="int32"),
            keras.layers.Embedding(VOCAB, 8, mask_zero=True, name="embedding"),
            keras.layers.LSTM(units, return_sequences=True, name="lstm"),
            keras.layers.GRU(units // 2, name="gru"),
            keras.layers.Dense(1, name="head"),
        ],
        name="stock",
    )


def to_gated(model: keras.Model) -> keras.Model:
    """The same model with every LSTM/GRU replaced by its gated twin, all weights carried over."""

    def convert(layer: keras.layers.Layer) -> keras.layers.Layer:
        gated_class = CONVERTERS.get(type(layer))
        if gated_class is not None:
            return gated_class.from_keras(layer)  # built, weights already copied gate by gate
        return layer.__class__.from_config(layer.get_config())  # a fresh copy, weights below

    gated = keras.models.clone_model(model, clone_function=convert)
    for old, new in zip(model.layers, gated.layers, strict=True):
        if type(old) not in CONVERTERS:
            new.set_weights(old.get_weights())
    return gated


def sample_inputs(model: keras.Model, args: argparse.Namespace) -> np.ndarray:
    """A batch to compare the two models on: the toy task's tokens, or random inputs shaped
    like the loaded model's input (unknown dimensions become 10; small ids for integer inputs)."""
    rng = np.random.default_rng(1)
    if args.model is None:
        return recall_data(256, args.steps, rng)[0]
    shape = [64] + [10 if d is None else d for d in model.input_shape[1:]]
    if "int" in str(model.inputs[0].dtype):
        return rng.integers(0, 2, shape).astype("int32")  # valid for any Embedding
    return rng.standard_normal(shape).astype("float32")


def show_forget_bias(lstm: GatedLSTM) -> int:
    """Print the forget-gate bias per unit; return the unit with the largest bias."""
    bias = lstm.get_gate_weights()["forget"]["bias"]  # (units,)
    print(f"\nforget-gate bias of '{lstm.name}' ({bias.size} units):")
    print("  " + " ".join(f"{b:+.2f}" for b in bias))
    low, high = int(bias.argmin()), int(bias.argmax())
    print(
        f"  mean {bias.mean():+.3f}  std {bias.std():.3f}  "
        f"min {bias[low]:+.3f} (unit {low})  max {bias[high]:+.3f} (unit {high})"
    )
    return high


def show_forget_trace(model: keras.Model, lstm: GatedLSTM, x_one: np.ndarray, high: int) -> None:
    """Print the forget activation at every step of one sequence: mean over units, unit ``high``."""
    # The LSTM reads the embedded tokens; the Embedding also gives the padding mask.
    embedding = model.get_layer("embedding")
    trace = lstm.trace(embedding(x_one), mask=embedding.compute_mask(x_one))
    forget, valid = trace["forget"][0], trace["mask"][0]  # (time, units), (time,)
    # Unit `high` (largest forget bias) is the one most inclined to keep its cell state.
    print(f"\ntrace of one sequence: forget activation per step (mean over units, unit {high})")
    print("  step token   mean  unit")
    for t, token in enumerate(x_one[0]):
        if not valid[t]:
            print(f"  {t:4d} {token:5d}    (padding, masked)")
            continue
        mean = forget[t].mean()
        print(f"  {t:4d} {token:5d}  {mean:5.3f} {forget[t, high]:5.3f}  " + "#" * round(30 * mean))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .keras model with LSTM/GRU layers to convert")
    parser.add_argument("--steps", type=int, default=16, help="sequence length of the toy model")
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="folder for the model")
    parser.add_argument("--quick", action="store_true", help="tiny run: 256 samples, 1 epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.units, args.samples, args.epochs = 10, 8, 256, 1
    return args


def load_or_train(args: argparse.Namespace) -> keras.Model:
    """The user's model from ``--model``, or the toy stock model trained on the recall task."""
    if args.model is not None:
        if not args.model.is_file():
            raise FileNotFoundError(f"--model {args.model}: no such file; pass a .keras model.")
        return keras.models.load_model(args.model)
    keras.utils.set_random_seed(0)
    model = stock_model(args.steps, args.units)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    x, y = recall_data(args.samples, args.steps, np.random.default_rng(0))
    print(f"training the stock model ({args.epochs} epochs) to recall the first token")
    model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=2)
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = load_or_train(args)
    gated = to_gated(model)
    print("\nconverted layers:")
    for old, new in zip(model.layers, gated.layers, strict=True):
        print(f"  {old.name:<10} {type(old).__name__:<10} -> {type(new).__name__}")

    x = sample_inputs(model, args)
    diff = np.abs(model.predict(x, verbose=0) - gated.predict(x, verbose=0)).max()
    print(f"max abs diff stock vs gated outputs: {diff:.2e}")
    if diff > 1e-4:
        print("error: the converted model does not reproduce the stock one", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "from_keras_gated.keras"
    gated.save(path)  # loads back without custom_objects once keras_gates is imported
    reloaded = keras.models.load_model(path)
    diff = np.abs(reloaded.predict(x, verbose=0) - gated.predict(x, verbose=0)).max()
    print(f"reloaded {path}: max abs diff {diff:.2e}")
    lstms = [layer for layer in gated.layers if isinstance(layer, GatedLSTM)]
    if lstms:
        high = show_forget_bias(lstms[0])
        if args.model is None:  # the toy model: we know what feeds its LSTM
            show_forget_trace(gated, lstms[0], x[:1], high)
    return 0


if __name__ == "__main__":
    sys.exit(main())
