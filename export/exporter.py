"""``to_onnx``: a Keras model with gated layers -> one ONNX file with native LSTM/GRU nodes.

``to_onnx`` only orchestrates; each stage lives in its own module and returns a typed value:

- load: :func:`keras_gates.saving.load_model`, a Keras model;
- convert: :func:`.cutting.convert`, a :class:`~.cutting.Converted`;
- splice: :func:`.splice.build_onnx`, the ONNX model and the gate layouts;
- quantize (``quantize="int8"``): :func:`.quantize.quantize`, a :class:`~.quantize.Quantized`
  (the 8-bit model and what was quantized);
- describe: :func:`.metadata.build_signature`, a :class:`~keras_gates.signature.Signature`;
- validate: :func:`.samples.validation_samples` and :func:`.validate.run`, a
  :class:`~.validation_result.ValidationResult` (:func:`.validate.report` prints it and fails
  beyond ``atol``; an int8 export is validated against Keras after the float32 one, on the same
  inputs, and its table shows both errors);
- write: :func:`.metadata.write`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
from tf2onnx import constants as tf2onnx_constants

from keras_gates import _internals
from keras_gates.labels import resolve_labels
from keras_gates.saving import load_model
from keras_gates.signature import Signature

from . import cutting, metadata, splice
from . import quantize as quantization
from . import validate as validation
from .errors import ExportError
from .samples import around_batch, validation_samples
from .validation_result import ValidationResult, refusal_lines

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-5


@dataclasses.dataclass
class ExportResult:
    """What :func:`to_onnx` wrote."""

    path: Path
    signature: Signature
    op_counts: dict[str, int]
    validation: ValidationResult | None  # None when validate=False
    gate_layout: dict[str, Any]
    quantization: dict[str, Any] | None = None  # None for float32 (quantize=None)


def to_onnx(
    model: keras.Model | str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    streaming: bool | None = None,
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    samples: Sequence[Any] | None = None,
    print_fn: Callable[[str], Any] | None = print,
    labels: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    quantize: str | None = None,
    int8_tolerance: float = quantization.DEFAULT_INT8_TOLERANCE,
) -> ExportResult:
    """Export ``model`` (a Keras model or a ``.keras`` path) to ONNX at ``path``.

    Every ``GatedLSTM``/``GatedGRU`` (also inside ``Bidirectional``) becomes one native ONNX
    ``LSTM``/``GRU`` node, a ``keras.layers.RNN`` over gated cells one node per cell; every
    other layer converts through tf2onnx. Each sequence input that feeds a gated layer gets an
    int32 lengths input (``[batch]``): ``lengths`` when the model has one sequence input, else
    ``<input>_lengths``; pass the time dimension for every row when there is no padding. It
    becomes the ``sequence_lens`` of the nodes that input reaches, rescaled by pooling, strided
    or 'valid' convolutions and cropping on the way. Per-step outputs of gated layers are zero
    past each length. Validation also runs padded batches against each row alone in Keras; an
    input whose padded rows cannot match (a fixed time axis, a 'same' convolution or pooling
    before a gated layer, attention or global pooling over time...) is printed, recorded in the
    signature and refuses padding in :class:`Predictor` and the server.

    Args:
        model: A built Functional/Sequential Keras model, or the path of a ``.keras`` file.
        path: Output ``.onnx`` file; its directory must exist. Written atomically: nothing is
            left at ``path`` when any step fails.
        opset: ONNX opset (default 17).
        streaming: Add ``<layer>.h_in``/``.c_in`` state inputs and ``.h_out``/``.c_out`` outputs
            so that sequences can run in chunks. Default: on for stateful models, else off.
        validate: Compare onnxruntime with Keras before writing; fail beyond ``atol``.
        atol: Max abs error allowed per output (float32 default 1e-5).
        samples: Inputs to validate on instead of random ones: a list of samples, each an array
            (single-input models), a list of arrays (one per model input) or a dict of arrays
            by input name. Real data matters most for ``quantize="int8"``: its error depends on
            the values it sees.
        print_fn: Where the validation table goes (``None`` for silence).
        labels: Class names for the classification extension of ``keras-gates serve`` and
            Triton: a list (label ``i`` names class ``i`` of the model's one output) or a dict
            ``{output name: [label, ...]}``; recorded in the metadata (``keras_gates.labels``),
            and written as ``labels.txt`` by :func:`~keras_gates.export.write_triton_repo`.
        quantize: ``"int8"`` stores the weights of gated layers and ``Dense``/``Conv1D``/
            ``Embedding`` layers in 8 bits (LSTM and Dense also quantize their activations at
            run time); ``None`` (default) keeps float32. See :mod:`.quantize`.
        int8_tolerance: With ``quantize="int8"``: max abs error allowed per output as a
            fraction of that output's range in Keras on the validation inputs (default 0.02).
            The float32 export is validated first against ``atol``.

    Returns:
        An :class:`ExportResult` (path, signature, op counts, validation result, gate layout).
    """
    path = Path(path)
    mode = quantization.check_mode(quantize)
    int8_tolerance = quantization.check_tolerance(int8_tolerance)
    _check_output_path(path)
    model = load_model(model)
    streaming = _resolve_streaming(model, streaming)
    opset = _check_opset(opset)
    converted = cutting.convert(model, streaming, opset)
    onnx_model, layouts = splice.build_onnx(converted)
    quantized = quantization.quantize(onnx_model, mode) if mode else None
    signature = metadata.build_signature(model, converted, streaming)
    labelled = resolve_labels(labels, metadata.output_classes(signature))
    result = None
    if validate:
        inputs = validation_samples(model, converted, samples)
        if quantized is not None and quantized.float_from_batch is not None:
            inputs = around_batch(model, inputs, quantized.float_from_batch)  # both int8 branches
        result = validation.run(model, onnx_model.SerializeToString(), signature, inputs, atol)
        if quantized is not None:
            int8_bytes = quantized.model.SerializeToString()
            result = validation.run(
                model, int8_bytes, signature, inputs, atol, rtol=int8_tolerance, baseline=result
            )
        validation.report(result, path, print_fn)
        signature = signature.with_refusals(result.refusals)
    if print_fn is not None:
        for line in refusal_lines(signature.padding_refusals):
            print_fn(line)
    final = quantized.model if quantized is not None else onnx_model
    summary = quantized.summary() if quantized is not None else None
    metadata.write(
        path, final, model, signature, layouts, result, quantization=summary, labels=labelled
    )
    return ExportResult(path, signature, splice.count_ops(final), result, layouts, summary)


def _check_output_path(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"Received an output path {str(path)!r} whose directory {str(parent)!r} does not "
            "exist. Create the directory first."
        )


def _check_opset(opset: int | None) -> int:
    """The opset to use, from 13 (tested lowest) to the newest tf2onnx writes."""
    newest = max(tf2onnx_constants.OPSET_TO_IR_VERSION)
    value = DEFAULT_OPSET if opset is None else opset
    if not isinstance(value, int) or not 13 <= value <= newest:
        raise ExportError(
            f"Received an invalid value for argument `opset`, expected an integer in "
            f"[13, {newest}], got {opset!r}. The default is {DEFAULT_OPSET}."
        )
    return value


def _resolve_streaming(model: keras.Model, streaming: bool | None) -> bool:
    stateful = [
        layer.name
        for layer in _internals.flatten_layers(model)
        if getattr(layer, "stateful", False)
    ]
    if streaming is None:
        return bool(stateful)
    if stateful and not streaming:
        raise ExportError(
            f"Received `streaming=False` for a model with stateful layers {stateful}; their "
            "state can only be carried as ONNX inputs/outputs. Pass streaming=True (or None)."
        )
    return bool(streaming)
