"""GatedGRU: ``keras.layers.GRU`` with one set of named weights per gate."""

from __future__ import annotations

import keras
from keras import ops

from keras_gates import _internals
from keras_gates import gates as gate_orders
from keras_gates.cell_base import GatedCell
from keras_gates.rnn_base import GatedRNN


@keras.saving.register_keras_serializable(package="keras_gates")
class GatedGRUCell(GatedCell):
    r"""One step of a gated recurrent unit whose gates own their weights.

    With :math:`\sigma` = ``recurrent_activation`` and :math:`\phi` = ``activation``:

    .. math::

        z_t &= \sigma(x_t W_z + b_z + h_{t-1} U_z + \hat b_z) \\
        r_t &= \sigma(x_t W_r + b_r + h_{t-1} U_r + \hat b_r) \\
        n_t &= \phi(x_t W_h + b_h + r_t \odot (h_{t-1} U_h + \hat b_h))
               \quad\text{(reset_after=True, cuDNN / ONNX linear_before_reset=1)} \\
        n_t &= \phi(x_t W_h + b_h + (r_t \odot h_{t-1}) U_h)
               \quad\text{(reset_after=False)} \\
        h_t &= z_t \odot h_{t-1} + (1 - z_t) \odot n_t

    :math:`\hat b` is the per-gate ``recurrent_bias``, present only with ``reset_after=True``.

    Args:
        units: Positive integer, dimensionality of the output and of each gate.
        reset_after: Apply the reset gate after the recurrent matmul (default `True`).
        frozen_gates, gate_initializers: As :class:`GatedLSTMCell`.
        Other arguments: as ``keras.layers.GRUCell``.

    Example:

    >>> layer = keras.layers.RNN(GatedGRUCell(4))
    >>> tuple(layer(np.zeros((2, 3, 5))).shape)
    (2, 4)
    """

    gate_names = gate_orders.GRU_GATES

    def __init__(self, units: int, reset_after: bool = True, **kwargs):
        super().__init__(units, **kwargs)
        self.reset_after = reset_after

    def gate_parts(self, gate):
        parts = super().gate_parts(gate)
        if self.use_bias and self.reset_after:
            parts += ("recurrent_bias",)
        return parts

    def step(self, x_proj, states, weights, training=False):
        h_prev = states[0] if isinstance(states, (list, tuple)) else states
        sigma, phi = self.recurrent_activation, self.activation
        x = gate_orders.split(x_proj, self.compute_order)
        if self.reset_after:
            rec = self.project_state(h_prev, weights["recurrent_kernel"], training)
            if self.use_bias:
                rec = rec + weights["recurrent_bias"]
            u = gate_orders.split(rec, self.compute_order)  # h U + b^, per gate
            z, r = sigma(x["update"] + u["update"]), sigma(x["reset"] + u["reset"])
            n = phi(x["candidate"] + r * u["candidate"])
        else:
            kernels = gate_orders.split(weights["recurrent_kernel"], self.compute_order)
            zr = ("update", "reset")
            u_zr = ops.concatenate([kernels[g] for g in zr], axis=-1)
            u = gate_orders.split(self.project_state(h_prev, u_zr, training, zr), zr)
            z, r = sigma(x["update"] + u["update"]), sigma(x["reset"] + u["reset"])
            rh = self.project_state(r * h_prev, kernels["candidate"], training, ("candidate",))
            n = phi(x["candidate"] + rh)
        h = z * h_prev + (1.0 - z) * n
        return h, [h], {"update": z, "reset": r, "candidate": n}

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


@keras.saving.register_keras_serializable(package="keras_gates")
class GatedGRU(GatedRNN):
    """Gated recurrent unit layer with gate-by-gate weights: a drop-in ``keras.layers.GRU``.

    Same arguments and the same math as ``keras.layers.GRU`` (see :class:`GatedGRUCell` for the
    equations), plus ``frozen_gates`` and ``gate_initializers``. Weights are named
    ``<layer>/<gate>/<part>`` with gates ``("update", "reset", "candidate")``.

    Call arguments:
        sequences: A 3D tensor ``(batch, timesteps, features)``.
        mask: Optional boolean tensor ``(batch, timesteps)``; masked steps are skipped.
        training: Whether dropout is active.
        initial_state: Optional ``(batch, units)`` tensor (or a list holding it).

    Returns:
        ``(batch, units)``, or ``(batch, timesteps, units)`` with ``return_sequences=True``;
        followed by the final ``h`` with ``return_state=True``.

    Example:

    >>> model = keras.Sequential([keras.Input((10, 3)), GatedGRU(8), keras.layers.Dense(1)])
    >>> sorted(model.layers[0].get_gate_weights()["reset"])
    ['bias', 'kernel', 'recurrent_bias', 'recurrent_kernel']
    """

    cell_class = GatedGRUCell
    keras_class = keras.layers.GRU
    keras_order = gate_orders.KERAS_GRU
    cell_arguments = ("reset_after",)

    def _cudnn_ok(self) -> bool:
        return self.cell.reset_after

    def _cudnn_loop(self, sequences, initial_state, mask, weights):
        bias = None
        if self.cell.use_bias:
            bias = ops.stack([weights["bias"], weights["recurrent_bias"]])
        return _internals.fused_gru(
            sequences,
            initial_state[0],
            mask,
            kernel=weights["kernel"],
            recurrent_kernel=weights["recurrent_kernel"],
            bias=bias,
            activation=self.cell.activation,
            recurrent_activation=self.cell.recurrent_activation,
            return_sequences=self.return_sequences,
            go_backwards=self.go_backwards,
            unroll=self.unroll,
            reset_after=True,
        )

    @property
    def reset_after(self):
        return self.cell.reset_after
