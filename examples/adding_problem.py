"""The adding problem (Hochreiter & Schmidhuber, 1997): can a recurrent layer remember?

Each input is a sequence of ``T`` steps with two channels: a random number in [0, 1) and a
marker that is 1 at exactly two steps (one in the first half, one in the second half) and 0
elsewhere. The target is the sum of the two marked numbers. To solve it a layer must keep the
first marked number for up to ``T`` steps while ignoring everything in between.

Predicting the mean sum (1.0) gives MSE = Var(U1 + U2) = 2/12 ~ 0.167, the trivial baseline.
A ``keras.layers.SimpleRNN`` stays near it at T = 100; ``GatedLSTM`` and ``GatedGRU`` learn to
hold the value in units whose forget (LSTM) / update (GRU) gate stays close to 1, which the
saturation plot written at the end shows unit by unit.

The memory horizon shows why: the gradient of the output with respect to each input step,
‖∂y/∂x_t‖, against the lag T - t, at initialisation and after training (the SimpleRNN's falls
geometrically, the gated layers' reaches back across the whole sequence), and the memory
half-life of every gated unit (the lag at which the product of its forget/update gate falls
below 0.5) after training.

    python examples/adding_problem.py                 # T = 100, a few minutes on a laptop CPU
    python examples/adding_problem.py --steps 200     # longer dependencies
    python examples/adding_problem.py --quick         # tiny smoke run (the test suite uses it)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_gates import GatedGRU, GatedLSTM  # noqa: E402
from keras_gates.inspect import (  # noqa: E402
    gradient_flow,
    memory_retention,
    plot_saturation,
    saturation_stats,
    save_figure,
)
from keras_gates.inspect.horizon_summary import lag_text  # noqa: E402

BASELINE = 2.0 / 12.0  # MSE of always predicting 1.0: the variance of a sum of two U(0, 1)
LAYERS = {"SimpleRNN": keras.layers.SimpleRNN, "GatedLSTM": GatedLSTM, "GatedGRU": GatedGRU}
# The gate that decides whether a unit keeps its state: close to 1 means "hold".
HOLD_GATE = {"GatedLSTM": "forget", "GatedGRU": "update"}


def adding_data(samples: int, steps: int, rng: np.random.Generator):
    """``x`` (samples, steps, 2) float32 and ``y`` (samples, 1): the sum of the marked values."""
    values = rng.random((samples, steps))
    rows = np.arange(samples)
    first = rng.integers(0, steps // 2, samples)  # one mark in the first half ...
    second = rng.integers(steps // 2, steps, samples)  # ... and one in the second half
    markers = np.zeros((samples, steps))
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1).astype("float32")
    y = (values[rows, first] + values[rows, second])[:, None].astype("float32")
    return x, y


def build_model(kind: str, steps: int, units: int, lr: float, clipnorm: float) -> keras.Model:
    """``Input -> <kind>(units) -> Dense(1)``, compiled with Adam and gradient clipping."""
    model = keras.Sequential(
        [keras.Input((steps, 2)), LAYERS[kind](units, name="rnn"), keras.layers.Dense(1)],
        name=kind,
    )
    model.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=clipnorm), loss="mse")
    return model


def train(kind: str, data, args, flows: dict) -> tuple[keras.Model, float, float]:
    """Train one model; return it with its test MSE and the training time in seconds.
    ``flows[kind]`` gets the gradient flow on test sequences before and after training."""
    (x_train, y_train), (x_test, y_test) = data
    print(f"\n--- {kind}({args.units}), T = {args.steps} ---", flush=True)
    keras.utils.set_random_seed(args.seed)
    model = build_model(kind, args.steps, args.units, args.lr, args.clipnorm)
    probe = x_test[: args.probe]
    flows[kind] = {"init": gradient_flow(model, probe)}
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        validation_data=(x_test, y_test),
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=2,
    )
    seconds = time.perf_counter() - start
    mse = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0))
    flows[kind]["trained"] = gradient_flow(model, probe)
    return model, mse, seconds


def print_table(results: dict[str, tuple[float, float]], empirical_baseline: float) -> None:
    """Final test MSE of every model next to the trivial baseline."""
    print(f"\n{'model':<12} {'test MSE':>10} {'/ baseline':>11} {'train s':>9}")
    print(f"{'predict 1.0':<12} {empirical_baseline:>10.4f} {1.0:>11.3f} {'-':>9}")
    for kind, (mse, seconds) in results.items():
        print(f"{kind:<12} {mse:>10.4f} {mse / empirical_baseline:>11.3f} {seconds:>9.0f}")
    print(f"(trivial baseline in theory: 2/12 = {BASELINE:.4f})")


def hold_stats(models: dict[str, keras.Model], x: np.ndarray) -> dict[str, dict]:
    """Per unit, how often each gated layer's forget/update gate is > 0.9 and < 0.1."""
    stats = {}
    for kind, gate in HOLD_GATE.items():
        trace = models[kind].get_layer("rnn").trace(x)  # {gate: (batch, time, units), ...}
        gate_stats = saturation_stats(trace[gate], trace["mask"], low=0.1, high=0.9)
        stats[f"{kind} {gate}"] = gate_stats
        holding = int((gate_stats["right_saturated"] > 0.5).sum())
        print(
            f"{kind}: {holding}/{len(gate_stats['mean'])} units keep their {gate} gate > 0.9 on "
            f"more than half of all steps (mean {gate} gate {gate_stats['mean'].mean():.2f})"
        )
    return stats


