"""The ``keras-gates`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only wires them together. Heavy imports (TensorFlow, onnxruntime) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from keras_gates.version import __version__

# (subcommand, module, one-line help)
COMMANDS = (
    ("inspect", "keras_gates.inspect.cli", "trace every gate of a model and write a report"),
    (
        "explore",
        "keras_gates.inspect.explore_cli",
        "explore units in the browser: heatmaps, brushed matches, concept scores",
    ),
    ("export", "keras_gates.export.cli", "export a Keras model to ONNX with native LSTM/GRU nodes"),
    ("serve", "keras_gates.serving.cli", "serve ONNX models over the Open Inference Protocol (v2)"),
)


def require_file(path: str, argument: str, fix: str) -> None:
    """A clear error when the file a subcommand's ``argument`` names is not there."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument} '{path}' does not exist or is not a file: {fix}.")


def read_numpy(path: str, argument: str, fix: str):
    """The array (``.npy``) or ``{name: array}`` (``.npz``) in the file ``argument`` names, pickles
    refused; a clear error ending in ``fix`` when it is missing or not numpy's."""
    import numpy as np

    require_file(path, argument, fix)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError) as err:  # not numpy's, or object arrays (pickles)
        raise ValueError(
            f"{argument} '{path}' is not a readable .npy/.npz file ({err}); {fix}."
        ) from err


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (so ``serve`` never loads TensorFlow)."""
    parser = argparse.ArgumentParser(
        prog="keras-gates",
        description="Keras recurrent layers you can open up gate by gate: inspect, export, serve.",
    )
    parser.add_argument("--version", action="version", version=f"keras-gates {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        print(f"keras-gates {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
