"""``keras-gates export``: a ``.keras`` model -> ONNX with native LSTM/GRU nodes (+ Triton repo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from keras_gates.native_logs import add_verbose_flag, quiet_native_logs

RNN_OPS = ("LSTM", "GRU", "Loop", "Scan", "If")  # If: the int8 LSTM (export/lstm_int8.py)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the Keras model file (.keras) to export")
    parser.add_argument("-o", "--output", required=True, help="the ONNX file to write")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="add per-layer state inputs/outputs (<layer>.h_in/.h_out, .c_in/.c_out) for "
        "chunked inference (automatic for stateful models)",
    )
    parser.add_argument(
        "--triton-repo",
        metavar="DIR",
        help="also write a Triton model repository (created when missing)",
    )
    parser.add_argument(
        "--triton-backend",
        choices=("onnxruntime", "python"),
        default="onnxruntime",
        help="the Triton backend the repository is written for: onnxruntime (default) or python "
        "(a model.py runs the ONNX file with onnxruntime in Triton's Python backend)",
    )
    parser.add_argument("--name", help="Triton model name (default: the output file's stem)")
    parser.add_argument("--version", type=int, default=1, help="Triton model version (default 1)")
    parser.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="[OUTPUT=]FILE",
        help="class labels for the classification extension, one per line (line i names class "
        "i): recorded in the model's metadata and written as the Triton repository's "
        "labels.txt; OUTPUT= names the output when the model has several (repeatable)",
    )
    parser.add_argument(
        "--no-validate", action="store_true", help="skip the onnxruntime-vs-Keras comparison"
    )
    parser.add_argument(
        "--atol", type=float, default=1e-5, help="max abs error allowed by validation (1e-5)"
    )
    parser.add_argument(
        "--samples",
        metavar="FILE",
        help="validate on these inputs instead of random ones: a .npy batch (one input) or a "
        ".npz with one batch per input name (numpy.savez); real data matters most with "
        "--quantize int8, whose error depends on the values it sees",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="store the weights in 8 bits (int8: gated layers, Dense, Conv1D, Embedding); "
        "validated against Keras next to float32",
    )
    parser.add_argument(
        "--int8-tolerance",
        type=float,
        default=0.02,
        help="with --quantize int8: max abs error allowed per output as a fraction of its range "
        "in Keras (0.02)",
    )
    add_verbose_flag(parser)


def run(args: argparse.Namespace) -> int:
    quiet_native_logs(args.verbose)  # before anything imports TensorFlow
    from keras_gates.export.exporter import to_onnx
    from keras_gates.export.triton import NAME_RULE, write_triton_repo

    output = Path(args.output)
    name = args.name or output.stem
    if args.triton_repo is not None:  # checked before the (slow) export; created when missing
        if Path(args.triton_repo).exists() and not Path(args.triton_repo).is_dir():
            raise ValueError(
                f"Received --triton-repo {args.triton_repo!r}, which is a file, expected a "
                "directory (a missing one is created)."
            )
        if not NAME_RULE.match(name):
            raise ValueError(f"Received an invalid --name {name!r}: use letters, digits, _ . -")
    if args.atol <= 0:
        raise ValueError(f"Received an invalid value for --atol, expected > 0, got {args.atol}.")
    labels = _labels(args.labels)  # before the export: a missing file fails fast
    samples = None if args.samples is None else [_samples(args.samples)]
    result = to_onnx(
        args.model,
        output,
        opset=args.opset,
        streaming=True if args.streaming else None,
        validate=not args.no_validate,
        atol=args.atol,
        samples=samples,
        labels=labels,
        quantize=args.quantize,
        int8_tolerance=args.int8_tolerance,
    )
    rnn = {k: v for k, v in result.op_counts.items() if k in RNN_OPS}
    print(f"wrote {output} ({rnn or 'no RNN nodes'}, inputs {_names(result.signature.inputs)})")
    if result.quantization is not None:
        q = result.quantization
        ratio = q["bytes"] / q["float32_bytes"]
        print(f"quantized {q['mode']}: {q['bytes']} bytes, {ratio:.2f}x the float32 model")
        for node, kind in q["nodes"].items():
            print(f"  {node}: {kind}")
    if args.triton_repo is not None:
        folder = write_triton_repo(
            output, args.triton_repo, name, version=args.version, backend=args.triton_backend
        )
        print(f"wrote Triton model {folder} (version {args.version}, {args.triton_backend})")
    return 0


def _samples(path: str):
    """The ``--samples`` file: an array (.npy) or ``{input name: array}`` (.npz)."""
    from keras_gates.cli import read_numpy

    return read_numpy(
        path, "--samples", "save a batch with numpy.save, or one per input name with numpy.savez"
    )


def _names(specs) -> str:
    return ", ".join(spec.name for spec in specs)


def _labels(values: list[str]):
    """``--labels`` values as ``to_onnx``'s ``labels``: a list for one unnamed file, else a dict."""
    from keras_gates.labels import read_label_file

    named = {}
    for value in values:
        output, _, file = value.rpartition("=") if not Path(value).is_file() else ("", "", value)
        if not Path(file).is_file():
            raise ValueError(
                f"Received --labels {value!r}, but {file!r} is not a file; expected [OUTPUT=]FILE "
                "with one label per line."
            )
        if output in named:
            raise ValueError(f"Received --labels twice for {output or 'the output'!r}.")
        named[output] = list(read_label_file(file))
    if not named:
        return None
    if list(named) == [""]:
        return named[""]
    if "" in named:
        raise ValueError("Received --labels both with and without OUTPUT=; name every output.")
    return named
