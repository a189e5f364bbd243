"""Trace a Keras model with its gated layers cut out, and convert the rest with tf2onnx.

The model graph is run (``_internals.run_through_graph``) inside one ``tf.function`` whose
inputs are the model inputs, one lengths input per sequence input that feeds a gated layer, the
streaming states and one placeholder per ONNX RNN output of every cut, and whose outputs are the
model outputs, the streaming state outputs and, per cut, the time-major RNN input, its
``sequence_lens`` and initial states. Lengths travel with the tensors (:mod:`.lengths`). A first,
cheap discovery pass (zeros instead of placeholders) finds the cuts in execution order and which
sequence inputs reach them.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_gates import _internals

from . import cells
from .calls import inference_call, is_time_distributed, time_distributed_call
from .errors import ExportError
from .handlers import Cut, find_handler
from .lengths import Lengths, Tracker
from .lengths import seq_lens as lengths_of_cut

LENGTHS = "lengths"


@dataclasses.dataclass
class ModelIO:
    """Final names, dtypes and shapes of the exported model's inputs and outputs."""

    inputs: list[tuple[str, tf.TensorSpec, str]]  # (final name, spec, role): data, then lengths
    outputs: list[str]  # final model output names (without state outputs)
    state_inputs: list[tuple[str, Cut, str]]  # (final name, cut, "h"|"c")
    lengths_of: dict[str, str] = dataclasses.field(default_factory=dict)  # lengths -> sequence
    fixed_time: dict[str, int] = dataclasses.field(default_factory=dict)  # sequence -> Keras T
    output_steps: list[str | None] = dataclasses.field(default_factory=list)  # aligned input

    @property
    def data_inputs(self) -> list[tuple[str, tf.TensorSpec, str]]:
        return [entry for entry in self.inputs if entry[2] != "lengths"]

    @property
    def lengths_inputs(self) -> list[tuple[str, tf.TensorSpec, str]]:
        return [entry for entry in self.inputs if entry[2] == "lengths"]


functional_of = _internals.functional_of


def contains_gated(layer: Any) -> bool:
    """Whether ``layer`` is, or holds anywhere inside it, a layer the handlers convert."""
    if find_handler(layer) is not None:
        return True
    if not isinstance(layer, keras.layers.Layer):
        return False
    return any(find_handler(sub) is not None for sub in _internals.flatten_layers(layer))


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
        for s in cut.state_names:
            states.append((f"{cut.name}.{s}_in", cut, s))
    return ModelIO(inputs, output_names(model), states, lengths_of, fixed)


def fixed_time_refusal(name: str, steps: int) -> str:
    return (
        f"its time axis is fixed at {steps} steps in the Keras model, so a shorter row has no "
        f"Keras answer to match; send rows of {steps} steps (rebuild the model with "
        "keras.Input((None, ...)) to pad)"
    )


