"""One handler per layer type that becomes a native ONNX ``LSTM``/``GRU`` node.

A handler owns everything the export knows about its layer type: the ONNX operator, its state
tensors, its gate order, its optional inputs, its weights and attributes. Handlers register by
the keras_gates classes they convert (``@handles("GatedLSTM", "GatedLSTMCell")``); a
``Bidirectional`` around a registered layer derives its handler from the inner one. Adding a
layer type means adding one handler here.

While the model is traced for tf2onnx, each handled layer call is *cut*: its input leaves the
traced function as an extra output (time-major, with its ``sequence_lens``), and its result
enters as extra placeholder inputs shaped like the ONNX operator's outputs (``Y``
``[T, D, B, U]``, ``Y_h``/``Y_c`` ``[D, B, U]``). The handler rebuilds the Keras outputs from
those placeholders with ordinary TensorFlow ops (transpose, reverse, merge), so tf2onnx converts
the plumbing and :mod:`.splice` only has to drop one RNN node into each cut.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from keras_gates import gates

from .errors import ExportError
from .rnn_weights import DirectionWeights, gru_direction, lstm_direction

_REGISTRY: dict[str, type[Handler]] = {}  # keras_gates class name -> handler class


def handles(*class_names: str):
    """Class decorator: the handler converts the keras_gates layers/cells of these names."""

    def register(handler: type[Handler]) -> type[Handler]:
        for name in class_names:
            _REGISTRY[name] = handler
        return handler

    return register


@dataclasses.dataclass
class Cut:
    """One gated layer call replaced by one ONNX RNN node."""

    index: int
    layer: Any  # the gated layer, or the Bidirectional wrapper
    handler: Handler
    direction: str  # "forward" | "reverse" | "bidirectional"
    units: int
    outputs: tuple[str, ...]  # ONNX outputs consumed: subset of ("Y", "Y_h", "Y_c")
    state_names: tuple[str, ...] = ()  # streaming: ("h",) or ("h", "c")
    has_initial: bool = False  # initial states come in (streaming or initial_state=)
    name: str = ""  # node and state-tensor prefix (default: the layer name)
    cells: tuple[Any, ...] = ()  # RNN over cells: the cell whose weights the node holds
    lengths_source: str | None = None  # the model input whose lengths reach this node
    # has_initial and lengths_source are facts of the call: the trace sets them when it makes the
    # cut (cutting._Run.next_cut), from the handler's plan; nothing changes a cut after that.

    def __post_init__(self):
        if not self.name:
            self.name = self.layer.name

    @property
    def weight_layers(self) -> list[Any]:
        """The layers (or cells) holding the node's weights, in ONNX direction order."""
        return list(self.cells) or self.handler.inner(self.layer)

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    def tensor(self, part: str) -> str:
        """Internal name of one tensor of the cut (``X``, ``seq_lens``, ``h0``, ``Y``, ...)."""
        return f"kg_cut{self.index}_{part}"

    def onnx_output_shape(self, output: str, time: Any = None, batch: Any = None) -> list[Any]:
        """The shape of the node's ONNX output ``output``: ``Y`` ``[T, D, B, U]``, ``Y_h`` and
        ``Y_c`` ``[D, B, U]`` (``time``/``batch``: sizes, tensors, or ``None`` for unknown)."""
        d, u = self.num_directions, self.units
        return [time, d, batch, u] if output == "Y" else [d, batch, u]

    def placeholder_specs(self) -> list[tf.TensorSpec]:
        return [
            tf.TensorSpec(self.onnx_output_shape(o), tf.float32, name=self.tensor(o))
            for o in self.outputs
        ]


