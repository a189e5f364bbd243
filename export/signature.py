"""The contract between an exported ONNX model and whoever runs it (Predictor, server, Triton).

The exporter writes a :class:`Signature` as JSON into the model's ``metadata_props`` under
:data:`METADATA_KEY`; the runtime reads it back with :func:`read_signature`. It says which inputs
are padded sequences, which one carries the per-sequence lengths, which inputs/outputs are
recurrent state (and how they pair up), and which outputs have a time axis. This module imports
only the standard library and ``onnx`` (lazily), so the serving process never loads TensorFlow.

Conventions (all tensors batch-major, batch is axis 0):
  * ``role="sequence"``: float input ``[batch, time, features...]``, right-padded.
  * ``role="lengths"``: int32 input ``[batch]``, the valid length of each sequence. A caller
    without padding passes the full time dimension for every row.
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
        found = self.inputs_with("lengths")
        return found[0].name if found else None

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
