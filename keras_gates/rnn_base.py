"""What GatedLSTM and GatedGRU share: the sequence loop, tracing, and the bridge to Keras layers.

The layer projects every time step's inputs with one matmul before the recurrence, so the loop
body only computes ``h @ U`` and the gate nonlinearities (see ``GatedCell.step``). Masking,
statefulness, ``go_backwards``, ``return_state`` and ``Bidirectional`` come from
``keras.layers.RNN`` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gates import _internals, keras_bridge
from keras_gates import gates as gate_orders

_LAYER_BASE_KEYS = ("name", "trainable", "dtype")


class GatedRNN(keras.layers.RNN):
    """Base class of :class:`GatedLSTM` and :class:`GatedGRU` (not used directly)."""

    cell_class: type = None
    keras_class: type = None
    keras_order: tuple[str, ...] = ()  # the fused gate order of keras_class (and cuDNN)
    cell_arguments: tuple[str, ...] = ()  # the variant's own cell arguments
    gated_only_arguments: tuple[str, ...] = ()  # those keras_class has no equivalent of

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: int | None = None,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        unroll: bool = False,
        use_cudnn="auto",
        frozen_gates: Iterable[str] = (),
        gate_initializers: Mapping[str, Mapping[str, Any]] | None = None,
        **kwargs,
    ):
        kwargs.pop("implementation", None)  # accepted and ignored, as keras.layers.LSTM/GRU do
        variant = {k: kwargs.pop(k) for k in self.cell_arguments if k in kwargs}
        cell = self.cell_class(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            seed=seed,
            frozen_gates=frozen_gates,
            gate_initializers=gate_initializers,
            dtype=kwargs.get("dtype"),
            trainable=kwargs.get("trainable", True),
            name=f"{self.cell_class.__name__}",
            **variant,
        )
        cell.variables_under_layer = True
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            unroll=unroll,
            activity_regularizer=activity_regularizer,
            **kwargs,
        )
        self.input_spec = keras.layers.InputSpec(ndim=3)
        if use_cudnn not in ("auto", True, False):
            raise ValueError(
                "Received an invalid value for argument `use_cudnn`, expected one of "
                f"{{'auto', True, False}}, got {use_cudnn!r}."
            )
        self.use_cudnn = use_cudnn
        if use_cudnn in ("auto", True) and self._cudnn_ok() and _internals.cudnn_blocks_jit():
            self.supports_jit = False  # TensorFlow's cuDNN kernels are not XLA-compatible

    # ----------------------------------------------------------------------------- the loop
    def inner_loop(self, sequences, initial_state, mask, training=False):
        if keras.tree.is_nested(mask):
            mask = mask[0]
        if self.use_cudnn in ("auto", True) and self._cudnn_ok() and not self.recurrent_dropout:
            try:
                dropped = self._with_input_dropout(sequences, training)
                weights = self.cell.fused_weights(self.keras_order)
                return self._cudnn_loop(dropped, initial_state, mask, weights)
            except NotImplementedError:
                pass
        if self.use_cudnn is True:
            raise ValueError(
                "use_cudnn=True was specified, but cuDNN is not available for this layer "
                "configuration on this device. Pass use_cudnn='auto' to fall back to the "
                "default implementation."
            )
        weights = self.cell.fused_weights()
        return self._generic_loop(sequences, initial_state, mask, weights, training)

    def _generic_loop(self, sequences, initial_state, mask, weights, training, trace=False):
        # Input projections x @ W + b: on an accelerator, one matmul for all steps before the loop
        # (time-major, so the wide projection is never transposed). On a CPU, measured faster
        # inside the loop: TensorFlow runs the projections of later steps in parallel with the
        # recurrent chain on a spare core (see benchmarks/train_step.py and the README).
        sequences = ops.transpose(sequences, (1, 0, 2))
        outside = _internals.gpu_available()
        if outside:
            sequences = self.cell.project_inputs(sequences, weights, training)
        if mask is not None:
            mask = ops.transpose(mask, (1, 0))

        def step(x_t, states):
            x_proj = x_t if outside else self.cell.project_inputs(x_t, weights, training)
            output, new_states, activations = self.cell.step(x_proj, states, weights, training)
            if trace:
                traced = [activations[name] for name in self._trace_names()]
                output = ops.concatenate([*traced, output], axis=-1)
            return output, new_states

        last_output, outputs, states = _internals.rnn_loop(
            step,
            sequences,
            initial_state,
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll and not trace,
            input_length=sequences.shape[0],
            time_major=True,
            zero_output_for_mask=self.zero_output_for_mask or trace,
            return_all_outputs=self.return_sequences or trace,
        )
        if self.return_sequences or trace:
            outputs = ops.transpose(outputs, (1, 0, 2))
        return last_output, outputs, states

    def _with_input_dropout(self, sequences, training):
        if not (training and self.dropout > 0.0):
            return sequences
        mask = self.cell.get_dropout_mask(sequences[:, 0, :])
        return sequences * ops.expand_dims(mask, axis=1)

    def _cudnn_ok(self) -> bool:
        return False

    def _cudnn_loop(self, sequences, initial_state, mask, weights):
        raise NotImplementedError

    def call(self, sequences, initial_state=None, mask=None, training=False):
        return super().call(sequences, mask=mask, training=training, initial_state=initial_state)

    # ----------------------------------------------------------------------------- gates
    @property
    def gate_names(self) -> tuple[str, ...]:
        return self.cell.gate_names

    @property
    def gate_variables(self) -> dict[str, dict[str, keras.Variable]]:
        """``{gate: {part: keras.Variable}}`` (the layer must be built)."""
        self._require_built("gate_variables")
        return self.cell.gate_variables

    def get_gate_weights(self) -> dict[str, dict[str, np.ndarray]]:
        """``{gate: {"kernel", "recurrent_kernel", "bias"[, ...]: ndarray}}``."""
        self._require_built("get_gate_weights()")
        return self.cell.get_gate_weights()

    def set_gate_weights(self, mapping: Mapping[str, Mapping[str, Any]]) -> None:
        """Assign any subset of ``{gate: {part: array}}``; shapes are checked first."""
        self._require_built("set_gate_weights()")
        self.cell.set_gate_weights(mapping)

    def freeze_gates(self, *gates: str) -> None:
        """Exclude whole gates from training (recompile the model afterwards)."""
        self._require_built("freeze_gates()")
        self.cell.set_gate_trainable(gates, False)

    def unfreeze_gates(self, *gates: str) -> None:
        """Undo :meth:`freeze_gates` (recompile the model afterwards)."""
        self._require_built("unfreeze_gates()")
        self.cell.set_gate_trainable(gates, True)

    @property
    def frozen_gates(self) -> tuple[str, ...]:
        return self.cell.frozen_gates

    # ----------------------------------------------------------------------------- settings
    # The cell's settings, read-only on the layer (as keras.layers.LSTM forwards them).
    @property
    def units(self) -> int:
        return self.cell.units

    @property
    def activation(self) -> Callable:
        return self.cell.activation

    @property
    def recurrent_activation(self) -> Callable:
        return self.cell.recurrent_activation

    @property
    def use_bias(self) -> bool:
        return self.cell.use_bias

    @property
    def kernel_initializer(self) -> Any:
        return self.cell.kernel_initializer

    @property
    def recurrent_initializer(self) -> Any:
        return self.cell.recurrent_initializer

    @property
    def bias_initializer(self) -> Any:
        return self.cell.bias_initializer

    @property
    def kernel_regularizer(self) -> Any:
        return self.cell.kernel_regularizer

    @property
    def recurrent_regularizer(self) -> Any:
        return self.cell.recurrent_regularizer

    @property
    def bias_regularizer(self) -> Any:
        return self.cell.bias_regularizer

    @property
    def kernel_constraint(self) -> Any:
        return self.cell.kernel_constraint

    @property
    def recurrent_constraint(self) -> Any:
        return self.cell.recurrent_constraint

    @property
    def bias_constraint(self) -> Any:
        return self.cell.bias_constraint

    @property
    def dropout(self) -> float:
        return self.cell.dropout

    @property
    def recurrent_dropout(self) -> float:
        return self.cell.recurrent_dropout

    @property
    def seed(self) -> int | None:
        return self.cell.seed

    @property
    def gate_initializers(self) -> dict:
        return self.cell.gate_initializers

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(
                f"Layer {self.name!r} has no weights yet: call it on data or build it "
                f"(e.g. `layer.build((None, timesteps, features))`) before {what}."
            )

    # ----------------------------------------------------------------------------- tracing
    def _trace_names(self) -> tuple[str, ...]:
        return self.cell.traced_names

    def trace(self, x, mask=None, initial_state=None) -> dict[str, np.ndarray]:
        """Per-timestep activations of every gate for inputs ``x`` ``(batch, time, features)``.

        Returns ``{gate: (batch, time, units)}`` after each gate's activation, plus ``"cell"``
        (LSTM), ``"hidden"`` and ``"mask"`` ``(batch, time)``. Index ``t`` is the step that read
        ``x[:, t]``, also with ``go_backwards``. Masked steps read 0. The layer's state (stateful
        layers start from it) is never changed, and ``"hidden"`` equals what calling gives.
        """
        x = ops.convert_to_tensor(x, dtype=self.compute_dtype)
        if len(x.shape) != 3:
            raise ValueError(
                f"Received inputs of shape {tuple(x.shape)} for `trace`, expected a 3D array "
                "(batch, timesteps, features)."
            )
        if not self.built:
            self.build(tuple(x.shape))
        batch, steps = x.shape[0], x.shape[1]
        state = self._trace_initial_state(initial_state, batch)
        bool_mask = None if mask is None else ops.cast(ops.convert_to_tensor(mask), "bool")
        weights = {k: ops.cast(v, self.compute_dtype) for k, v in self.cell.fused_weights().items()}
        _, outputs, _ = self._generic_loop(x, state, bool_mask, weights, False, trace=True)
        if self.go_backwards:
            outputs = ops.flip(outputs, axis=1)
        names = self._trace_names() + ("hidden",)
        result = gate_orders.split(ops.convert_to_numpy(ops.cast(outputs, "float32")), names)
        full = np.ones((batch, steps), bool)
        result["mask"] = full if mask is None else np.asarray(ops.convert_to_numpy(bool_mask))
        return result

    def _trace_initial_state(self, initial_state, batch):
        if initial_state is None:
            if self.stateful and self.states is not None:
                return [ops.convert_to_tensor(v.value) for v in self.states]
            return self.get_initial_state(batch)
        states = list(initial_state) if keras.tree.is_nested(initial_state) else [initial_state]
        return [ops.convert_to_tensor(s, dtype=self.compute_dtype) for s in states]

    # ----------------------------------------------------------------------------- keras bridge
    @classmethod
    def from_keras(cls, layer: keras.layers.Layer) -> GatedRNN:
        """An equivalent gated layer from a built ``keras.layers.LSTM``/``GRU``: same
        configuration, weights copied gate by gate (and the state, for stateful layers)."""
        return keras_bridge.from_keras(cls, layer)

    def to_keras(self) -> keras.layers.Layer:
        """The equivalent stock Keras layer, where the configuration allows it."""
        self._require_built("to_keras()")
        return keras_bridge.to_keras(self)

    # ----------------------------------------------------------------------------- config
    def get_config(self):
        cell_config = self.cell.get_config()
        for key in _LAYER_BASE_KEYS:
            cell_config.pop(key, None)
        base = super().get_config()
        del base["cell"]
        return {**base, **cell_config, "use_cudnn": self.use_cudnn}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
