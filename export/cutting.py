"""Trace a Keras model with its gated layers cut out, and convert the rest with tf2onnx.

The model graph is run (``_internals.run_through_graph``) inside one ``tf.function`` whose
inputs are the model inputs, one lengths input per sequence input that feeds a gated layer, the
streaming states and one placeholder per ONNX RNN output of every cut, and whose outputs are the
model outputs, the streaming state outputs and, per cut, the time-major RNN input, its
``sequence_lens`` and initial states. Lengths travel with the tensors (:mod:`.lengths`). A first,
cheap discovery pass (zeros instead of placeholders) finds the cuts in execution order and which
sequence inputs reach them; each :class:`~.handlers.Cut` is made once, there, and read after.
What the trace learns about lengths comes back as one frozen :class:`~.lengths.LengthFacts`.

:func:`convert` is the exporter's convert stage: it traces with a dynamic time axis (with the
model's own fixed one if the model cannot), converts with tf2onnx and fails naming the Keras
layer whose ops tf2onnx left unconverted.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import keras
import onnx
import tensorflow as tf

from keras_gates import _internals

from . import cells
from .calls import inference_call, is_time_distributed, time_distributed_call
from .errors import ExportError
from .graph import ModelIO, functional_of, model_io
from .handlers import Cut, Handler, find_handler
from .lengths import LengthFacts, Lengths, Tracker
from .tf2onnx_bridge import function_to_onnx


def contains_gated(layer: Any) -> bool:
    """Whether ``layer`` is, or holds anywhere inside it, a layer the handlers convert."""
    if find_handler(layer) is not None:
        return True
    if not isinstance(layer, keras.layers.Layer):
        return False
    return any(find_handler(sub) is not None for sub in _internals.flatten_layers(layer))


def fixed_time_refusal(steps: int) -> str:
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
            refusal = fixed_time_refusal(steps) if steps is not None else None
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

    def enter_call(self, op: Any, args: tuple, kwargs: dict) -> GatedCall:
        """What a gated call brings (its input, mask, lengths and initial state), with the
        ``sequence_lens`` its node(s) get."""
        x = tf.cast(args[0], tf.float32)
        mask = kwargs.get("mask")
        if mask is None:
            mask = _internals.get_keras_mask(args[0])
        found = self.tracker.get(args[0])
        return GatedCall(
            arg=args[0],
            x=x,
            mask=mask,
            found=found,
            seq_lens=self.tracker.record_lengths(x, found, mask),
            initial=kwargs.get("initial_state", args[1] if len(args) > 1 else None),
        )

    def leave_call(self, op: Any, call: GatedCall, outputs: list) -> Any:
        """``op``'s Keras outputs, with the masks Keras would set and the call's lengths."""
        self.set_masks(op, call.arg, call.mask, outputs)
        for tensor in outputs:
            if call.found is not None and tensor.shape.rank == 3:
                self.tracker.set(tensor, call.found)
        return outputs[0] if len(outputs) == 1 else outputs

    def cut(self, op: Any, handler: Handler, args: tuple, kwargs: dict) -> Any:
        call = self.enter_call(op, args, kwargs)

        def plan(index: int) -> Cut:
            return handler.plan(op, index, self.streaming)

        cut = self.next_cut(op, plan, call.x, call.initial)
        ph = self.connect(cut, call.x, call.seq_lens, call.initial)
        outputs = handler.rebuild(cut, ph, call.seq_lens)
        self.add_state_outputs(cut, ph)
        return self.leave_call(op, call, outputs)

    def add_state_outputs(self, cut: Cut, ph: dict[str, tf.Tensor]) -> None:
        """Streaming: the node's last states become the model's ``<cut>.<s>_out`` outputs."""
        for s in cut.state_names:
            self.state_outputs[f"{cut.name}.{s}_out"] = ph[f"Y_{s}"][0]

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
        time, batch = tf.shape(x)[1], tf.shape(x)[0]
        return {o: tf.zeros(tf.stack(cut.onnx_output_shape(o, time, batch))) for o in cut.outputs}


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


@dataclasses.dataclass(frozen=True)
class GatedCall:
    """One call of a gated layer (or ``RNN`` over gated cells), as :meth:`_Run.enter_call`
    found it."""

    arg: Any  # the first argument, as Keras passed it (its mask and lengths are keyed by it)
    x: tf.Tensor  # that argument as float32
    mask: Any  # the Keras mask reaching the call, or None
    found: Lengths | None  # the lengths the argument carries
    seq_lens: tf.Tensor  # [B] the sequence_lens of the call's node(s)
    initial: Any  # the initial_state the graph passes, or None


@dataclasses.dataclass(frozen=True)
class Converted:
    """The convert stage's result: the tf2onnx model with one open cut per gated layer call."""

    model: onnx.ModelProto  # the cuts still open; splice.build_onnx closes them (in place)
    cuts: list[Cut]
    io: ModelIO
    rename: dict[str, str]  # internal tensor name -> final name
    lengths: LengthFacts  # what the trace learned about the sequence inputs and outputs


