"""The inputs validation runs: random samples, padded batches, and how each model is fed them.

One generator makes every random value (:func:`random_array`): floats from a normal
distribution, token ids from 1 so that ``Embedding(mask_zero=True)`` masks nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_gates.signature import Signature
from keras_gates.stateful import states_preserved

from .cutting import Converted
from .errors import ExportError

PADDED_LENGTHS = (13, 12, 9, 8)  # odd and even, every remainder mod 3, never the whole row
VALIDATION_BATCHES = (1, 3)
VALIDATION_TIMES = (5, 9)


def random_array(
    shape: Sequence[int],
    dtype: Any,
    rng: np.random.Generator,
    scale: float = 1.0,
    shift: float = 0.0,
) -> np.ndarray:
    """Random values of ``dtype``: token ids from 1 (``mask_zero`` masks nothing), else normal
    floats times ``scale`` plus ``shift``."""
    if np.issubdtype(dtype, np.integer):
        return rng.integers(1, 5, size=shape).astype(dtype)
    return (rng.normal(size=shape) * scale + shift).astype(dtype)


def sample_value(
    spec: tf.TensorSpec, batch: int, time: int, rng: np.random.Generator
) -> np.ndarray:
    """A random input for ``spec``: ``batch`` rows, ``time`` steps where its time is free."""
    shape = [batch, *(time if d is None else d for d in spec.shape[1:])]
    return random_array(shape, spec.dtype.as_numpy_dtype, rng)


def validation_samples(
    model: Any, converted: Converted, samples: Sequence[Any] | None
) -> list[list[np.ndarray]]:
    """User samples as lists of arrays, or random inputs at two batch sizes and two lengths.

    Each sequence input gets its own length (they differ, so that a lengths input routed to the
    wrong node shows); a fixed time axis (``keras.Input((20, 4))``) keeps its own length, and a
    stateful model its fixed batch size.
    """
    if samples is not None:
        return [_user_sample(converted, i, sample) for i, sample in enumerate(samples)]
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
                sample_value(spec, b, _input_steps(converted, name, t), rng)
                for name, spec, _ in io.data_inputs
            ]
            result.append(arrays)
    return result


def _user_sample(converted: Converted, index: int, sample: Any) -> list[np.ndarray]:
    """One user sample (an array, a list of arrays or ``{input name: array}``) as a list of
    arrays in the model's input order, its shapes checked against the inputs'."""
    specs = [(name, spec) for name, spec, _ in converted.io.data_inputs]
    names = [name for name, _ in specs]
    if isinstance(sample, Mapping):
        if set(sample) != set(names):
            raise ExportError(
                f"samples[{index}] names the inputs {sorted(sample)}, expected exactly the "
                f"model's inputs {names}."
            )
        sample = [sample[name] for name in names]
    arrays = [np.asarray(a) for a in (sample if isinstance(sample, (list, tuple)) else [sample])]
    if len(arrays) != len(specs):
        raise ExportError(
            f"samples[{index}] has {len(arrays)} arrays, expected {len(specs)}: one per model "
            f"input {names} (a list in that order, or a dict by name)."
        )
    for (name, spec), array in zip(specs, arrays):
        want = [None, *spec.shape[1:]]
        if array.ndim != len(want) or any(w not in (None, g) for w, g in zip(want, array.shape)):
            shape = ", ".join("any" if w is None else str(w) for w in want[1:])
            raise ExportError(
                f"samples[{index}] for input {name!r} has shape {array.shape}, expected "
                f"(batch, {shape})."
            )
    return arrays


def around_batch(model: Any, samples: list[list[np.ndarray]], batch: int) -> list[list[np.ndarray]]:
    """``samples`` with, where none has, one of fewer than ``batch`` rows (the first sample's
    first row) and one of ``batch`` rows or more (the last sample's rows repeated): the int8
    LSTM changes branch at ``batch`` (:mod:`.lstm_int8`). A fixed batch size stays as it is."""
    if any(t.shape[0] is not None for t in model.inputs) or not samples:
        return samples
    sizes = [s[0].shape[0] for s in samples]
    below = [] if min(sizes) < batch else [[a[:1] for a in samples[0]]]
    above = [] if max(sizes) >= batch else [[_rows(a, batch) for a in samples[-1]]]
    return [*below, *samples, *above]


def _rows(array: np.ndarray, count: int) -> np.ndarray:
    return np.take(array, np.arange(count) % array.shape[0], axis=0)


def _input_steps(converted: Converted, name: str, time: int) -> int:
    """Steps of one input: its fixed time, else ``time + 2k`` for the ``k``-th input (inputs
    merged step by step share one), more when its rows need more."""
    io, facts = converted.io, converted.lengths
    root = facts.ties.get(name, name)
    if root in io.fixed_time or name in io.fixed_time:
        return io.fixed_time.get(root, io.fixed_time.get(name))
    k = [n for n, _, _ in io.data_inputs].index(root)
    shortest = max(facts.min_lengths.get(n, 1) for n in (name, root))
    return time + 2 * k + max(0, shortest - min(VALIDATION_TIMES))


def padded_lengths(shortest: int) -> np.ndarray:
    """``PADDED_LENGTHS``, shifted up when rows need more steps (pooling, 'valid' windows)."""
    shift = max(0, shortest - min(PADDED_LENGTHS))
    return np.array(PADDED_LENGTHS, np.int32) + shift


def padded_input(
    template: np.ndarray,
    batch: int,
    time: int,
    lengths: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """A random input like ``template`` with ``batch`` rows; with ``lengths``, ``time`` steps
    and garbage past each row's length."""
    shape = [batch, *template.shape[1:]]
    if lengths is not None:
        shape[1] = time
    x = random_array(shape, template.dtype, rng)
    if lengths is not None:
        garbage = random_array(shape, template.dtype, rng, scale=4.0, shift=3.0)
        steps = np.arange(time)[None, :] >= lengths[:, None]
        x[steps] = garbage[steps]
    return x


def onnx_feeds(
    signature: Signature,
    inputs: list[np.ndarray],
    states: dict | None = None,
    lengths: dict[str, np.ndarray] | None = None,
) -> dict:
    """ONNX feeds for the model inputs (in order): each lengths input its sequence's own time
    unless ``lengths`` (by sequence input) says otherwise, zero (or given) states."""
    data = [t.name for t in signature.inputs if t.role in ("sequence", "other")]
    given = {**dict(zip(data, inputs)), **(states or {})}
    for sequence, value in (lengths or {}).items():
        name = signature.lengths_for(sequence)  # None: merged with another input step by step
        if name is not None:
            given[name] = value
    return signature.complete_feeds(given)


def keras_outputs(model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Keras outputs (flat), stateful layers starting from zeros and left as they were."""
    with states_preserved(model, reset=True):
        outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [np.asarray(o) for o in outputs]