def horizon_table(flows: dict, retention: dict, steps: int) -> None:
    """Gradient reach before/after training, and the trained gated units' half-lives."""
    print(f"\n{'model':<12} {'grad reach init':>15} {'trained':>8} {'median half-life':>17}")
    for kind, flow in flows.items():
        reach = [lag_text(int(f["reach"]), f["reach_censored"]) for f in flow.values()]
        half = retention.get(kind)
        median = "-" if half is None else lag_text(*_median(half))
        print(f"{kind:<12} {reach[0]:>15} {reach[1]:>8} {median:>17}")
    print("(grad reach: first lag T - t where ‖∂y/∂x_t‖ < 1e-3 of its value at lag 0)")
    for kind, entry in retention.items():
        order = np.argsort(np.where(entry["half_life_censored"], np.inf, entry["half_life"]))
        values = [
            lag_text(int(entry["half_life"][u]), entry["half_life_censored"][u]) for u in order
        ]
        holding = int((entry["half_life"] >= steps // 2).sum())
        print(
            f"{kind}: {holding}/{len(order)} units have a half-life of at least T/2 = "
            f"{steps // 2} steps; half-life per unit ({entry['gate']} gate, sorted): "
            + " ".join(values)
        )


def _median(entry: dict) -> tuple[int, bool]:
    from keras_gates.inspect.horizon import median_lag

    value, censored = median_lag(entry["half_life"], entry["half_life_censored"])
    return int(value), censored


def plot_horizon(flows: dict, retention: dict, steps: int):
    """Gradient norm against lag at initialisation and after training, and half-lives."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=(1, 1, 1.1))
    colors = {"SimpleRNN": "tab:red", "GatedLSTM": "tab:blue", "GatedGRU": "tab:green"}
    for ax, stage in zip(axes[:2], ("init", "trained"), strict=True):
        for kind, flow in flows.items():
            norms = flow[stage]["mean"]  # exact zeros (float32 underflow) are not drawn
            positive = np.where(norms > 0, norms, np.nan)
            ax.plot(flow[stage]["lags"], positive, color=colors[kind], label=kind)
        ax.set_yscale("log")
        ax.set_xlabel("lag T - t (steps)")
        ax.set_title("at initialisation" if stage == "init" else "after training")
    axes[0].set_ylabel("‖∂y/∂x_t‖, mean over test sequences")
    axes[0].legend(fontsize="small")
    ax = axes[2]
    for kind, entry in retention.items():
        ranked = np.sort(np.where(entry["half_life_censored"], steps, entry["half_life"]))
        ax.step(np.arange(len(ranked)), ranked, where="mid", color=colors[kind], label=kind)
    ax.axhline(steps, color="grey", linestyle=":", linewidth=0.8, label=f"T = {steps} (never)")
    ax.set_yscale("log")
    ax.set_xlabel("unit (sorted)")
    ax.set_ylabel("memory half-life (steps)")
    ax.set_title("half-life per unit, trained")
    ax.legend(fontsize="small")
    fig.suptitle(f"adding problem, T = {steps}: how far back the gradient reaches")
    return fig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="sequence length T (default 100)")
    parser.add_argument("--samples", type=int, default=10000, help="training sequences")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--clipnorm", type=float, default=1.0, help="gradient norm clipping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", type=int, default=256, help="test sequences for gradients")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="folder for the PNGs")
    parser.add_argument("--quick", action="store_true", help="tiny run: T=20, 1 epoch, 8 units")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.samples, args.epochs, args.units, args.probe = 20, 512, 1, 8, 32
    if args.steps < 2:
        parser.error(f"--steps must be at least 2 (one mark per half), got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train_data = adding_data(args.samples, args.steps, rng)
    test_data = adding_data(max(args.samples // 5, 256), args.steps, rng)
    empirical_baseline = float(np.mean((test_data[1] - 1.0) ** 2))

    models, results, flows = {}, {}, {}
    for kind in LAYERS:
        models[kind], mse, seconds = train(kind, (train_data, test_data), args, flows)
        results[kind] = (mse, seconds)
    print_table(results, empirical_baseline)

    # Which units learned to hold the first marked number? Trace the gates on test sequences.
    stats = hold_stats(models, test_data[0][:256])
    fig = plot_saturation(
        stats, title=f"adding problem, T = {args.steps}: gate saturation per unit"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"adding_problem_T{args.steps}_saturation.png"
    width, height = save_figure(fig, path)
    print(f"saved saturation plot {path} ({width}x{height} px)")

    # How far back does the gradient reach, and how long does each gated unit remember?
    probe = test_data[0][: args.probe]
    retention = {kind: memory_retention(models[kind], probe)["rnn"] for kind in HOLD_GATE}
    horizon_table(flows, retention, args.steps)
    path = args.out / f"adding_problem_T{args.steps}_horizon.png"
    width, height = save_figure(plot_horizon(flows, retention, args.steps), path)
    print(f"saved memory-horizon plot {path} ({width}x{height} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