class Handler:
    """Base handler for a single-direction gated layer (``GatedLSTM``/``GatedGRU``)."""

    op_type = ""
    state_names: tuple[str, ...] = ("h",)  # ONNX outputs Y_<s>, initial-state inputs <s>0
    gate_order: tuple[str, ...] = ()  # the operator's gate order in W/R/B (keras_gates.gates)

    @property
    def onnx_outputs(self) -> tuple[str, ...]:
        """The operator's outputs, in order."""
        return ("Y", *(f"Y_{s}" for s in self.state_names))

    def optional_inputs(self, initializers: dict[str, str]) -> list[str]:
        """Inputs after the initial states (``""`` for an absent one)."""
        return []

    def needed_outputs(self, sequences: bool, states: bool, streaming: bool) -> tuple[str, ...]:
        """The ONNX outputs a call consumes: ``Y`` for per-step outputs, ``Y_h`` for the last
        output, the states for ``return_state`` and streaming."""
        outputs = ["Y"] if sequences else []
        if not sequences or states or streaming:
            outputs.append("Y_h")
        if "c" in self.state_names and (states or streaming):
            outputs.append("Y_c")
        return tuple(outputs)

    def inner(self, layer: Any) -> list[Any]:
        """The gated layer(s) in ONNX direction order."""
        return [layer]

    def direction_weights(self, layer: Any) -> DirectionWeights:
        raise NotImplementedError

    def node_attributes(self, layer: Any) -> dict[str, Any]:
        return {}

    def plan(self, layer: Any, index: int, streaming: bool) -> Cut:
        """Which ONNX outputs the Keras outputs need, before tracing."""
        check_exportable(layer)
        first = self.inner(layer)[0]
        if streaming and getattr(layer, "go_backwards", False):
            raise ExportError(
                f"Layer {layer.name!r} ({type(layer).__name__}) has go_backwards=True and cannot "
                "be exported with `streaming=True`: a chunk would be read end to start. Export "
                "without streaming."
            )
        return Cut(
            index=index,
            layer=layer,
            handler=self,
            direction=self.direction(layer),
            units=int(first.units),
            outputs=self.needed_outputs(first.return_sequences, first.return_state, streaming),
            state_names=self.state_names if streaming else (),
        )

    def direction(self, layer: Any) -> str:
        return "reverse" if layer.go_backwards else "forward"

    def rebuild(self, cut: Cut, ph: dict[str, tf.Tensor], seq_lens: tf.Tensor) -> list[tf.Tensor]:
        """Keras outputs ``[y, *states]`` from the ONNX-shaped placeholders."""
        layer = cut.layer
        if layer.return_sequences:
            y = tf.transpose(ph["Y"][:, 0], [1, 0, 2])
            if layer.go_backwards:  # Keras returns the steps in processing order
                y = tf.reverse_sequence(y, seq_lens, seq_axis=1, batch_axis=0)
        else:
            y = ph["Y_h"][0]
        states = [ph[f"Y_{s}"][0] for s in self.state_names] if layer.return_state else []
        return [y, *states]


@handles("GatedLSTM", "GatedLSTMCell")
class LSTMHandler(Handler):
    op_type = "LSTM"
    state_names = ("h", "c")
    gate_order = gates.ONNX_LSTM

    def optional_inputs(self, initializers: dict[str, str]) -> list[str]:
        return [initializers.get("P", "")]  # peepholes

    def direction_weights(self, layer: Any) -> DirectionWeights:
        return lstm_direction(layer)

    def node_attributes(self, layer: Any) -> dict[str, Any]:
        return {"input_forget": 1} if layer.coupled_input_forget else {}


@handles("GatedGRU", "GatedGRUCell")
class GRUHandler(Handler):
    op_type = "GRU"
    gate_order = gates.ONNX_GRU

    def direction_weights(self, layer: Any) -> DirectionWeights:
        return gru_direction(layer)

    def node_attributes(self, layer: Any) -> dict[str, Any]:
        return {"linear_before_reset": int(bool(layer.reset_after))}


