"""Train a GatedLSTM data-parallel on JAX with ``keras.distribution.DataParallel``.

Each global batch is split across the devices (GPUs, TPU cores, or here CPU devices), each
computes its share, and the gradients are averaged: the weights equal a single-device run on the
same global batches up to float32 summation order. On a CPU, ask XLA for two devices::

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python examples/jax_data_parallel.py

(the script sets that flag itself when it is not set). No TensorFlow is needed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_gates import GatedLSTM  # noqa: E402

GLOBAL_BATCH = 16
TOLERANCE = 1e-5  # float32: the per-device gradients are summed in another order


def make_data(samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 12, 3)).astype("float32")
    y = x[:, :, :1].mean(axis=1) + 0.01 * rng.standard_normal((samples, 1)).astype("float32")
    return x, y


def train(x, y, epochs: int, initial: list | None = None) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((12, 3)), GatedLSTM(8, name="gated_lstm"), keras.layers.Dense(1)]
    )
    if initial is not None:
        model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=epochs, shuffle=False, verbose=0)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/jax_data_parallel"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="a short run (2 epochs, 64 samples)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.samples = 2, 64
    x, y = make_data(args.samples)

    devices = keras.distribution.list_devices()
    if len(devices) < 2:
        raise SystemExit(f"data parallelism needs 2+ devices, JAX sees {devices}")
    initial = train(x, y, epochs=0).get_weights()
    single = train(x, y, args.epochs, initial).get_weights()

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        model = train(x, y, args.epochs, initial)
    finally:
        keras.distribution.set_distribution(None)
    shards = model.layers[0].gate_variables["input"]["kernel"].value.sharding
    parallel = model.get_weights()

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras")
    moved = max(float(np.abs(a - b).max()) for a, b in zip(single, initial))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(parallel, single))
    print(f"DataParallel over {len(devices)} devices: {', '.join(map(str, devices))}")
    print(f"weights replicated: {type(shards).__name__}; {GLOBAL_BATCH} samples a global batch")
    print(f"training moved the weights by up to {moved:.3g}")
    print(f"max |data-parallel - single-device| weight difference: {diff:.3g}")
    if diff > TOLERANCE:
        raise SystemExit(f"data-parallel weights differ from single-device by {diff:.3g}")
    print(f"equal within {TOLERANCE:g}; saved {args.out / 'model.keras'}")


if __name__ == "__main__":
    main()