class _Run:
    """One pass through the model graph with gated layers cut out."""

    def __init__(
        self, streaming: bool, io: ModelIO, lengths: dict, states: dict, placeholders, cuts
    ):
        self.streaming = streaming
        self.io = io
        self.lengths = lengths  # sequence input name -> [B] lengths tensor
        self.states = states  # (cut index, "h"|"c") -> [B, U] tensor
        self.placeholders = placeholders  # None during discovery
        self.cuts: list[Cut] = cuts
        self.count = 0
        self.tracker = Tracker()
        self.cut_outputs: dict[str, tf.Tensor] = {}
        self.state_outputs: dict[str, tf.Tensor] = {}

    def run_model(self, functional: Any, inputs: list) -> list:
        """The model outputs (flat); each padded sequence input carries its own lengths."""
        for (name, _, role), x in zip(self.io.data_inputs, inputs):
            if role != "sequence":
                continue
            steps = self.io.fixed_time.get(name)
            refusal = fixed_time_refusal(name, steps) if steps is not None else None
            value = self.lengths.get(name)  # none: the input reaches no gated layer
            value = tf.fill(tf.shape(x)[:1], tf.shape(x)[1]) if value is None else value
            self.tracker.set(x, Lengths(value, name, refusal=refusal))
            self.tracker.mark_input(x, name)
        outputs = self.run_functional(functional, inputs)
        return outputs if isinstance(outputs, (list, tuple)) else [outputs]

    def run_functional(self, functional: Any, inputs: Any) -> Any:
        outputs = _internals.run_through_graph(functional, inputs, self.operation_fn)
        return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs

    def operation_fn(self, op: Any):
        handler = find_handler(op)
        if handler is not None:
            return lambda *args, **kwargs: self.cut(op, handler, args, kwargs)
        if cells.is_cell_rnn(op):
            return lambda *args, **kwargs: cells.call(self, op, args, kwargs)
        inner = functional_of(op)
        if inner is not None:  # nested models: their layers carry lengths and may be cut
            return lambda *args, **kwargs: self.run_functional(inner, args[0])
        if contains_gated(op):
            raise ExportError(
                f"Layer {op.name!r} ({type(op).__name__}) wraps a gated layer in a way the "
                "exporter cannot split into a native ONNX RNN node. Use the gated layer directly "
                "(or inside Bidirectional or a nested Functional/Sequential model)."
            )
        if is_time_distributed(op):
            return self.tracker.propagate(op, time_distributed_call(op))
        return self.tracker.propagate(op, inference_call(op))

    def next_cut(self, op: Any, plan) -> Cut:
        """The next cut in execution order (planned with ``plan(index)`` while discovering)."""
        index = self.count
        self.count += 1
        if self.placeholders is None:
            self.cuts.append(plan(index))
        cut = self.cuts[index]
        if cut.layer is not op:
            raise RuntimeError(f"Tracing order changed at layer {op.name!r}; please report this.")
        return cut

    def cut(self, op: Any, handler: Any, args: tuple, kwargs: dict) -> Any:
        cut = self.next_cut(op, lambda index: handler.plan(op, index, self.streaming))
        x = tf.cast(args[0], tf.float32)
        mask = kwargs.get("mask")
        if mask is None:
            mask = _internals.get_keras_mask(args[0])
        found = self.tracker.get(args[0])
        seq_lens = lengths_of_cut(self.tracker, x, found, mask)
        initial = kwargs.get("initial_state", args[1] if len(args) > 1 else None)
        ph = self.connect(cut, x, seq_lens, initial)
        outputs = handler.rebuild(cut, ph, seq_lens)
        for s in cut.state_names:
            self.state_outputs[f"{cut.name}.{s}_out"] = ph[f"Y_{s}"][0]
        self.set_masks(op, args[0], mask, outputs)
        for tensor in outputs:
            if found is not None and tensor.shape.rank == 3:
                self.tracker.set(tensor, found)
        return outputs[0] if len(outputs) == 1 else outputs

    def connect(self, cut: Cut, x: tf.Tensor, seq_lens: tf.Tensor, initial: Any) -> dict:
        """Hand ``x`` (batch-major), ``seq_lens`` and initial states to the node of ``cut``;
        returns its ONNX-shaped outputs (placeholders)."""
        found = self.tracker.get(x)
        cut.lengths_source = cut.lengths_source or (found.source if found else None)
        self.cut_outputs[cut.tensor("X")] = tf.transpose(x, [1, 0, 2])
        self.cut_outputs[cut.tensor("seq_lens")] = seq_lens
        self._initial_states(cut, x, initial)
        return self._placeholders(cut, x)

    def set_masks(self, op: Any, x: Any, mask: Any, outputs: list) -> None:
        if mask is None:
            return
        masks = op.compute_mask(x, mask)
        masks = masks if isinstance(masks, (list, tuple)) else [masks]
        for tensor, m in zip(outputs, masks):
            if m is not None:
                _internals.set_keras_mask(tensor, m)

    def _state(self, cut: Cut, s: str, x: tf.Tensor) -> tf.Tensor:
        """The streaming state input ``s`` of ``cut`` (zeros during discovery)."""
        if (cut.index, s) in self.states:
            return self.states[(cut.index, s)]
        return tf.zeros(tf.stack([tf.shape(x)[0], cut.units]))

    def _initial_states(self, cut: Cut, x: tf.Tensor, initial_state: Any) -> None:
        state_names = cut.handler.state_names
        if cut.state_names:
            if initial_state is not None:
                raise ExportError(
                    f"Layer {cut.layer.name!r} receives `initial_state` from the graph, which "
                    "cannot be combined with `streaming=True`. Export without streaming."
                )
            per_state = {s: [self._state(cut, s, x)] for s in state_names}
        elif initial_state is not None:
            flat = tf.nest.flatten(initial_state)
            n = len(state_names)
            per_state = {s: flat[k::n] for k, s in enumerate(state_names)}
        else:
            return
        cut.has_initial = True
        for s, tensors in per_state.items():
            self.cut_outputs[cut.tensor(f"{s}0")] = tf.stack(
                [tf.cast(t, tf.float32) for t in tensors]
            )

    def _placeholders(self, cut: Cut, x: tf.Tensor) -> dict[str, tf.Tensor]:
        if self.placeholders is not None:
            return {o: self.placeholders[cut.tensor(o)] for o in cut.outputs}
        t, b, d = tf.shape(x)[1], tf.shape(x)[0], cut.num_directions
        shapes = {"Y": [t, d, b, cut.units], "Y_h": [d, b, cut.units], "Y_c": [d, b, cut.units]}
        return {o: tf.zeros(tf.stack(shapes[o])) for o in cut.outputs}


