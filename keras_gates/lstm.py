"""GatedLSTM: ``keras.layers.LSTM`` with one set of named weights per gate, plus peepholes and a
coupled input-forget gate (Greff et al., 2017)."""

from __future__ import annotations

import keras
from keras import initializers

from keras_gates import _internals
from keras_gates import gates as gate_orders
from keras_gates.cell_base import GatedCell
from keras_gates.rnn_base import GatedRNN


@keras.saving.register_keras_serializable(package="keras_gates")
class GatedLSTMCell(GatedCell):
    r"""One step of a long short-term memory cell whose gates own their weights.

    With :math:`\sigma` = ``recurrent_activation`` and :math:`\phi` = ``activation``:

    .. math::

        i_t &= \sigma(x_t W_i + h_{t-1} U_i + b_i \;[+\, p_i \odot c_{t-1}]) \\
        f_t &= \sigma(x_t W_f + h_{t-1} U_f + b_f \;[+\, p_f \odot c_{t-1}])
              \quad\text{or}\quad 1 - i_t \text{ if coupled} \\
        g_t &= \phi(x_t W_c + h_{t-1} U_c + b_c) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        o_t &= \sigma(x_t W_o + h_{t-1} U_o + b_o \;[+\, p_o \odot c_t]) \\
        h_t &= o_t \odot \phi(c_t)

    Bracketed terms apply with ``use_peepholes=True`` (ONNX ``P``); ``coupled_input_forget=True``
    derives the forget gate from the input gate (ONNX ``input_forget=1``), and the forget gate then
    owns no weights.

    Args:
        units: Positive integer, dimensionality of the output and of each gate.
        unit_forget_bias: If `True` (default), the forget gate's bias starts at 1.
        use_peepholes: If `True`, gates see the cell state through diagonal peephole weights.
        coupled_input_forget: If `True`, ``f = 1 - i`` (no forget-gate weights).
        frozen_gates: Gates whose variables are not trainable, e.g. ``("forget",)``.
        gate_initializers: Per-gate initializers overriding the layer-wide ones, e.g.
            ``{"forget": {"bias": 2.0}}`` (a number means a constant).
        Other arguments: as ``keras.layers.LSTMCell``.

    Example:

    >>> cell = GatedLSTMCell(4)
    >>> layer = keras.layers.RNN(cell)
    >>> tuple(layer(np.zeros((2, 3, 5))).shape)
    (2, 4)
    """

    gate_names = gate_orders.LSTM_GATES

    def __init__(
        self,
        units: int,
        unit_forget_bias: bool = True,
        use_peepholes: bool = False,
        coupled_input_forget: bool = False,
        **kwargs,
    ):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = unit_forget_bias
        self.use_peepholes = use_peepholes
        self.coupled_input_forget = coupled_input_forget
        self.state_size = [self.units, self.units]

    @property
    def weighted_gates(self):
        if self.coupled_input_forget:
            return tuple(g for g in self.gate_names if g != "forget")
        return self.gate_names

    def gate_parts(self, gate):
        parts = super().gate_parts(gate)
        if self.use_peepholes and gate != "candidate":
            parts += ("peephole",)
        return parts

    def _implicit_initializer(self, gate, part):
        if self.unit_forget_bias and gate == "forget" and part == "bias":
            return initializers.get("ones")
        return None

    @property
    def traced_names(self):
        return self.gate_names + ("cell",)

    @property
    def compute_order(self):
        return tuple(g for g in gate_orders.LSTM_COMPUTE if g in self.weighted_gates)

    def step(self, x_proj, states, weights, training=False):
        h_prev, c_prev = states
        u = weights["recurrent_kernel"]
        z = gate_orders.split(x_proj + self.project_state(h_prev, u, training), self.compute_order)
        p = {}  # peephole weights, per gate
        if self.use_peepholes:
            p = gate_orders.split(weights["peephole"], self.peephole_gates)
        sigma, phi = self.recurrent_activation, self.activation

        def pre(gate, c):  # the gate's pre-activation, with its peephole onto the cell state
            return z[gate] + p[gate] * c if gate in p else z[gate]

        i = sigma(pre("input", c_prev))
        f = 1.0 - i if self.coupled_input_forget else sigma(pre("forget", c_prev))
        g = phi(z["candidate"])
        c = f * c_prev + i * g
        o = sigma(pre("output", c))
        h = o * phi(c)
        return h, [h, c], {"input": i, "forget": f, "candidate": g, "output": o, "cell": c}

    @property
    def peephole_gates(self):
        return tuple(g for g in self.compute_order if "peephole" in self.gate_parts(g))

    def get_config(self):
        config = {
            "unit_forget_bias": self.unit_forget_bias,
            "use_peepholes": self.use_peepholes,
            "coupled_input_forget": self.coupled_input_forget,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="keras_gates")
class GatedLSTM(GatedRNN):
    r"""Long short-term memory layer with gate-by-gate weights: a drop-in ``keras.layers.LSTM``.

    Same arguments and the same math as ``keras.layers.LSTM`` (see :class:`GatedLSTMCell` for the
    equations), plus ``use_peepholes``, ``coupled_input_forget``, ``frozen_gates`` and
    ``gate_initializers``. Weights are named ``<layer>/<gate>/<part>`` with gates
    ``("input", "forget", "candidate", "output")``.

    Call arguments:
        sequences: A 3D tensor ``(batch, timesteps, features)``.
        mask: Optional boolean tensor ``(batch, timesteps)``; masked steps are skipped.
        training: Whether dropout is active.
        initial_state: Optional list ``[h, c]`` of ``(batch, units)`` tensors.

    Returns:
        ``(batch, units)``, or ``(batch, timesteps, units)`` with ``return_sequences=True``;
        followed by the final ``h`` and ``c`` with ``return_state=True``.

    Example:

    >>> model = keras.Sequential([keras.Input((10, 3)), GatedLSTM(8), keras.layers.Dense(1)])
    >>> model.layers[0].get_gate_weights()["forget"]["bias"]
    array([1., 1., 1., 1., 1., 1., 1., 1.], dtype=float32)
    """

    cell_class = GatedLSTMCell
    keras_class = keras.layers.LSTM
    keras_order = gate_orders.KERAS_LSTM
    cell_arguments = ("unit_forget_bias", "use_peepholes", "coupled_input_forget")
    gated_only_arguments = ("use_peepholes", "coupled_input_forget")

    def _cudnn_ok(self) -> bool:
        return not (self.cell.use_peepholes or self.cell.coupled_input_forget)

    def _cudnn_loop(self, sequences, initial_state, mask, weights):
        return _internals.fused_lstm(
            sequences,
            initial_state[0],
            initial_state[1],
            mask,
            kernel=weights["kernel"],  # fused in Keras' ifco order by the caller
            recurrent_kernel=weights["recurrent_kernel"],
            bias=weights.get("bias"),
            activation=self.cell.activation,
            recurrent_activation=self.cell.recurrent_activation,
            return_sequences=self.return_sequences,
            go_backwards=self.go_backwards,
            unroll=self.unroll,
        )

    @property
    def unit_forget_bias(self):
        return self.cell.unit_forget_bias

    @property
    def use_peepholes(self):
        return self.cell.use_peepholes

    @property
    def coupled_input_forget(self):
        return self.cell.coupled_input_forget
