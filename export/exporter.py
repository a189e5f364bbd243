"""``to_onnx``: a Keras model with gated layers -> one ONNX file with native LSTM/GRU nodes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from keras_gates.atomic import write_bytes
from keras_gates.saving import load_model

from .errors import ExportError
from keras_gates.signature import Signature

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-5


@dataclasses.dataclass
class ExportResult:
    """What :func:`to_onnx` wrote."""

    path: Path
    signature: Signature
    op_counts: dict[str, int]
    validation: Any | None  # ValidationResult, None when validate=False
    gate_layout: dict[str, Any]


def to_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    streaming: bool | None = None,
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    samples: Sequence[Any] | None = None,
    print_fn: Callable[[str], Any] | None = print,
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
            (single-input models) or a list of arrays (one per model input).
        print_fn: Where the validation table goes (``None`` for silence).

    Returns:
        An :class:`ExportResult` (path, signature, op counts, validation result, gate layout).
    """
    import onnx

    from . import splice as splicing
    from .metadata import build_signature, set_metadata
    from .validate import refusal_lines

    path = Path(path)
    _check_output_path(path)
    model = load_model(model)
    streaming = _resolve_streaming(model, streaming)
    opset = _check_opset(opset)
    converted = _convert(model, streaming, opset)
    _check_supported(converted.model, model)
    layouts = splicing.splice(converted.model, converted.cuts)
    splicing.rename_tensors(converted.model.graph, converted.rename)
    onnx_model = _finish(converted.model)
    signature = build_signature(model, converted, streaming)
    result = None
    if validate:
        result = _validate(model, onnx_model, signature, converted, samples, atol, path, print_fn)
        signature = signature.with_refusals(result.refusals)
    if print_fn is not None:
        for line in refusal_lines(signature.padding_refusals):
            print_fn(line)
    set_metadata(onnx_model, model, signature, layouts, result)
    onnx.checker.check_model(onnx_model, full_check=True)
    write_bytes(path, onnx_model.SerializeToString())
    return ExportResult(path, signature, splicing.count_ops(onnx_model), result, layouts)


def _validate(model, onnx_model, signature, converted, samples, atol, path, print_fn) -> Any:
    """Run the validation, print its table, raise :class:`ValidationError` beyond ``atol``."""
    from .validate import ValidationError, validate, validation_samples

    samples = validation_samples(model, converted, samples)
    result = validate(model, onnx_model.SerializeToString(), signature, samples, atol)
    if print_fn is not None:
        print_fn(result.table())
    if not result.passed:
        raise ValidationError(
            f"The exported model differs from Keras by up to {result.max_error:.3g}, above the "
            f"tolerance `atol={atol:g}`; nothing was written to {str(path)!r}.\n{result.table()}"
        )
    return result


def _check_output_path(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"Received an output path {str(path)!r} whose directory {str(parent)!r} does not "
            "exist. Create the directory first."
        )


def _check_opset(opset: int | None) -> int:
    """The opset to use, from 13 (tested lowest) to the newest tf2onnx writes."""
    from tf2onnx import constants

    newest = max(constants.OPSET_TO_IR_VERSION)
    value = DEFAULT_OPSET if opset is None else opset
    if not isinstance(value, int) or not 13 <= value <= newest:
        raise ExportError(
            f"Received an invalid value for argument `opset`, expected an integer in "
            f"[13, {newest}], got {opset!r}. The default is {DEFAULT_OPSET}."
        )
    return value


def _resolve_streaming(model: Any, streaming: bool | None) -> bool:
    from keras_gates import _internals

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


def _convert(model: Any, streaming: bool, opset: int) -> Any:
    """Trace with a dynamic time axis; if the model cannot, with its own fixed one."""
    from .cutting import convert

    try:
        return convert(model, streaming, opset, dynamic_time=True)
    except ExportError:
        raise
    except Exception:  # a layer that needs its static time axis while tracing
        return convert(model, streaming, opset, dynamic_time=False)


def _check_supported(onnx_model: Any, model: Any) -> None:
    """Fail naming the Keras layer whose ops tf2onnx left unconverted."""
    import onnx

    for node in onnx_model.graph.node:
        domain = node.domain or ""
        known = domain in ("", "ai.onnx") and onnx.defs.has(node.op_type, domain)
        if not known:
            layer = _layer_of(node.name, model)
            where = f"layer {layer.name!r} ({type(layer).__name__})" if layer else "the model"
            raise ExportError(
                f"Cannot export {where}: neither a native RNN handler nor tf2onnx converts its "
                f"operation {node.op_type!r} (node {node.name!r}). Replace that layer with "
                "standard Keras layers, or remove it before exporting."
            )


def _layer_of(node_name: str, model: Any) -> Any | None:
    """The layer whose name scope produced ``node_name`` (Keras may suffix scopes ``_1``)."""
    import re

    from keras_gates import _internals

    layers = {layer.name: layer for layer in _internals.flatten_layers(model)}
    parts = list(reversed(node_name.split("/")))
    for candidate in parts + [re.sub(r"_\d+$", "", p) for p in parts]:
        if candidate in layers:
            return layers[candidate]
    return None


def _finish(onnx_model: Any) -> Any:
    """Shape inference, IR version onnxruntime/Triton accept, producer fields."""
    import onnx

    from keras_gates.version import __version__

    onnx_model.producer_name = "keras-gates"
    onnx_model.producer_version = __version__
    onnx_model.ir_version = onnx.helper.find_min_ir_version_for(
        list(onnx_model.opset_import), ignore_unknown=True
    )
    del onnx_model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(onnx_model, strict_mode=True)