def discover(model: Any, streaming: bool, dynamic_time: bool) -> list[Cut]:
    """The gated layer calls of ``model`` in execution order (a cheap trace with zeros)."""
    functional = functional_of(model)
    if functional is None:
        raise ExportError(
            f"Received a model of class {type(model).__name__} without a functional graph; "
            "expected a Functional or a built Sequential model. Build it with keras.Input first."
        )
    cuts: list[Cut] = []
    io = model_io(model, [], dynamic_time)
    n_data = len(io.data_inputs)

    def fn(*flat):
        lengths = dict(zip(io.lengths_of.values(), flat[n_data:]))
        run = _Run(streaming, io, lengths, {}, None, cuts)
        run.run_model(functional, list(flat[:n_data]))
        return 0

    tf.function(fn, autograph=False).get_concrete_function(*[spec for _, spec, _ in io.inputs])
    return cuts


@dataclasses.dataclass
class Converted:
    model: Any  # onnx.ModelProto with the cuts still open
    cuts: list[Cut]
    io: ModelIO
    rename: dict[str, str]  # internal tensor name -> final name
    refusals: dict[str, str]  # sequence input -> why its rows cannot be padded (structural)
    min_lengths: dict[str, int]  # sequence input -> shortest row its gated layers can run
    ties: dict[str, str]  # sequence input -> the input whose time axis it shares (merged)
    mask_values: dict[str, float]  # sequence input -> the value whose steps its mask skips


def convert(model: Any, streaming: bool, opset: int, dynamic_time: bool = True) -> Converted:
    """Discover the cuts, trace the cut model and convert it with tf2onnx."""
    cuts = discover(model, streaming, dynamic_time)
    padded = sorted({c.lengths_source for c in cuts if c.lengths_source is not None})
    io = model_io(model, cuts, dynamic_time, padded)
    functional = functional_of(model)
    n_data, n_len = len(io.data_inputs), len(io.lengths_inputs)
    n_in = n_data + n_len
    state_specs = [
        tf.TensorSpec([None, cut.units], tf.float32, name=f"kg_state{cut.index}_{s}")
        for _, cut, s in io.state_inputs
    ]
    ph_specs = [spec for cut in cuts for spec in cut.placeholder_specs()]
    specs = [spec for _, spec, _ in io.inputs] + state_specs + ph_specs
    traced: dict[str, Any] = {}

    def fn(*flat):
        lengths = dict(zip(io.lengths_of.values(), flat[n_data:n_in]))
        states = {(cut.index, s): flat[n_in + k] for k, (_, cut, s) in enumerate(io.state_inputs)}
        ph = dict(zip([s.name for s in ph_specs], flat[n_in + len(state_specs) :]))
        run = _Run(streaming, io, lengths, states, ph, cuts)
        flat_out = run.run_model(functional, list(flat[:n_data]))
        traced["steps"] = [_aligned(run.tracker.get(t)) for t in flat_out]
        traced["refusals"] = dict(run.tracker.refusals)
        traced["min_lengths"] = dict(run.tracker.min_lengths)
        traced["ties"] = run.tracker.ties
        traced["mask_values"] = run.tracker.mask_values
        result = {f"kg_out{i}": tf.identity(t) for i, t in enumerate(flat_out)}
        result.update({f"kg_stateout_{k}": tf.identity(t) for k, t in run.state_outputs.items()})
        result.update({k: tf.identity(t) for k, t in run.cut_outputs.items()})
        result.update({f"kg_keep_{n}": tf.identity(t) for n, t in lengths.items()})
        return result

    onnx_model = _tf2onnx(tf.function(fn, autograph=False), specs, opset)
    io.output_steps = traced["steps"]
    rename = {spec.name: name for name, spec, _ in io.inputs}
    rename.update({f"kg_state{c.index}_{s}": n for n, c, s in io.state_inputs})
    rename.update({f"kg_out{i}": name for i, name in enumerate(io.outputs)})
    for _, cut, s in io.state_inputs:
        rename[f"kg_stateout_{cut.name}.{s}_out"] = f"{cut.name}.{s}_out"
    return Converted(
        onnx_model,
        cuts,
        io,
        rename,
        traced["refusals"],
        traced["min_lengths"],
        traced["ties"],
        traced["mask_values"],
    )


def _aligned(lengths: Lengths | None) -> str | None:
    """The input whose time axis an output keeps step for step (``None``: no such input)."""
    return lengths.source if lengths is not None and lengths.identity else None


def _tf2onnx(function: Any, specs: list[tf.TensorSpec], opset: int) -> Any:
    """``tf2onnx.convert.from_function`` on CPU, quiet, with Keras' numpy-2 patch."""
    import tf2onnx

    tf2onnx.logging.set_level(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _internals.patch_tf2onnx()
        with tf.device("/cpu:0"):
            model_proto, _ = tf2onnx.convert.from_function(function, specs, opset=opset)
    return model_proto


def sample_value(spec: tf.TensorSpec, batch: int, time: int, rng: np.random.Generator):
    """A random input for ``spec`` (token ids from 1 so that ``mask_zero`` masks nothing)."""
    shape = [batch, *(time if d is None else d for d in spec.shape[1:])]
    if spec.dtype.is_integer:
        return rng.integers(1, 5, size=shape).astype(spec.dtype.as_numpy_dtype)
    return rng.normal(size=shape).astype(spec.dtype.as_numpy_dtype)
