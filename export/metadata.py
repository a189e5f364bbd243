"""What an export records about itself: the signature, the metadata, the validation samples."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .signature import METADATA_KEY, Signature, TensorSpec

VALIDATION_BATCHES = (1, 3)
VALIDATION_TIMES = (5, 9)


def build_signature(model: Any, converted: Any, streaming: bool) -> Signature:
    """Inputs/outputs of the exported model with their roles (see :mod:`.signature`)."""
    io = converted.io
    seq_time = next((spec.shape[1] for _, spec, role in io.inputs if role == "sequence"), None)
    inputs = [
        TensorSpec(name, role, spec.dtype.name, tuple(spec.shape.as_list()))
        for name, spec, role in io.inputs
    ]
    outputs = []
    for name, tensor in zip(io.outputs, _functional_outputs(model)):
        shape = (None, *tensor.shape[1:])
        per_step = len(shape) >= 3 and (seq_time is None or shape[1] == seq_time)
        outputs.append(TensorSpec(name, "output", "float32", shape, per_step=per_step))
    for name, cut, s in io.state_inputs:
        out = f"{cut.layer.name}.{s}_out"
        inputs.append(TensorSpec(name, "state", "float32", (None, cut.units), state_pair=out))
        outputs.append(TensorSpec(out, "state", "float32", (None, cut.units), state_pair=name))
    name = getattr(model, "name", "") or ""
    return Signature(tuple(inputs), tuple(outputs), streaming=streaming, model_name=name)


def _functional_outputs(model: Any) -> list[Any]:
    from .trace import functional_of

    return list(functional_of(model).outputs)


def validation_samples(
    model: Any, converted: Any, samples: Sequence[Any] | None
) -> list[list[np.ndarray]]:
    """User samples as lists of arrays, or random inputs at two batch sizes and two lengths.

    A stateful model has a fixed batch size, and a model whose time axis could not be made
    dynamic a fixed length: those are used alone.
    """
    from .trace import sample_value

    if samples is not None:
        as_lists = [s if isinstance(s, (list, tuple)) else [s] for s in samples]
        return [[np.asarray(a) for a in sample] for sample in as_lists]
    entries = [(spec, role) for _, spec, role in converted.io.inputs if role != "lengths"]
    batch = next((int(t.shape[0]) for t in model.inputs if t.shape[0] is not None), None)
    batches = (batch,) if batch else VALIDATION_BATCHES
    time = next((spec.shape[1] for spec, role in entries if role == "sequence"), None)
    times = (time,) if time is not None else VALIDATION_TIMES
    rng = np.random.default_rng(0)
    return [[sample_value(spec, b, t, rng) for spec, _ in entries] for b in batches for t in times]


def set_metadata(onnx_model, model, signature, layouts, validation) -> None:
    """keras-gates version, source model, signature, gate layout and validation result."""
    from keras_gates.version import __version__

    props = {
        "keras_gates.version": __version__,
        "keras_gates.source_model": getattr(model, "name", ""),
        METADATA_KEY: signature.to_json(),
        "keras_gates.gate_layout": json.dumps(layouts, sort_keys=True, default=str),
        "keras_gates.validation": validation.to_json() if validation else '{"skipped": true}',
    }
    kept = [p for p in onnx_model.metadata_props if p.key not in props]
    del onnx_model.metadata_props[:]
    onnx_model.metadata_props.extend(kept)
    for key, value in props.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
