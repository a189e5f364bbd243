"""What an export records about itself: the signature and the metadata."""

from __future__ import annotations

import json
from typing import Any

from keras_gates.signature import METADATA_KEY, Signature, TensorSpec


def build_signature(model: Any, converted: Any, streaming: bool) -> Signature:
    """Inputs/outputs of the exported model with their roles (see :mod:`.signature`).

    Sequence inputs whose padding the trace already knows to be inexact (a fixed time axis, a
    'same' pooling before a gated layer...) refuse padding; validation may add more.
    """
    io = converted.io
    inputs = [
        TensorSpec(
            name,
            role,
            spec.dtype.name,
            tuple(spec.shape.as_list()),
            sequence_input=io.lengths_of.get(name),
            padding_refused=converted.refusals.get(name),
            min_length=converted.min_lengths.get(name, 1),
            aligned_with=converted.ties.get(name),
            mask_value=converted.mask_values.get(name),
        )
        for name, spec, role in io.inputs
    ]
    outputs = []
    steps = io.output_steps or [None] * len(io.outputs)
    for name, tensor, aligned in zip(io.outputs, _functional_outputs(model), steps):
        shape = (None, *tensor.shape[1:])
        per_step = len(shape) >= 3 and aligned is not None
        outputs.append(TensorSpec(name, "output", "float32", shape, per_step=per_step))
    for name, cut, s in io.state_inputs:
        out = f"{cut.name}.{s}_out"
        inputs.append(TensorSpec(name, "state", "float32", (None, cut.units), state_pair=out))
        outputs.append(TensorSpec(out, "state", "float32", (None, cut.units), state_pair=name))
    name = getattr(model, "name", "") or ""
    return Signature(tuple(inputs), tuple(outputs), streaming=streaming, model_name=name)


def _functional_outputs(model: Any) -> list[Any]:
    from .graph import functional_of

    return list(functional_of(model).outputs)


def set_metadata(onnx_model, model, signature, layouts, validation) -> None:
    """keras-gates version, source model, signature, gate layout and validation result."""
    from keras_gates.version import __version__

    props = {
        "keras_gates.version": __version__,
        "keras_gates.source_model": getattr(model, "name", ""),
        METADATA_KEY: signature.to_json(),
        "keras_gates.gate_layout": json.dumps(layouts, sort_keys=True, default=str),
        "keras_gates.validation": validation.to_json() if validation else '{"skipped": true}',
        "keras_gates.padding": json.dumps(
            _padding(signature, validation is not None), sort_keys=True
        ),
    }
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
