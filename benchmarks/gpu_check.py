"""The gated layers on a GPU against the stock ``keras.layers.LSTM``/``GRU`` on the same backend.

    python benchmarks/gpu_check.py [--backends torch,jax] [--json out.json]

Each backend runs in its own process (``KERAS_BACKEND`` is read once, at import). For each
configuration a stock layer is built, the gated layer is made from it with ``from_keras`` (the
same weights, gate by gate), and three things are compared:

- **forward**: the largest absolute difference of the outputs (full and right-padded batches);
- **training**: both copies take the same 5 SGD steps on the same data; the largest difference
  of the losses and of the final weights (fused back in Keras' layout) is a check of the gradients;
- **path**: whether the gated layer ran Keras' fused (cuDNN) kernel, as the stock layer does under
  the same conditions (``reset_after=False`` and ``recurrent_dropout`` must not).

Then the median time of a training step and of a forward pass (batch 64, 100 steps, 32 features,
256 units) for both layers. Prints markdown tables; exits 1 if any difference is over tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

FORWARD_ATOL = 1e-4  # float32 on a GPU (TF32 is off: see the child's set-up)
TRAIN_ATOL = 1e-4


def child(backend: str) -> list[dict]:
    import keras
    import numpy as np

    from keras_gates import GatedGRU, GatedLSTM, _internals

    if backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    else:
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
        device = str(jax.devices()[0])
        sync = lambda: None  # noqa: E731  (predict_on_batch returns numpy: already synchronous)

    fused = {"ran": 0, "declined": 0}

    def counting(kernel):
        def wrapped(*args, **kwargs):
            try:
                out = kernel(*args, **kwargs)
            except NotImplementedError:
                fused["declined"] += 1
                raise
            fused["ran"] += 1
            return out

        return wrapped

    _internals.fused_lstm = counting(_internals.fused_lstm)
    _internals.fused_gru = counting(_internals.fused_gru)

    rng = np.random.default_rng(0)
    batch, steps, features, units = 16, 50, 32, 64
    x = rng.standard_normal((batch, steps, features)).astype("float32")
    lengths = rng.integers(5, steps + 1, batch)
    lengths[0] = steps
    mask = np.arange(steps)[None, :] < lengths[:, None]  # right-padded, as cuDNN requires

    kinds = {
        "LSTM": (keras.layers.LSTM, GatedLSTM, {}),
        "GRU": (keras.layers.GRU, GatedGRU, {}),
        "GRU reset_after=False": (keras.layers.GRU, GatedGRU, {"reset_after": False}),
    }
    cases = {
        "last state": {},
        "sequences": {"return_sequences": True},
        "go_backwards": {"return_sequences": True, "go_backwards": True},
        "padded": {"return_sequences": True, "masked": True},
        "padded, last": {"masked": True},
    }
    rows = []
    for kind, (stock_cls, gated_cls, kind_args) in kinds.items():
        for case, args in cases.items():
            args = dict(args)
            masked = args.pop("masked", False)
            feed = [x, mask] if masked else x
            models = []
            for copy in ("stock", "gated"):
                inputs = keras.Input((steps, features))
                mask_in = keras.Input((steps,), dtype="bool")
                if copy == "stock":
                    layer = stock_cls(units, **kind_args, **args)
                    layer.build((None, steps, features))
                    stock_layer = layer
                else:
                    layer = gated_cls.from_keras(stock_layer)
                out = layer(inputs, mask=mask_in) if masked else layer(inputs)
                model = keras.Model([inputs, mask_in] if masked else inputs, out)
                models.append((model, layer))
            (stock, stock_layer), (gated, gated_layer) = models
            fused.update(ran=0, declined=0)
            got = np.asarray(gated.predict_on_batch(feed))
            path = "fused" if fused["ran"] else "loop"
            want = np.asarray(stock.predict_on_batch(feed))
            if masked and args.get("return_sequences"):
                keep = mask[..., None]
                got, want = got * keep, want * keep  # padded steps are not defined by Keras
            forward = float(np.max(np.abs(got - want)))

            target = rng.standard_normal(want.shape).astype("float32")
            losses = []
            for model in (stock, gated):
                model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
                for _ in range(5):
                    loss = model.train_on_batch(feed, target)
                losses.append(float(loss))
            fused_back = gated_layer.to_keras().get_weights()
            weights = max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(stock_layer.get_weights(), fused_back, strict=True)
            )
            rows.append(
                {
                    "backend": backend,
                    "device": device,
                    "layer": kind,
                    "case": case,
                    "gated path": path,
                    "forward max |diff|": forward,
                    "loss after 5 steps |diff|": abs(losses[0] - losses[1]),
                    "weights after 5 steps max |diff|": weights,
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    # speed: batch 64, 100 steps, 32 features, 256 units
    xb = rng.standard_normal((64, 100, 32)).astype("float32")
    yb = rng.standard_normal((64, 256)).astype("float32")
    for kind, (stock_cls, gated_cls, kind_args) in kinds.items():
        timings = {}
        layer = stock_cls(256, **kind_args)
        layer.build((None, 100, 32))
        for copy, lay in (("stock", layer), ("gated", gated_cls.from_keras(layer))):
            inputs = keras.Input((100, 32))
            model = keras.Model(inputs, lay(inputs))
            model.compile(optimizer="adam", loss="mse")
            for _ in range(3):  # compile / warm up
                model.train_on_batch(xb, yb)
                model.predict_on_batch(xb)
            sync()
            step, fwd = [], []
            for _ in range(20):
                t = time.perf_counter()
                model.train_on_batch(xb, yb)
                sync()
                step.append(time.perf_counter() - t)
                t = time.perf_counter()
                model.predict_on_batch(xb)
                sync()
                fwd.append(time.perf_counter() - t)
            timings[copy] = (float(np.median(step)) * 1e3, float(np.median(fwd)) * 1e3)
        rows.append(
            {
                "backend": backend,
                "device": device,
                "layer": kind,
                "case": "speed b64 t100 u256",
                "stock train step ms": timings["stock"][0],
                "gated train step ms": timings["gated"][0],
                "stock forward ms": timings["stock"][1],
                "gated forward ms": timings["gated"][1],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key, "")
            cells.append(
                f"{value:.2g}"
                if isinstance(value, float) and "diff" in key
                else f"{value:.2f}"
                if isinstance(value, float)
                else str(value)
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,jax")
    parser.add_argument("--json", help="write every row to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    rows = []
    for backend in args.backends.split(","):
        env = {**os.environ, "KERAS_BACKEND": backend}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", backend],
            env=env,
            capture_output=True,
            text=True,
        )
        got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        rows += got
        if proc.returncode:
            print(f"{backend} child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    checks = [r for r in rows if "forward max |diff|" in r]
    speeds = [r for r in rows if "stock train step ms" in r]
    print(
        table(
            checks,
            [
                "backend",
                "device",
                "layer",
                "case",
                "gated path",
                "forward max |diff|",
                "loss after 5 steps |diff|",
                "weights after 5 steps max |diff|",
            ],
        )
    )
    print()
    print(
        table(
            speeds,
            [
                "backend",
                "layer",
                "stock train step ms",
                "gated train step ms",
                "stock forward ms",
                "gated forward ms",
            ],
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [
        r
        for r in checks
        if r["forward max |diff|"] > FORWARD_ATOL
        or r["weights after 5 steps max |diff|"] > TRAIN_ATOL
    ]
    for r in bad:
        print("OVER TOLERANCE:", r)
    return 1 if bad or len(checks) < 15 * len(args.backends.split(",")) else 0


if __name__ == "__main__":
    sys.exit(main())
