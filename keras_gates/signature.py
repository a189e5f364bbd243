"""The contract between an exported ONNX model and whoever runs it (Predictor, server, Triton).

The exporter writes a :class:`Signature` as JSON into the model's ``metadata_props`` under
:data:`METADATA_KEY`; the runtime reads it back with :func:`read_signature`. It says which inputs
are padded sequences, which one carries the per-sequence lengths, which inputs/outputs are
recurrent state (and how they pair up), and which outputs have a time axis. It also builds and
checks the feeds of such a model in the one way Predictor, validation and the server share
(:func:`complete_feeds`, :func:`check_feeds`), and decides for both servers when requests of
different lengths may share one right-padded call (:func:`pads_batches`). This module imports
only the standard library, numpy and ``onnx`` (lazily), so the serving process never loads
TensorFlow.

Conventions (all tensors batch-major, batch is axis 0):
  * ``role="sequence"``: float input ``[batch, time, features...]``, right-padded.
  * ``role="lengths"``: int32 input ``[batch]``, the valid length of each row of the sequence
    input named by ``sequence_input`` (one per sequence input that feeds a gated layer: named
    ``lengths`` when the model has one sequence input, else ``<input>_lengths``). A caller
    without padding passes that input's full time dimension for every row.
  * ``padding_refused`` on a sequence input: why its rows cannot be padded (``None``: they can,
    a padded row gives what the row gives alone in Keras). Its lengths must then equal its time
    dimension; :class:`~keras_gates.export.Predictor` and the server refuse anything shorter.
  * ``aligned_with`` on a sequence input: the sequence input it is merged with step by step
    (``Add``, ``Concatenate`` on features...): same time dimension, measured by that input's
    lengths.
  * ``mask_value`` on a sequence input: a Keras mask (``Masking``, ``Embedding(mask_zero=True)``)
    skips its steps equal to this value (every feature, or the token id). The ONNX operators
    skip only steps past a row's end, so a masked step before an unmasked one (a hole, or
    pre-padding) is refused.
  * ``min_length`` on a sequence input: the fewest steps of a row that leave every gated layer
    at least one step (above 1 after pooling or 'valid' windows); shorter rows are refused.
  * ``role="state"``: a recurrent state input ``[batch, units]`` (``h`` or ``c`` of one layer) and
    its output twin, named ``<layer>.h_in``/``<layer>.h_out`` (``c`` likewise for LSTM).
  * ``role="output"``: a model output; ``per_step=True`` when axis 1 is time (zeros past each
    sequence's length).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

METADATA_KEY = "keras_gates.signature"
ROLES = ("sequence", "lengths", "state", "output", "other")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input or output of an exported model."""

    name: str
    role: str
    dtype: str
    shape: tuple[int | None, ...]
    per_step: bool = False
    state_pair: str | None = None  # for a state input: its output twin, and vice versa
    sequence_input: str | None = None  # for a lengths input: the sequence input it measures
    padding_refused: str | None = None  # for a sequence input: why rows cannot be padded
    min_length: int = 1  # for a sequence input: the shortest row (pooling, 'valid' windows)
    aligned_with: str | None = None  # for a sequence input merged step by step with another
    mask_value: float | None = None  # for a sequence input: steps equal to it are masked

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(
                f"Received an invalid value for argument `role` of tensor {self.name!r}, "
                f"expected one of {ROLES}, got {self.role!r}."
            )


