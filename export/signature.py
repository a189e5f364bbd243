"""The contract between an exported ONNX model and whoever runs it (Predictor, server, Triton).

The exporter writes a :class:`Signature` as JSON into the model's ``metadata_props`` under
:data:`METADATA_KEY`; the runtime reads it back with :func:`read_signature`. It says which inputs
are padded sequences, which one carries the per-sequence lengths, which inputs/outputs are
recurrent state (and how they pair up), and which outputs have a time axis. This module imports
only the standard library and ``onnx`` (lazily), so the serving process never loads TensorFlow.

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
from typing import Any

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
        found = [t.name for t in self.inputs_with("lengths") if t.sequence_input == sequence]
        if not found and len(self.inputs_with("sequence")) == 1 and self.lengths_input:
            return self.lengths_input  # signatures written before sequence_input existed
        return found[0] if found else None

    @property
    def padding_refusals(self) -> dict[str, str]:
        """``{sequence input: why its rows cannot be padded}``."""
        return {t.name: t.padding_refused for t in self.inputs if t.padding_refused}

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
    import numpy as np

    x = np.asarray(x)
    masked = x == value if x.ndim == 2 else np.all(x == value, axis=tuple(range(2, x.ndim)))
    rows = []
    for row, n in enumerate(np.asarray(lengths).reshape(-1)):
        steps = masked[row, : int(n)]
        unmasked = np.flatnonzero(~steps)
        if unmasked.size and steps[: unmasked[-1]].any():
            rows.append(row)
    return rows
