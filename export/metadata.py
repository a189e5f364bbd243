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
    from .trace import functional_of

    return list(functional_of(model).outputs)


def validation_samples(
    model: Any, converted: Any, samples: Sequence[Any] | None
) -> list[list[np.ndarray]]:
    """User samples as lists of arrays, or random inputs at two batch sizes and two lengths.

    Each sequence input gets its own length (they differ, so that a lengths input routed to the
    wrong node shows); a fixed time axis (``keras.Input((20, 4))``) keeps its own length, and a
    stateful model its fixed batch size.
    """
    from .trace import sample_value

    if samples is not None:
        as_lists = [s if isinstance(s, (list, tuple)) else [s] for s in samples]
        return [[np.asarray(a) for a in sample] for sample in as_lists]
    io = converted.io
    batch = next((int(t.shape[0]) for t in model.inputs if t.shape[0] is not None), None)
    batches = (batch,) if batch else VALIDATION_BATCHES
    dynamic = any(r == "sequence" and n not in io.fixed_time for n, _, r in io.data_inputs)
    times = VALIDATION_TIMES if dynamic else VALIDATION_TIMES[:1]
    rng = np.random.default_rng(0)
    result = []
    for b in batches:
        for t in times:
            arrays = [
                sample_value(spec, b, _steps(converted, name, t), rng)
                for name, spec, _ in io.data_inputs
            ]
            result.append(arrays)
    return result


def _steps(converted: Any, name: str, time: int) -> int:
    """Steps of one input: its fixed time, else ``time + 2k`` for the ``k``-th input (inputs
    merged step by step share one), more when its rows need more."""
    io = converted.io
    root = converted.ties.get(name, name)
    if root in io.fixed_time or name in io.fixed_time:
        return io.fixed_time.get(root, io.fixed_time.get(name))
    k = [n for n, _, _ in io.data_inputs].index(root)
    shortest = max(converted.min_lengths.get(n, 1) for n in (name, root))
    return time + 2 * k + max(0, shortest - min(VALIDATION_TIMES))


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