@dataclasses.dataclass(frozen=True)
class Signature:
    """Inputs and outputs of an exported model with their roles."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    streaming: bool = False
    model_name: str = ""

    def inputs_with(self, role: str) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.inputs if t.role == role)

    def outputs_with(self, role: str) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.outputs if t.role == role)

    @property
    def lengths_input(self) -> str | None:
        """The first (for one-sequence models: the only) lengths input, or ``None``."""
        found = self.inputs_with("lengths")
        return found[0].name if found else None

    def lengths_for(self, sequence: str) -> str | None:
        """The lengths input measuring sequence input ``sequence``, or ``None``."""
        return lengths_for(self.inputs, sequence)

    def complete_feeds(self, given: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``given`` with the lengths and state inputs it leaves out filled in (see
        :func:`complete_feeds`)."""
        return complete_feeds(self.inputs, given)

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`FeedError` for feeds the model would answer wrongly (see
        :func:`check_feeds`)."""
        check_feeds(self.inputs, feeds)

    @property
    def padding_refusals(self) -> dict[str, str]:
        """``{sequence input: why its rows cannot be padded}``."""
        return {t.name: t.padding_refused for t in self.inputs if t.padding_refused}

    @property
    def pads_batches(self) -> bool:
        """Whether requests of different time lengths can share one call, right-padded to the
        longest (see :func:`pads_batches`, the rule both servers apply)."""
        return pads_batches(self.inputs, self.outputs)

    @property
    def padded_inputs(self) -> frozenset[str]:
        """The inputs right-padded when requests share a call (see :func:`padded_inputs`)."""
        return padded_inputs(self.inputs, self.outputs)

    def min_length(self, sequence: str) -> int:
        """The fewest steps a row of ``sequence`` needs (each gated layer gets at least one)."""
        return next((t.min_length for t in self.inputs if t.name == sequence), 1)

    def with_refusals(self, refusals: dict[str, str]) -> Signature:
        """A copy whose sequence inputs in ``refusals`` refuse padding (first reason kept)."""
        inputs = tuple(
            dataclasses.replace(t, padding_refused=t.padding_refused or refusals[t.name])
            if t.name in refusals
            else t
            for t in self.inputs
        )
        return dataclasses.replace(self, inputs=inputs)

    @property
    def state_pairs(self) -> tuple[tuple[str, str], ...]:
        """``(input_name, output_name)`` for every recurrent state carried between calls."""
        return tuple((t.name, t.state_pair) for t in self.inputs_with("state"))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Signature:
        raw: dict[str, Any] = json.loads(text)

        def spec(d: dict[str, Any]) -> TensorSpec:
            return TensorSpec(**{**d, "shape": tuple(d["shape"])})

        return cls(
            inputs=tuple(spec(d) for d in raw["inputs"]),
            outputs=tuple(spec(d) for d in raw["outputs"]),
            streaming=raw.get("streaming", False),
            model_name=raw.get("model_name", ""),
        )


def read_signature(model_or_path: Any) -> Signature | None:
    """The signature stored in an ONNX model (a path or a ``ModelProto``), or ``None``."""
    import onnx

    model = model_or_path
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model_or_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return Signature.from_json(prop.value)
    return None


def masked_holes(x: Any, value: float, lengths: Any) -> list[int]:
    """Rows of ``x`` (``[batch, time, ...]``) with a step equal to ``value`` (a masked step)
    before an unmasked one within the row's length: the ONNX RNN operators cannot skip it."""
    x = np.asarray(x)
    masked = x == value if x.ndim == 2 else np.all(x == value, axis=tuple(range(2, x.ndim)))
    rows = []
    for row, n in enumerate(np.asarray(lengths).reshape(-1)):
        steps = masked[row, : int(n)]
        unmasked = np.flatnonzero(~steps)
        if unmasked.size and steps[: unmasked[-1]].any():
            rows.append(row)
    return rows


# ---- feeds: the defaults and checks Predictor, validation and the server share ------------------
class FeedError(ValueError):
    """Feeds the model would answer wrongly: lengths out of range, shorter than a time axis the
    export cannot pad or than a row needs, masked steps the RNN nodes cannot skip."""


def measured_sequence(lengths: TensorSpec, inputs: Sequence[TensorSpec]) -> str | None:
    """The sequence input a lengths input measures (the first one in signatures written before
    ``sequence_input`` existed)."""
    if lengths.sequence_input:
        return lengths.sequence_input
    return next((t.name for t in inputs if t.role == "sequence"), None)