def convert(model: Any, streaming: bool, opset: int) -> Converted:
    """Trace with a dynamic time axis; if the model cannot, with its own fixed one. Fails naming
    the Keras layer whose ops tf2onnx left unconverted.

    When both traces fail, the dynamic-time error is raised (the fixed-time one is its cause);
    an :class:`ExportError` of either trace is raised as it is.
    """
    try:
        converted = convert_traced(model, streaming, opset, dynamic_time=True)
    except ExportError:
        raise
    except Exception as dynamic_error:  # a layer that needs its static time axis while tracing
        try:
            converted = convert_traced(model, streaming, opset, dynamic_time=False)
        except ExportError:
            raise
        except Exception as fixed_error:
            raise dynamic_error from fixed_error
    check_supported(converted.model, model)
    return converted


def convert_traced(model: Any, streaming: bool, opset: int, dynamic_time: bool) -> Converted:
    """Discover the cuts, trace the cut model and convert it with tf2onnx."""
    cuts = discover(model, streaming, dynamic_time)
    padded = sorted({c.lengths_source for c in cuts if c.lengths_source is not None})
    io = model_io(model, cuts, dynamic_time, padded)
    specs = _specs(io, cuts)
    cut_function = _CutFunction(functional_of(model), streaming, io, cuts, specs)
    onnx_model = function_to_onnx(tf.function(cut_function.fn, autograph=False), specs, opset)
    return Converted(onnx_model, cuts, io, _final_names(io), cut_function.facts)


def check_supported(onnx_model: onnx.ModelProto, model: Any) -> None:
    """Fail naming the Keras layer whose ops tf2onnx left unconverted."""
    for node in onnx_model.graph.node:
        domain = node.domain or ""
        known = domain in ("", "ai.onnx") and onnx.defs.has(node.op_type, domain)
        if not known:
            layer = layer_of(node.name, model)
            where = f"layer {layer.name!r} ({type(layer).__name__})" if layer else "the model"
            raise ExportError(
                f"Cannot export {where}: neither a native RNN handler nor tf2onnx converts its "
                f"operation {node.op_type!r} (node {node.name!r}). Replace that layer with "
                "standard Keras layers, or remove it before exporting."
            )


def layer_of(node_name: str, model: Any) -> Any | None:
    """The layer whose name scope produced ``node_name`` (Keras may suffix scopes ``_1``)."""
    layers = {layer.name: layer for layer in _internals.flatten_layers(model)}
    parts = list(reversed(node_name.split("/")))
    for candidate in parts + [re.sub(r"_\d+$", "", p) for p in parts]:
        if candidate in layers:
            return layers[candidate]
    return None


def _specs(io: ModelIO, cuts: list[Cut]) -> list[tf.TensorSpec]:
    """Inputs of the cut function: model inputs and lengths, streaming states, placeholders."""
    states = [
        tf.TensorSpec([None, cut.units], tf.float32, name=f"kg_state{cut.index}_{s}")
        for _, cut, s in io.state_inputs
    ]
    placeholders = [spec for cut in cuts for spec in cut.placeholder_specs()]
    return [spec for _, spec, _ in io.inputs] + states + placeholders


class _CutFunction:
    """The function tf2onnx converts (:meth:`fn`, inputs: :func:`_specs`), and the
    :class:`LengthFacts` its trace learned."""

    def __init__(self, functional: Any, streaming: bool, io: ModelIO, cuts: list[Cut], specs):
        self.functional = functional
        self.streaming = streaming
        self.io = io
        self.cuts = cuts
        n_in, n_states = len(io.inputs), len(io.state_inputs)
        self.placeholder_names = [spec.name for spec in specs[n_in + n_states :]]
        self.facts = LengthFacts()  # set by the trace

    def fn(self, *flat: tf.Tensor) -> dict[str, tf.Tensor]:
        # (the ONNX graph's doc_string names it: "converted from __inference_fn_<n>")
        io = self.io
        n_data, n_in, n_states = len(io.data_inputs), len(io.inputs), len(io.state_inputs)
        lengths = dict(zip(io.lengths_of.values(), flat[n_data:n_in]))
        states = {(cut.index, s): flat[n_in + k] for k, (_, cut, s) in enumerate(io.state_inputs)}
        ph = dict(zip(self.placeholder_names, flat[n_in + n_states :]))
        run = _Run(self.streaming, io, lengths, states, ph, self.cuts)
        flat_out = run.run_model(self.functional, list(flat[:n_data]))
        self.facts = run.tracker.facts(flat_out)
        result = {f"kg_out{i}": tf.identity(t) for i, t in enumerate(flat_out)}
        result.update({f"kg_stateout_{k}": tf.identity(t) for k, t in run.state_outputs.items()})
        result.update({k: tf.identity(t) for k, t in run.cut_outputs.items()})
        result.update({f"kg_keep_{n}": tf.identity(t) for n, t in lengths.items()})
        return result


def _final_names(io: ModelIO) -> dict[str, str]:
    """Internal tensor name -> the exported model's name, for inputs, states and outputs."""
    rename = {spec.name: name for name, spec, _ in io.inputs}
    rename.update({f"kg_state{c.index}_{s}": n for n, c, s in io.state_inputs})
    rename.update({f"kg_out{i}": name for i, name in enumerate(io.outputs)})
    for _, cut, s in io.state_inputs:
        rename[f"kg_stateout_{cut.name}.{s}_out"] = f"{cut.name}.{s}_out"
    return rename
