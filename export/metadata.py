"""What an export records about itself: the signature (the describe stage) and the metadata,
checked and written with the model (the write stage)."""

from __future__ import annotations

import json
import os
from typing import Any

import onnx

from keras_gates.atomic import write_bytes
from keras_gates.labels import LABELS_KEY, Labels, labels_to_json
from keras_gates.quantization import QUANTIZATION_KEY
from keras_gates.signature import METADATA_KEY, Signature, TensorSpec
from keras_gates.version import __version__

from .cutting import Converted
from .graph import functional_of
from .validation_result import ValidationResult


def build_signature(model: Any, converted: Converted, streaming: bool) -> Signature:
    """Inputs/outputs of the exported model with their roles (see :mod:`.signature`).

    Sequence inputs whose padding the trace already knows to be inexact (a fixed time axis, a
    'same' pooling before a gated layer...) refuse padding; validation may add more.
    """
    io, facts = converted.io, converted.lengths
    inputs = [
        TensorSpec(
            name,
            role,
            spec.dtype.name,
            tuple(spec.shape.as_list()),
            sequence_input=io.lengths_of.get(name),
            padding_refused=facts.refusals.get(name),
            min_length=facts.min_lengths.get(name, 1),
            aligned_with=facts.ties.get(name),
            mask_value=facts.mask_values.get(name),
        )
        for name, spec, role in io.inputs
    ]
    outputs = []
    steps = facts.output_steps or (None,) * len(io.outputs)
    for name, tensor, aligned in zip(io.outputs, functional_of(model).outputs, steps):
        shape = (None, *tensor.shape[1:])
        per_step = len(shape) >= 3 and aligned is not None
        outputs.append(TensorSpec(name, "output", "float32", shape, per_step=per_step))
    for name, cut, s in io.state_inputs:
        out = f"{cut.name}.{s}_out"
        inputs.append(TensorSpec(name, "state", "float32", (None, cut.units), state_pair=out))
        outputs.append(TensorSpec(out, "state", "float32", (None, cut.units), state_pair=name))
    name = getattr(model, "name", "") or ""
    return Signature(tuple(inputs), tuple(outputs), streaming=streaming, model_name=name)


def write(
    path: str | os.PathLike,
    onnx_model: onnx.ModelProto,
    model: Any,
    signature: Signature,
    layouts: dict[str, Any],
    validation: ValidationResult | None,
    quantization: dict[str, Any] | None = None,
    labels: Labels | None = None,
) -> None:
    """Record the metadata in ``onnx_model`` (keras-gates version, source model, signature, gate
    layout, validation result, padding, quantization: ``{"mode": null}`` for float32, class
    labels), check it, and write it to ``path`` atomically."""
    props = {
        "keras_gates.version": __version__,
        "keras_gates.source_model": getattr(model, "name", ""),
        METADATA_KEY: signature.to_json(),
        "keras_gates.gate_layout": json.dumps(layouts, sort_keys=True, default=str),
        "keras_gates.validation": validation.to_json() if validation else '{"skipped": true}',
        "keras_gates.padding": json.dumps(
            _padding(signature, validation is not None), sort_keys=True
        ),
        QUANTIZATION_KEY: json.dumps(quantization or {"mode": None}, sort_keys=True),
    }
    if labels:
        props[LABELS_KEY] = labels_to_json(labels)
    _set_props(onnx_model, props)
    onnx.checker.check_model(onnx_model, full_check=True)
    write_bytes(path, onnx_model.SerializeToString())


def output_classes(signature: Signature) -> list[tuple[str, int | None]]:
    """``(name, size of the last axis)`` of each output a client reads (not the state ones)."""
    return [
        (t.name, t.shape[-1] if len(t.shape) >= 2 else None)
        for t in signature.outputs
        if t.role != "state"
    ]


def _set_props(onnx_model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace these keys in ``onnx_model.metadata_props``, keeping the others."""
    kept = [p for p in onnx_model.metadata_props if p.key not in props]
    del onnx_model.metadata_props[:]
    onnx_model.metadata_props.extend(kept)
    for key, value in props.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value


def _padding(signature: Signature, checked: bool) -> dict[str, Any]:
    """``{sequence input: {"lengths": name, "padding": state, "reason": ...}}``; the state is
    ``exact`` (checked on padded batches), ``unchecked`` (validate=False) or ``refused``."""
    refusals = signature.padding_refusals
    return {
        t.name: {
            "lengths": signature.lengths_for(t.name),
            "padding": "refused" if t.name in refusals else ("exact" if checked else "unchecked"),
            "reason": refusals.get(t.name),
        }
        for t in signature.inputs_with("sequence")
    }