def lengths_for(inputs: Sequence[TensorSpec], sequence: str) -> str | None:
    """The lengths input measuring sequence input ``sequence``, or ``None``."""
    found = [t.name for t in inputs if t.role == "lengths" and t.sequence_input == sequence]
    lengths = [t.name for t in inputs if t.role == "lengths"]
    if not found and len([t for t in inputs if t.role == "sequence"]) == 1 and lengths:
        return lengths[0]  # signatures written before sequence_input existed
    return found[0] if found else None


# ---- batching: when requests of different lengths may share one right-padded call --------------
def pads_batches(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Whether requests of different time lengths can share one call, each sequence input
    right-padded with zeros to the longest request, and every request still get exactly its own
    answer. The one rule of ``keras-gates serve``'s scheduler and Triton's ``model.py`` (whose
    ``config.pbtxt`` then sets ``allow_ragged_batch``).

    Padding is exact when a lengths input keeps every padded step out of the result:

    * every sequence input has a free time axis (axis 1) that the export did not refuse to pad
      (``padding_refused``), and is measured by a lengths input: its own, or that of the input it
      is merged with step by step (``aligned_with``: the same steps, so the same lengths);
    * every model output with a time axis is per step (cut back to each request's length; an
      output whose time axis is not the input's, pooled or strided, cannot be);
    * where there are per-step outputs, every sequence input shares one time axis (one lengths
      input): the length the outputs are cut back to. Independent sequences each with its own
      lengths (an encoder and a decoder) are padded each to its own longest when no output has a
      time axis.
    """
    specs = {t.name: t for t in inputs}
    sequences = [t for t in inputs if t.role == "sequence"]
    if not sequences:
        return False
    measured_by = set()
    for t in sequences:
        free = len(t.shape) >= 2 and t.shape[1] is None and t.padding_refused is None
        lengths = lengths_for(inputs, _step_root(t, specs).name)
        if not free or lengths is None:
            return False
        measured_by.add(lengths)
    timed = [t for t in outputs if t.role == "output" and len(t.shape) >= 3]
    if not all(t.per_step for t in timed):
        return False
    return not timed or len(measured_by) == 1


def padded_inputs(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> frozenset[str]:
    """The sequence inputs right-padded when requests of different lengths share a call: all of
    them where :func:`pads_batches` holds, none otherwise (requests then share a call only with
    requests of the same time lengths)."""
    if not pads_batches(inputs, outputs):
        return frozenset()
    return frozenset(t.name for t in inputs if t.role == "sequence")


def _step_root(spec: TensorSpec, specs: Mapping[str, TensorSpec]) -> TensorSpec:
    """The input ``spec`` is merged with step by step, followed to the end of the chain."""
    seen = {spec.name}
    while spec.aligned_with in specs and spec.aligned_with not in seen:
        spec = specs[spec.aligned_with]
        seen.add(spec.name)
    return spec


def complete_feeds(
    inputs: Sequence[TensorSpec], given: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``given`` with every input it leaves out that has a default, in input order.

    A lengths input defaults to the full time dimension (axis 1) of the sequence input it
    measures, each its own; a state input to zeros of its width. Both take the input's dtype and
    one row per row of the batch (axis 0 of the first sequence input given). Entries of ``given``
    that name no input are kept, last.
    """
    batch = _batch(inputs, given)
    feeds = {}
    for t in inputs:
        if t.name in given:
            feeds[t.name] = given[t.name]
        elif t.role == "lengths":
            steps = _steps(given[measured_sequence(t, inputs)])
            feeds[t.name] = np.full(batch, steps, t.dtype)
        elif t.role == "state":
            feeds[t.name] = np.zeros((batch, *t.shape[1:]), t.dtype)
    feeds.update((name, value) for name, value in given.items() if name not in feeds)
    return feeds


def check_feeds(inputs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`FeedError` for feeds the model would answer wrongly.

    Inputs merged step by step (``aligned_with``) need one time dimension. Each lengths input
    holds one value per row in ``[1, time]`` of its sequence input, at least that input's
    ``min_length``, and the full time where the export refused padding. A masked sequence input
    has no masked step before an unmasked one within a row's length.
    """
    specs = {t.name: t for t in inputs}
    for t in inputs:
        if t.role == "sequence" and t.name in feeds and t.aligned_with in feeds:
            _check_aligned(t.name, feeds[t.name], t.aligned_with, feeds[t.aligned_with])
    for t in inputs:
        sequence = specs.get(measured_sequence(t, inputs) or "")
        if t.role == "lengths" and t.name in feeds and sequence is not None:
            _check_lengths(t.name, np.asarray(feeds[t.name]), sequence, feeds[sequence.name])
    for t in inputs:
        if t.role == "sequence" and t.mask_value is not None and t.name in feeds:
            x = feeds[t.name]
            lengths = feeds.get(lengths_for(inputs, t.name) or "")
            if lengths is None:
                lengths = np.full(x.shape[0], _steps(x), np.int32)
            _check_holes(t.name, x, t.mask_value, np.asarray(lengths))


def _batch(inputs: Sequence[TensorSpec], given: Mapping[str, np.ndarray]) -> int:
    sequences = [given[t.name] for t in inputs if t.role == "sequence" and t.name in given]
    first = sequences[0] if sequences else next(iter(given.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _steps(sequence: np.ndarray) -> int:
    return int(sequence.shape[1]) if sequence.ndim > 1 else 1


def _check_aligned(name: str, x: np.ndarray, other: str, y: np.ndarray) -> None:
    if _steps(x) != _steps(y):
        raise FeedError(
            f"Received inputs {name!r} and {other!r} with {_steps(x)} and {_steps(y)} steps; "
            "the model merges them step by step, so they need the same time dimension."
        )


def _check_lengths(name: str, lengths: np.ndarray, sequence: TensorSpec, x: np.ndarray) -> None:
    batch, time, values = int(x.shape[0]), _steps(x), lengths.tolist()
    if lengths.dtype.kind not in "iu" and not np.array_equal(lengths, np.floor(lengths)):
        raise FeedError(
            f"Received an invalid value for `lengths` input {name!r}, expected whole numbers of "
            f"steps (one per row of {sequence.name!r}), got {values}."
        )
    if lengths.shape != (batch,) or lengths.min(initial=1) < 1 or lengths.max(initial=1) > time:
        raise FeedError(
            f"Received an invalid value for `lengths` input {name!r}, expected values between 1 "
            f"and the time length {time} of input {sequence.name!r}, one per row (shape "
            f"({batch},)), got {values}."
        )
    if sequence.padding_refused is not None and lengths.min(initial=time) < time:
        raise FeedError(
            f"Received lengths {values} for input {sequence.name!r}, shorter than its time "
            f"dimension {time}, but its rows cannot be padded: this export cannot pad "
            f"{sequence.name!r}: {sequence.padding_refused}. Pass rows of {time} steps (lengths "
            f"equal to {time}, the default when no lengths are given)."
        )
    shortest = sequence.min_length
    if lengths.min(initial=shortest) < shortest:
        raise FeedError(
            f"Received rows of {values} steps for input {sequence.name!r}, expected at least "
            f"{shortest} steps per row: the layers before a gated layer (pooling, 'valid' "
            "windows) leave shorter rows no step, and Keras cannot run them either."
        )


def _check_holes(name: str, x: np.ndarray, value: float, lengths: np.ndarray) -> None:
    """Refuse masked steps before unmasked ones (holes, pre-padding): ONNX cannot skip them."""
    rows = masked_holes(x, value, lengths)
    if rows:
        raise FeedError(
            f"Received input {name!r} with masked steps (equal to {value:g}) before unmasked "
            f"ones in rows {rows}; the exported RNN nodes skip only the steps past each row's "
            "length, not masked steps in between. Pad at the end (e.g. "
            "keras.utils.pad_sequences(..., padding='post')) and pass the lengths."
        )