class BidirectionalHandler(Handler):
    """``Bidirectional`` around a gated layer: one node with ``direction="bidirectional"``."""

    def __init__(self, base: Handler):
        self.base = base
        self.op_type = base.op_type
        self.state_names = base.state_names
        self.gate_order = base.gate_order

    def optional_inputs(self, initializers: dict[str, str]) -> list[str]:
        return self.base.optional_inputs(initializers)

    def inner(self, layer: Any) -> list[Any]:
        return [layer.forward_layer, layer.backward_layer]

    def direction(self, layer: Any) -> str:
        return "bidirectional"

    def direction_weights(self, layer: Any) -> DirectionWeights:
        return self.base.direction_weights(layer)

    def node_attributes(self, layer: Any) -> dict[str, Any]:
        forward, backward = self.inner(layer)
        attrs = self.base.node_attributes(forward)
        if attrs != self.base.node_attributes(backward):
            raise ExportError(
                f"Layer {layer.name!r} (Bidirectional): the forward and backward layers differ in "
                f"{sorted(attrs)}; one ONNX node needs the same value. Use the same configuration "
                "for both directions."
            )
        return attrs

    def plan(self, layer: Any, index: int, streaming: bool) -> Cut:
        forward, backward = self.inner(layer)
        if streaming:
            raise ExportError(
                f"Layer {layer.name!r} (Bidirectional) cannot be exported with `streaming=True`: "
                "its backward direction needs the whole sequence. Export without streaming."
            )
        if forward.go_backwards or not backward.go_backwards:
            raise ExportError(
                f"Layer {layer.name!r} (Bidirectional): expected a forward layer with "
                "go_backwards=False and a backward layer with go_backwards=True, got "
                f"{forward.go_backwards} and {backward.go_backwards}. Wrap a layer with "
                "go_backwards=False."
            )
        if forward.units != backward.units:
            raise ExportError(
                f"Layer {layer.name!r} (Bidirectional): both directions need the same `units`, "
                f"got {forward.units} and {backward.units}."
            )
        check_exportable(backward)
        cut = self.base.plan(forward, index, streaming=False)
        return dataclasses.replace(
            cut, layer=layer, handler=self, direction="bidirectional", name=layer.name
        )

    def rebuild(self, cut: Cut, ph: dict[str, tf.Tensor], seq_lens: tf.Tensor) -> list[tf.Tensor]:
        layer = cut.layer
        if layer.return_sequences:  # ONNX aligns both directions with the input steps
            y, y_rev = (tf.transpose(ph["Y"][:, d], [1, 0, 2]) for d in (0, 1))
        else:
            y, y_rev = ph["Y_h"][0], ph["Y_h"][1]
        merged = merge_directions(layer.merge_mode, y, y_rev)
        states = []
        if layer.return_state:
            states = [ph[f"Y_{s}"][d] for d in (0, 1) for s in self.state_names]
        return [*merged, *states]


def merge_directions(mode: str | None, y: tf.Tensor, y_rev: tf.Tensor) -> list[tf.Tensor]:
    """Forward and backward outputs merged like Keras ``Bidirectional`` (``merge_mode``)."""
    if mode == "concat":
        return [tf.concat([y, y_rev], axis=-1)]
    if mode == "sum":
        return [y + y_rev]
    if mode == "ave":
        return [(y + y_rev) / 2]
    if mode == "mul":
        return [y * y_rev]
    return [y, y_rev]


def check_exportable(layer: Any) -> None:
    """Settings the ONNX operators cannot express (at inference) raise here."""
    if getattr(layer, "dtype_policy", None) is not None:
        policy = layer.dtype_policy.compute_dtype
        if policy != "float32":
            raise ExportError(
                f"Layer {layer.name!r} ({type(layer).__name__}) computes in {policy}; the ONNX "
                "export supports float32 only. Export a float32 copy of the model."
            )


def find_handler(layer: Any) -> Handler | None:
    """The handler converting ``layer`` (a gated layer or cell, or a ``Bidirectional`` around a
    gated layer) to a native RNN node, or ``None``."""
    import keras

    import keras_gates

    if isinstance(layer, keras.layers.Bidirectional):
        base = find_handler(layer.forward_layer)
        return BidirectionalHandler(base) if base is not None else None
    for cls in type(layer).__mro__:  # subclasses of a registered class convert like it
        handler = _REGISTRY.get(cls.__name__)
        if handler is not None and getattr(keras_gates, cls.__name__, None) is cls:
            return handler()
    return None
