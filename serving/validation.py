"""Check decoded input tensors against a model's inputs before any work is queued.

Every check raises :class:`~keras_gates.serving.errors.BadRequest` with a message naming the input,
the rule, the value received and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_gates import signature

from .datatypes import NUMPY_TO_V2, protocol_shape
from .errors import BadRequest
from .runtime import TensorInfo, specs_of


def describe(tensors: Sequence[TensorInfo]) -> str:
    """``x (FP32 [-1, -1, 3]), lengths (INT32 [-1])`` for error messages."""
    return ", ".join(f"{t.name} ({t.datatype} {protocol_shape(t.shape)})" for t in tensors)


def optional_inputs(inputs: Sequence[TensorInfo]) -> frozenset[str]:
    """Inputs the server can fill itself: lengths (full length) and recurrent state (zeros)."""
    return frozenset(t.name for t in inputs if t.role in ("lengths", "state"))


def check_names(model: str, inputs: Sequence[TensorInfo], given: dict, optional: frozenset) -> None:
    """Every required input present, no input the model does not take."""
    known = {t.name for t in inputs}
    extra = sorted(set(given) - known)
    if extra:
        raise BadRequest(
            f"Model {model!r} has no input {extra[0]!r}; expected inputs: {describe(inputs)}."
        )
    missing = [t.name for t in inputs if t.name not in given and t.name not in optional]
    if missing:
        raise BadRequest(
            f"Request for model {model!r} is missing input {missing[0]!r}; "
            f"expected inputs: {describe(inputs)}."
        )


def model_form(spec: TensorInfo, array: np.ndarray) -> np.ndarray:
    """A ``[batch]`` input given as ``[B, 1]`` (the advertised form) or ``[B]`` -> ``[B]``."""
    if spec.batch_only and array.ndim == 2 and array.shape[1] == 1:
        return array.reshape(array.shape[0])
    return array


def check_tensor(model: str, spec: TensorInfo, array: np.ndarray) -> None:
    """Datatype, rank, fixed dims and finiteness of one input."""
    if array.dtype != spec.dtype:
        got = NUMPY_TO_V2.get(array.dtype, str(array.dtype))
        raise BadRequest(
            f"Input {spec.name!r} of model {model!r} has datatype {got}, expected {spec.datatype}."
        )
    shape = array.shape
    ok = len(shape) == len(spec.shape) and all(
        want is None or want == got for want, got in zip(spec.shape, shape, strict=True)
    )
    if not ok or (shape and shape[0] == 0):
        also = " or [-1]" if spec.batch_only else ""
        raise BadRequest(
            f"Input {spec.name!r} of model {model!r} has shape {list(shape)}, expected "
            f"{protocol_shape(spec.shape)}{also} (-1 is any size >= 1)."
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(
            f"Input {spec.name!r} of model {model!r} contains NaN or Inf; expected finite values."
        )


def check_batch(model: str, given: dict[str, np.ndarray]) -> int:
    """All inputs share the batch dim (axis 0); returns it."""
    sizes = {name: a.shape[0] for name, a in given.items() if a.ndim}
    batches = set(sizes.values())
    if len(batches) > 1:
        raise BadRequest(
            f"Inputs of model {model!r} disagree on the batch size (axis 0): {sizes}; "
            "expected the same batch size for every input."
        )
    return batches.pop() if batches else 1


def check_sequences(
    model: str, seq_specs: Sequence[TensorInfo], given: dict, independent: bool = False
) -> int | None:
    """All sequence inputs share the time dim (axis 1); returns it (``None`` without any).

    ``independent``: each sequence input has its own lengths input (encoder-decoder), so their
    time dims may differ; returns the first one's.
    """
    steps = {t.name: given[t.name].shape[1] for t in seq_specs if t.name in given}
    if not steps:
        return None
    values = set(steps.values())
    aligned = {t.name: t.aligned_with for t in seq_specs if t.aligned_with in steps}
    if independent and 0 not in values and all(steps[a] == steps[b] for a, b in aligned.items()):
        return next(iter(steps.values()))
    if len(values) > 1 or 0 in values:
        raise BadRequest(
            f"Sequence inputs of model {model!r} have time lengths (axis 1) {steps}; "
            "expected one common length >= 1."
        )
    return values.pop()


def check_feeds(model: str, inputs: Sequence[TensorInfo], feeds: dict[str, np.ndarray]) -> None:
    """Lengths in ``[1, time]``, as long as a row needs and as its time axis where the export
    refused padding; no masked step before an unmasked one (the checks
    :func:`keras_gates.signature.check_feeds` shares with ``Predictor``)."""
    try:
        signature.check_feeds(specs_of(inputs), feeds)
    except signature.FeedError as err:
        raise BadRequest(f"Model {model!r}: {err}") from err
