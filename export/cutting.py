"""Trace a Keras model with its gated layers cut out, and convert the rest with tf2onnx.

The model graph is run (``_internals.run_through_graph``) inside one ``tf.function`` whose
inputs are the model inputs, one lengths input per sequence input that feeds a gated layer, the
streaming states and one placeholder per ONNX RNN output of every cut, and whose outputs are the
model outputs, the streaming state outputs and, per cut, the time-major RNN input, its
``sequence_lens`` and initial states. Lengths travel with the tensors (:mod:`.lengths`). A first,
cheap discovery pass (zeros instead of placeholders) finds the cuts in execution order and which
sequence inputs reach them; each :class:`~.handlers.Cut` is made once, there, and read after.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from keras_gates import _internals

from . import cells
from .calls import inference_call, is_time_distributed, time_distributed_call
from .errors import ExportError
from .graph import ModelIO, functional_of, model_io
from .handlers import Cut, find_handler
from .lengths import Lengths, Tracker
from .lengths import seq_lens as lengths_of_cut
from .tf2onnx_bridge import function_to_onnx


def contains_gated(layer: Any) -> bool:
    """Whether ``layer`` is, or holds anywhere inside it, a layer the handlers convert."""
    if find_handler(layer) is not None:
        return True
    if not isinstance(layer, keras.layers.Layer):
        return False
    return any(find_handler(sub) is not None for sub in _internals.flatten_layers(layer))


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

    def next_cut(self, op: Any, plan, x: tf.Tensor, initial_state: Any) -> Cut:
        """The next cut in execution order. The discovery pass makes it: ``plan(index)`` (what
        the handler knows of the layer) with what this call brings, ``x`` and ``initial_state``
        (see :meth:`_with_call`); later passes read it unchanged."""
        index = self.count
        self.count += 1
        if self.placeholders is None:
            self.cuts.append(self._with_call(plan(index), x, initial_state))
        cut = self.cuts[index]
        if cut.layer is not op:
            raise RuntimeError(f"Tracing order changed at layer {op.name!r}; please report this.")
        return cut

    def _with_call(self, planned: Cut, x: tf.Tensor, initial_state: Any) -> Cut:
        """``planned`` with the facts of its call: initial states come in (streaming or an
        ``initial_state`` from the graph), and the model input whose lengths reach ``x``."""
        found = self.tracker.get(x)
        return dataclasses.replace(
            planned,
            has_initial=bool(planned.state_names) or initial_state is not None,
            lengths_source=found.source if found else None,
        )

    def cut(self, op: Any, handler: Any, args: tuple, kwargs: dict) -> Any:
        x = tf.cast(args[0], tf.float32)
        initial = kwargs.get("initial_state", args[1] if len(args) > 1 else None)
        cut = self.next_cut(op, lambda index: handler.plan(op, index, self.streaming), x, initial)
        mask = kwargs.get("mask")
        if mask is None:
            mask = _internals.get_keras_mask(args[0])
        found = self.tracker.get(args[0])
        seq_lens = lengths_of_cut(self.tracker, x, found, mask)
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
        """The node's initial-state inputs (``cut.has_initial``): the streaming states, or the
        ``initial_state`` the graph passes."""
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
    specs = _specs(io, cuts)
    traced: dict[str, Any] = {}
    fn = _cut_function(functional_of(model), streaming, io, cuts, specs, traced)
    onnx_model = function_to_onnx(tf.function(fn, autograph=False), specs, opset)
    io.output_steps = traced["steps"]
    return Converted(
        onnx_model,
        cuts,
        io,
        _final_names(io),
        traced["refusals"],
        traced["min_lengths"],
        traced["ties"],
        traced["mask_values"],
    )


def _specs(io: ModelIO, cuts: list[Cut]) -> list[tf.TensorSpec]:
    """Inputs of the cut function: model inputs and lengths, streaming states, placeholders."""
    states = [
        tf.TensorSpec([None, cut.units], tf.float32, name=f"kg_state{cut.index}_{s}")
        for _, cut, s in io.state_inputs
    ]
    placeholders = [spec for cut in cuts for spec in cut.placeholder_specs()]
    return [spec for _, spec, _ in io.inputs] + states + placeholders


def _cut_function(functional, streaming: bool, io: ModelIO, cuts, specs, traced: dict):
    """The function tf2onnx converts (inputs: :func:`_specs`); what its trace learns about
    lengths and per-step outputs is left in ``traced``."""
    n_data, n_in = len(io.data_inputs), len(io.inputs)
    n_states = len(io.state_inputs)
    placeholder_names = [spec.name for spec in specs[n_in + n_states :]]

    def fn(*flat):
        lengths = dict(zip(io.lengths_of.values(), flat[n_data:n_in]))
        states = {(cut.index, s): flat[n_in + k] for k, (_, cut, s) in enumerate(io.state_inputs)}
        ph = dict(zip(placeholder_names, flat[n_in + n_states :]))
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

    return fn


def _final_names(io: ModelIO) -> dict[str, str]:
    """Internal tensor name -> the exported model's name, for inputs, states and outputs."""
    rename = {spec.name: name for name, spec, _ in io.inputs}
    rename.update({f"kg_state{c.index}_{s}": n for n, c, s in io.state_inputs})
    rename.update({f"kg_out{i}": name for i, name in enumerate(io.outputs)})
    for _, cut, s in io.state_inputs:
        rename[f"kg_stateout_{cut.name}.{s}_out"] = f"{cut.name}.{s}_out"
    return rename


def _aligned(lengths: Lengths | None) -> str | None:
    """The input whose time axis an output keeps step for step (``None``: no such input)."""
    return lengths.source if lengths is not None and lengths.identity else None
