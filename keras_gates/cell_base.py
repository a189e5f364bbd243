"""What every gated cell shares: one set of named variables per gate, read and written by name.

A cell owns, for each gate, a ``kernel`` ``(input_dim, units)``, a ``recurrent_kernel``
``(units, units)`` and optionally a ``bias`` ``(units,)`` (plus cell-specific parts such as a
GRU ``recurrent_bias`` or LSTM ``peephole``). Variables live under ``<layer>/<gate>/<part>``.
:meth:`GatedCell.fused_weights` concatenates the gates once per call in the cell's compute order,
and the step does one matmul per input (with dropout on, one per gate: each gate has its own
dropout mask, as in Keras).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np
from keras import activations, constraints, initializers, ops, regularizers

from keras_gates import _internals
from keras_gates import gates as gate_orders

# Which constructor arguments govern each part (initializer, regularizer, constraint).
_PART_ARGS = {
    "kernel": "kernel",
    "recurrent_kernel": "recurrent",
    "bias": "bias",
    "recurrent_bias": "bias",
    "peephole": "peephole",
}


def check_gate_names(names: Iterable[str], valid: tuple[str, ...], argument: str) -> tuple:
    """Return ``names`` as a tuple, or raise naming the first unknown gate."""
    names = tuple(names)
    for name in names:
        if name not in valid:
            raise ValueError(
                f"Received an unknown gate name {name!r} in argument `{argument}`, "
                f"expected one of {valid}."
            )
    return names


def check_rate(value: float, argument: str) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(
            f"Received an invalid value for argument `{argument}`, expected a float in "
            f"[0, 1), got {value}."
        )
    return float(value)


class GatedCell(_internals.DropoutRNNCell, keras.layers.Layer):
    """Base class of :class:`GatedLSTMCell` and :class:`GatedGRUCell` (not used directly)."""

    gate_names: tuple[str, ...] = ()
    # Set by the owning GatedLSTM/GatedGRU: variables read `<layer>/<gate>/<part>`, not
    # `<layer>/<cell>/<gate>/<part>`.
    variables_under_layer: bool = False

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
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: int | None = None,
        frozen_gates: Iterable[str] = (),
        gate_initializers: Mapping[str, Mapping[str, Any]] | None = None,
        **kwargs,
    ):
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(
                "Received an invalid value for argument `units`, expected a positive integer, "
                f"got {units}."
            )
        kwargs.pop("implementation", None)  # accepted and ignored, as keras.layers.LSTM/GRU do
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.dropout = check_rate(dropout, "dropout")
        self.recurrent_dropout = check_rate(recurrent_dropout, "recurrent_dropout")
        if self.recurrent_dropout > 0.0:
            # As Keras does: one dropout mask per gate once recurrent dropout is on.
            self.dropout_mask_count = len(self.gate_names)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed=seed)
        self.frozen_gates = check_gate_names(frozen_gates, self.gate_names, "frozen_gates")
        self.gate_initializers = self._check_gate_initializers(gate_initializers or {})
        self.state_size = self.units
        self.output_size = self.units

    # ----------------------------------------------------------------------------- structure
    @property
    def weighted_gates(self) -> tuple[str, ...]:
        """The gates that own variables (all of them, unless a variant derives one)."""
        return self.gate_names

    @property
    def traced_names(self) -> tuple[str, ...]:
        """What :meth:`step` reports besides the output: every gate's activation, ..."""
        return self.gate_names

    @property
    def compute_order(self) -> tuple[str, ...]:
        """The order in which :meth:`fused_weights` lays the gates out for :meth:`step`."""
        return self.weighted_gates

    def gate_parts(self, gate: str) -> tuple[str, ...]:
        """The parts (``kernel``, ``recurrent_kernel``, ...) that ``gate`` owns."""
        return ("kernel", "recurrent_kernel") + (("bias",) if self.use_bias else ())

    def _check_gate_initializers(self, mapping: Mapping[str, Mapping[str, Any]]) -> dict:
        check_gate_names(mapping, self.gate_names, "gate_initializers")
        resolved = {}
        for gate, parts in mapping.items():
            if not isinstance(parts, Mapping):
                raise ValueError(
                    f"Received an invalid value for `gate_initializers[{gate!r}]`, expected a "
                    f'dict of part -> initializer such as {{"bias": 1.0}}, got {parts!r}.'
                )
            for part in parts:
                if part not in gate_orders.PART_SHAPES:
                    raise ValueError(
                        f"Received an unknown part {part!r} in `gate_initializers[{gate!r}]`, "
                        f"expected one of {tuple(gate_orders.PART_SHAPES)}."
                    )
            resolved[gate] = {part: _initializer(init) for part, init in parts.items()}
        return resolved

    # ----------------------------------------------------------------------------- weights
    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.input_dim = input_dim
        # Variables read `<layer>/<gate>/<part>` inside a Gated layer, `<cell>/<gate>/<part>` alone.
        path = _internals.current_name_path()
        flat = self.variables_under_layer and "/" in path
        owner = path.rsplit("/", 1)[0] if flat else path
        with _internals.init_scope():  # draw eagerly: build may run inside a scratch graph
            initial = {part: self._initial_values(part, input_dim) for part in self._all_parts()}
        self.gate_variables: dict[str, dict[str, keras.Variable]] = {}
        for gate in self.weighted_gates:
            with keras.name_scope(gate, override_parent=owner):
                self.gate_variables[gate] = {
                    part: self._add_gate_weight(gate, part, initial[part][gate], input_dim)
                    for part in self.gate_parts(gate)
                }
        self.built = True

    def _all_parts(self) -> list[str]:
        parts = []
        for gate in self.weighted_gates:
            parts += [p for p in self.gate_parts(gate) if p not in parts]
        return parts

    def _default_initializer(self, part: str):
        if part == "peephole":
            return initializers.get("zeros")
        return getattr(self, f"{_PART_ARGS[part]}_initializer")

    def _initial_values(self, part: str, input_dim: int) -> dict[str, Any]:
        """Initial value of ``part`` per gate: the layer-wide initializer is drawn once for the
        fused shape (as Keras does, so fan-in/fan-out match the stock layers), then split."""
        gates = [g for g in self.weighted_gates if part in self.gate_parts(g)]
        shape = gate_orders.PART_SHAPES[part](input_dim, self.units)
        fused_shape = shape[:-1] + (shape[-1] * len(gates),)
        fused = self._default_initializer(part)(fused_shape, dtype=self.variable_dtype)
        values = gate_orders.split(ops.convert_to_numpy(fused), gates)
        for gate in gates:
            custom = self.gate_initializers.get(gate, {}).get(part)
            if custom is None and part != "peephole":
                custom = self._implicit_initializer(gate, part)
            if custom is not None:
                values[gate] = ops.convert_to_numpy(custom(shape, dtype=self.variable_dtype))
        return values

    def _implicit_initializer(self, gate: str, part: str):
        """A per-gate default a variant imposes (e.g. LSTM ``unit_forget_bias``)."""
        return None

    def _add_gate_weight(self, gate: str, part: str, value, input_dim: int):
        # As Layer.add_weight, but inside the gate's name scope (add_weight would reset it).
        arg = _PART_ARGS[part]
        variable = keras.Variable(
            initializer=lambda shape, dtype=None: value,
            shape=gate_orders.PART_SHAPES[part](input_dim, self.units),
            dtype=self.variable_dtype,
            trainable=gate not in self.frozen_gates,
            name=part,
        )
        variable.regularizer = getattr(self, f"{arg}_regularizer", None)
        variable.constraint = getattr(self, f"{arg}_constraint", None)
        _internals.track_variable(self, variable)
        return variable

    def fused_weights(self, order: tuple[str, ...] | None = None) -> dict[str, Any]:
        """``{part: tensor}`` with the gates concatenated along the last axis in ``order``
        (default: :attr:`compute_order`). Read once per call, outside the recurrence."""
        order = order or self.compute_order
        fused = {}
        for part in self._all_parts():
            owners = [g for g in order if part in self.gate_parts(g)]
            fused[part] = ops.concatenate(
                [self.gate_variables[g][part].value for g in owners], axis=-1
            )
        return fused

    def get_gate_weights(self) -> dict[str, dict[str, np.ndarray]]:
        """``{gate: {part: ndarray}}`` for every gate that owns variables."""
        return {
            gate: {part: ops.convert_to_numpy(var) for part, var in parts.items()}
            for gate, parts in self.gate_variables.items()
        }

    def set_gate_weights(self, mapping: Mapping[str, Mapping[str, Any]]) -> None:
        """Assign any subset of ``{gate: {part: array}}``; shapes are checked before writing."""
        check_gate_names(mapping, self.gate_names, "set_gate_weights")
        updates = []
        for gate, parts in mapping.items():
            if gate not in self.gate_variables:
                raise ValueError(
                    f"Gate {gate!r} owns no weights in this configuration "
                    f"(it is derived from the others); set {tuple(self.gate_variables)} instead."
                )
            owned = self.gate_variables[gate]
            for part, value in parts.items():
                if part not in owned:
                    raise ValueError(
                        f"Received an unknown part {part!r} for gate {gate!r}, expected one of "
                        f"{tuple(owned)}."
                    )
                value = np.asarray(value)
                expected = tuple(owned[part].shape)
                if value.shape != expected:
                    raise ValueError(
                        f"Received a weight of shape {value.shape} for `{gate}/{part}`, expected "
                        f"shape {expected} (input_dim={self.input_dim}, units={self.units})."
                    )
                updates.append((owned[part], value))
        for variable, value in updates:
            variable.assign(value)

    def set_gate_trainable(self, gates: Iterable[str], trainable: bool) -> None:
        """Freeze (``trainable=False``) or unfreeze whole gates. Recompile the model after."""
        gates = check_gate_names(gates, self.gate_names, "gates")
        frozen = set(self.frozen_gates)
        for gate in gates:
            for variable in self.gate_variables.get(gate, {}).values():
                variable.trainable = trainable
            (frozen.discard if trainable else frozen.add)(gate)
        self.frozen_gates = tuple(g for g in self.gate_names if g in frozen)

    # ----------------------------------------------------------------------------- compute
    def project_inputs(self, inputs, weights, training=False):
        """``inputs @ W + b`` for one step ``(batch, features)`` or a whole time-major sequence
        ``(time, batch, features)``, with the input dropout mask(s) applied."""
        masks = self.get_dropout_mask(inputs if len(inputs.shape) == 2 else inputs[0])
        if not (training and self.dropout > 0.0):
            projected = ops.matmul(inputs, weights["kernel"])
        elif not isinstance(masks, list):
            projected = ops.matmul(inputs * masks, weights["kernel"])
        else:
            projected = self._per_gate(inputs, weights["kernel"], masks, self.compute_order)
        if self.use_bias:
            projected = projected + weights["bias"]
        return projected

    def project_state(self, h, recurrent_kernel, training=False, gates=None):
        """``h @ U`` for ``gates`` (the gates fused in ``U``, default :attr:`compute_order`),
        with each gate's recurrent dropout mask applied."""
        if not (training and self.recurrent_dropout > 0.0):
            return ops.matmul(h, recurrent_kernel)
        masks = self.get_recurrent_dropout_mask(h)
        return self._per_gate(h, recurrent_kernel, masks, gates or self.compute_order)

    def _per_gate(self, x, kernel, masks, gates):
        """``[(x * mask_g) @ kernel_g for g in gates]`` concatenated: with dropout on, as in
        Keras, every gate sees its own mask (one per gate name), so the matmul splits by gate."""
        masks = dict(zip(self.gate_names, masks))
        kernels = gate_orders.split(kernel, gates)
        return ops.concatenate([ops.matmul(x * masks[g], kernels[g]) for g in gates], axis=-1)

    def step(self, x_proj, states, weights, training=False):
        """One time step from projected inputs. Returns ``(output, new_states, activations)``."""
        raise NotImplementedError

    def call(self, inputs, states, training=False):
        weights = self.fused_weights()
        states = list(states) if isinstance(states, (list, tuple)) else [states]
        x_proj = self.project_inputs(inputs, weights, training)
        output, new_states, _ = self.step(x_proj, states, weights, training)
        return output, new_states

    def get_initial_state(self, batch_size=None):
        sizes = self.state_size if isinstance(self.state_size, list) else [self.state_size]
        return [ops.zeros((batch_size, d), dtype=self.compute_dtype) for d in sizes]

    # ----------------------------------------------------------------------------- config
    def get_config(self):
        config = {
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "recurrent_activation": activations.serialize(self.recurrent_activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
            "frozen_gates": list(self.frozen_gates),
            "gate_initializers": {
                gate: {part: initializers.serialize(init) for part, init in parts.items()}
                for gate, parts in self.gate_initializers.items()
            },
        }
        return {**super().get_config(), **config}


def _initializer(value):
    """An initializer from a name, a config, an instance, or a number (a constant)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return initializers.Constant(float(value))
    return initializers.get(value)
