"""What the exported model's interface is, read from the Keras model's ``Functional`` graph.

The names, dtypes, shapes and roles of its inputs (data, one lengths input per padded sequence
input, the streaming states) and the names of its outputs. Nothing here traces or converts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from keras_gates import _internals

from .errors import ExportError
from .handlers import Cut

LENGTHS = "lengths"


@dataclasses.dataclass
class ModelIO:
    """Final names, dtypes and shapes of the exported model's inputs and outputs."""

    inputs: list[tuple[str, tf.TensorSpec, str]]  # (final name, spec, role): data, then lengths
    outputs: list[str]  # final model output names (without state outputs)
    state_inputs: list[tuple[str, Cut, str]]  # (final name, cut, "h"|"c")
    lengths_of: dict[str, str] = dataclasses.field(default_factory=dict)  # lengths -> sequence
    fixed_time: dict[str, int] = dataclasses.field(default_factory=dict)  # sequence -> Keras T

    @property
    def data_inputs(self) -> list[tuple[str, tf.TensorSpec, str]]:
        return [entry for entry in self.inputs if entry[2] != "lengths"]


functional_of = _internals.functional_of


def unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats suffixed ``_1``, ``_2`` (Keras repeats a layer name per output)."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        result.append(name if count == 0 else f"{name}_{count}")
    return result


def output_names(model: Any) -> list[str]:
    functional = functional_of(model)
    return unique_names([_internals.producing_layer(t).name for t in functional.outputs])


def input_role(spec: Any) -> str:
    """``sequence`` for ``[batch, time, features...]`` floats and ``[batch, time]`` token ids."""
    rank = len(spec.shape)
    is_int = "int" in str(spec.dtype)
    return "sequence" if rank >= 3 or (rank == 2 and is_int) else "other"


def _input_name(name: str, index: int) -> str:
    """The Keras input name, or ``input``/``input_<i>`` for Keras' anonymous ``keras_tensor``."""
    if name.startswith("keras_tensor"):
        return "input" if index == 0 else f"input_{index}"
    return name


def lengths_name(sequence: str, sequences: int) -> str:
    """``lengths`` for a model with one sequence input, else ``<input>_lengths``."""
    return LENGTHS if sequences == 1 else f"{sequence}_{LENGTHS}"


def model_io(
    model: Any, cuts: list[Cut], dynamic_time: bool, padded: list[str] | None = None
) -> ModelIO:
    """Inputs, outputs and states; ``padded``: the sequence inputs that get a lengths input
    (``None``: every sequence input, for the discovery pass)."""
    functional = functional_of(model)
    inputs, fixed = [], {}
    for i, tensor in enumerate(functional.inputs):
        role = input_role(tensor)
        name = _input_name(tensor.name, i)
        shape = [None, *tensor.shape[1:]]
        if role == "sequence" and shape[1] is not None:
            fixed[name] = int(shape[1])
        if role == "sequence" and dynamic_time:
            shape[1] = None
        spec = tf.TensorSpec(shape, tf.as_dtype(tensor.dtype), name=f"kg_in{i}")
        inputs.append((name, spec, role))
    sequences = [name for name, _, role in inputs if role == "sequence"]
    padded = sequences if padded is None else [n for n in sequences if n in padded]
    lengths_of = {}
    for k, sequence in enumerate(padded):
        name = lengths_name(sequence, len(sequences))
        lengths_of[name] = sequence
        inputs.append((name, tf.TensorSpec([None], tf.int32, name=f"kg_lengths{k}"), "lengths"))
    states = []
    for cut in cuts:
        if cut.state_names and any(c.name == cut.name for _, c, _ in states):
            raise ExportError(_shared_state_message(cut))
        for s in cut.state_names:
            states.append((f"{cut.name}.{s}_in", cut, s))
    return ModelIO(inputs, output_names(model), states, lengths_of, fixed)


def _shared_state_message(cut: Cut) -> str:
    inputs = ", ".join(f"{cut.name}.{s}_in" for s in cut.state_names)
    return (
        f"Layer {cut.name!r} ({type(cut.layer).__name__}) is called more than once in the model; "
        f"a streaming export cannot give each call its own state input ({inputs}). Use a "
        "separate layer for each call, or export without streaming (`streaming=False`)."
    )
