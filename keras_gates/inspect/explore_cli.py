"""``keras-gates explore MODEL.keras --input X.npy [--labels L.npz] [--text T.txt] [--port P]``.

Traces the model on the batch once, then serves the explorer page (:mod:`.explorer`) on
127.0.0.1 until Ctrl+C: the units x time heatmap of any layer and signal, the input's characters
under it, a brush and a threshold that run ``match``, and the concept table of ``probe``. Every
file is checked before the model is traced; heavy imports (Keras, FastAPI) happen in :func:`run`.
"""

from __future__ import annotations

import argparse
import sys

from keras_gates.cli import require_file
from keras_gates.inspect.cli import add_mask_value
from keras_gates.native_logs import add_verbose_flag, quiet_native_logs

DEFAULT_PORT = 8050
SERVER_PACKAGES = ("fastapi", "uvicorn", "plotly")  # the inspect extra's, for the explorer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``explore`` options to ``parser``."""
    parser.add_argument("model", metavar="MODEL.keras", help="model saved with model.save()")
    parser.add_argument(
        "--input", required=True, metavar="X.npy", help="input batch saved with numpy.save"
    )
    parser.add_argument(
        "--labels",
        metavar="LABELS.npz",
        help="concepts to score units against: one (batch, time) array per concept, saved with "
        "numpy.savez (bool or 0/1: binary, float: continuous)",
    )
    parser.add_argument(
        "--text",
        metavar="TEXT.txt",
        help="the input's characters (UTF-8), one per time step, the samples one after another "
        "(batch x time characters, newlines included): shown under the heatmap",
    )
    add_mask_value(parser)
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port on 127.0.0.1; 0 picks a free one (default {DEFAULT_PORT}); the URL is "
        "printed as 'HTTP listening on URL'",
    )
    add_verbose_flag(parser)


def load_text(path: str) -> str:
    """The ``--text`` file as it is (UTF-8, no newline translation: each character counts)."""
    require_file(path, "--text", "pass a UTF-8 text file of the input's characters")
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return file.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"--text '{path}' is not UTF-8 text ({err}); save it as UTF-8.") from None


def run(args: argparse.Namespace) -> int:
    """Check the files, trace the model once and serve the explorer until Ctrl+C."""
    from keras_gates.inspect.cli import load_labels, load_samples

    x = load_samples(args.input, sys.maxsize)
    text = None if args.text is None else load_text(args.text)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"Received --port {args.port}: expected 0-65535 (0: any free port).")
    quiet_native_logs(args.verbose, ("keras",))  # Keras imports its backend
    labels = None if args.labels is None else load_labels(args.labels, args.input, len(x))
    try:
        from keras_gates.inspect.explorer import build_exploration, create_app, serve
    except ImportError as err:
        if err.name not in SERVER_PACKAGES:
            raise
        raise ValueError(
            f"keras-gates explore serves its page with {', '.join(SERVER_PACKAGES)}, and "
            f"{err.name} is not installed: pip install 'keras-gates[inspect]'."
        ) from None
    from keras_gates.saving import load_model

    model = load_model(args.model, argument="MODEL")
    data = build_exploration(model, x, text=text, labels=labels, mask_value=args.mask_value)
    app = create_app(data)
    batch, steps = data.shape
    layers = ", ".join(data.traces)
    announce = [f"explore: traced {batch} samples x {steps} steps of {args.input} ({layers})"]
    return serve(app, args.port, announce)
