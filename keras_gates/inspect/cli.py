"""``keras-gates inspect MODEL.keras --input SAMPLES.npy [--mask-value V] --out DIR``.

``MODEL`` may also be an ``.onnx`` file: its LSTM/GRU nodes alone are inspected
(:func:`keras_gates.interop.onnx_chain.recurrent_model`), ``--input`` fed to the first of them as
``(batch, time, features)``; the rest of the graph is not run.

Writes one PNG per plot, ``summary.json`` and a self-contained ``index.html`` into DIR and prints
a short table of saturation per gate, then the memory horizon: half-life per unit and gradient
reach per layer, and with ``--labels LABELS.npz`` the units that best track each concept. Heavy
imports (Keras, TensorFlow, matplotlib) happen in :func:`run`.
"""

from __future__ import annotations

import argparse

from keras_gates.cli import read_numpy
from keras_gates.native_logs import add_verbose_flag, quiet_native_logs
from keras_gates.saving import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``inspect`` options to ``parser``."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="model saved with model.save() (.keras), or an ONNX file (.onnx): its LSTM/GRU nodes "
        "alone, --input fed to the first of them (batch, time, features)",
    )
    parser.add_argument(
        "--input", required=True, metavar="SAMPLES.npy", help="input batch saved with numpy.save"
    )
    add_mask_value(parser)
    parser.add_argument(
        "--labels",
        default=None,
        metavar="LABELS.npz",
        help="concept labels saved with numpy.savez: one (batch, time) array per concept, bool "
        "or 0/1 (binary, scored by ROC AUC) or float (continuous, Pearson r); every unit is "
        "scored against each",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the report")
    parser.add_argument(
        "--low",
        type=float,
        default=0.1,
        help="left-saturated below this fraction of a gate's range (default 0.1)",
    )
    parser.add_argument(
        "--high",
        type=float,
        default=0.9,
        help="right-saturated above this fraction of a gate's range (default 0.9)",
    )
    parser.add_argument(
        "--sample", type=int, default=0, help="batch index drawn in the heatmaps (default 0)"
    )
    parser.add_argument(
        "--top-k", type=int, default=6, help="units drawn in the state trajectories (default 6)"
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=1e-3,
        help="gradient reach: first lag where the gradient norm falls below this fraction of its "
        "value at lag 0 (default 1e-3)",
    )
    parser.add_argument(
        "--no-horizon",
        action="store_true",
        help="skip the memory horizon (retention, half-life, gradient flow)",
    )
    parser.add_argument(
        "--max-samples",
        type=int,
        default=1024,
        help="inspect at most this many samples of the input (default 1024)",
    )
    add_verbose_flag(parser)


def add_mask_value(parser: argparse.ArgumentParser) -> None:
    """``--mask-value V``, as ``inspect`` and ``explore`` both take it."""
    parser.add_argument(
        "--mask-value",
        type=float,
        default=None,
        metavar="V",
        help="input steps equal to V in every feature are padding and not counted",
    )


def load_samples(path: str, max_samples: int):
    """Load a .npy input batch, keeping the first ``max_samples`` samples."""
    import numpy as np

    x = read_numpy(path, "--input", "save the batch with numpy.save(path, x)")
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise ValueError(
            f"--input '{path}' must hold one array of shape (batch, time, ...), got "
            f"{getattr(x, 'shape', type(x).__name__)}."
        )
    if max_samples < 1:
        raise ValueError(f"--max-samples must be at least 1, got {max_samples}.")
    return x[:max_samples]


def load_labels(path: str, input_path: str, max_samples: int) -> dict:
    """Load the ``--labels`` .npz: one (batch, time) array per concept, shaped like the
    ``--input`` batch's first two axes, each of a known kind; keep the first ``max_samples``."""
    import numpy as np

    from keras_gates.inspect.probes import check_labels

    fix = "save one (batch, time) array per concept with numpy.savez(path, name=array)"
    labels = read_numpy(path, "--labels", fix)
    if isinstance(labels, np.ndarray):
        raise ValueError(f"--labels '{path}' is a single .npy array, not a .npz archive; {fix}.")
    shape = np.load(input_path, mmap_mode="r", allow_pickle=False).shape[:2]
    try:
        labels = check_labels(labels, shape)
    except ValueError as err:
        raise ValueError(f"--labels '{path}': {err}") from None
    return {name: value[:max_samples] for name, value in labels.items()}


def run(args: argparse.Namespace) -> int:
    """Inspect the model, write the report and print the saturation table."""
    quiet_native_logs(args.verbose, ("keras",))  # Keras imports its backend
    from keras_gates.inspect.report import write_report_files
    from keras_gates.inspect.summary import format_table, inspect_model

    x = load_samples(args.input, args.max_samples)
    if not 0 <= args.sample < len(x):  # before the (long) inspection; masks are checked later
        raise ValueError(
            f"Received `sample`={args.sample}: expected an index in [0, {len(x)}) of the batch."
        )
    labels = None if args.labels is None else load_labels(args.labels, args.input, len(x))
    model = _load(args.model)
    if len(x) == args.max_samples:
        print(f"inspecting the first {len(x)} samples of {args.input} (--max-samples)")
    result = inspect_model(
        model,
        x,
        mask_value=args.mask_value,
        low=args.low,
        high=args.high,
        horizon=not args.no_horizon,
        fraction=args.fraction,
        labels=labels,
    )
    paths = write_report_files(result, args.out, sample=args.sample, top_k=args.top_k)
    print(format_table(result["summary"]))
    if result["probe"] is not None:
        print("\nconcepts: the strongest units (|AUC - 0.5| or |r|)\n" + result["probe"].table())
    print(
        f"\nreport: {paths['html']} ({len(paths['images'])} images, summary in {paths['summary']})"
    )
    return 0


def _load(path: str):
    """The Keras model to inspect: a saved ``.keras`` model, or an ONNX file's recurrent nodes."""
    if not path.lower().endswith(".onnx"):
        return load_model(path, argument="MODEL")
    from keras_gates.interop.onnx_chain import recurrent_model

    model, notes = recurrent_model(path)
    names = ", ".join(layer.name for layer in model.layers)
    print(f"inspecting the recurrent nodes of {path} alone: {names} (--input feeds the first)")
    for note in notes:
        print(f"  {note}")
    return model
