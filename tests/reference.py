"""A small numpy reference of the gated cells: the second independent witness in the tests.

Written from the equations in the cell docstrings, sharing no code with keras_gates except the
gate names. Activations are fixed to sigmoid (gates) and tanh (candidate/output).
"""

from __future__ import annotations

import numpy as np

# Tolerances, each with its reason, in one place.
FP32_ATOL = 1e-5  # float32 accumulation over at most ~12 steps of width <= 16
GRAD_ATOL = 1e-5  # gradients of a scalar loss through the same float32 computation
# ONNX Runtime's fused LSTM/GRU kernels vs Keras' loop, float32 over <= ~20 steps (measured errors
# ~1e-7); also the bound export validation applies by default.
EXPORT_ATOL = 1e-5
# Served vs direct onnxruntime (binary float32 and JSON shortest-repr floats round-trip exactly;
# slack for batch-size-dependent ORT kernels), batched vs unbatched, chunked vs whole sequences.
SERVING_ATOL = 1e-5
# Distributed (MirroredStrategy, multi-worker, JAX DataParallel) vs single-device training: the
# same float32 arithmetic, gradients summed across replicas in another order.
DISTRIBUTED_ATOL = 1e-5
# mixed_float16 vs float32 for the same weights: float16 keeps ~3 significant digits (unit
# roundoff 4.9e-4); over <= 6 steps of a width-3 cell with |h| < 1, measured 4e-4 (LSTM) and
# 8e-4 (GRU): 5e-3 leaves room for other seeds and platforms.
FP16_ATOL = 5e-3


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gate(w, gate, x_t, h):
    z = x_t @ w[gate]["kernel"] + h @ w[gate]["recurrent_kernel"]
    return z + w[gate]["bias"] if "bias" in w[gate] else z


def lstm(x, w, *, peepholes=False, coupled=False, mask=None, go_backwards=False, state=None):
    """Run an LSTM over ``x`` (batch, time, features). Returns (outputs, h, c)."""
    batch, steps, _ = x.shape
    units = w["input"]["recurrent_kernel"].shape[0]
    h, c = state if state is not None else (np.zeros((batch, units)), np.zeros((batch, units)))
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    outputs = []
    for t in order:
        x_t = x[:, t]
        zi = _gate(w, "input", x_t, h)
        if peepholes:
            zi = zi + w["input"]["peephole"] * c
        i = sigmoid(zi)
        if coupled:
            f = 1.0 - i
        else:
            zf = _gate(w, "forget", x_t, h)
            f = sigmoid(zf + w["forget"]["peephole"] * c if peepholes else zf)
        g = np.tanh(_gate(w, "candidate", x_t, h))
        c_new = f * c + i * g
        zo = _gate(w, "output", x_t, h)
        o = sigmoid(zo + w["output"]["peephole"] * c_new if peepholes else zo)
        h_new = o * np.tanh(c_new)
        keep = np.ones((batch, 1), bool) if mask is None else mask[:, t : t + 1]
        h, c = np.where(keep, h_new, h), np.where(keep, c_new, c)
        outputs.append(h)
    return np.stack(outputs, axis=1), h, c


def gru(x, w, *, reset_after=True, mask=None, go_backwards=False, state=None):
    """Run a GRU over ``x`` (batch, time, features). Returns (outputs, h)."""
    batch, steps, _ = x.shape
    units = w["update"]["recurrent_kernel"].shape[0]
    h = state if state is not None else np.zeros((batch, units))
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    outputs = []
    for t in order:
        x_t = x[:, t]

        def part(gate, name, w=w):
            return w[gate].get(name, np.zeros(units))

        z = sigmoid(_gate(w, "update", x_t, h) + part("update", "recurrent_bias"))
        r = sigmoid(_gate(w, "reset", x_t, h) + part("reset", "recurrent_bias"))
        xh = x_t @ w["candidate"]["kernel"] + part("candidate", "bias")
        if reset_after:
            rec = h @ w["candidate"]["recurrent_kernel"] + part("candidate", "recurrent_bias")
            n = np.tanh(xh + r * rec)
        else:
            n = np.tanh(xh + (r * h) @ w["candidate"]["recurrent_kernel"])
        h_new = z * h + (1.0 - z) * n
        keep = np.ones((batch, 1), bool) if mask is None else mask[:, t : t + 1]
        h = np.where(keep, h_new, h)
        outputs.append(h)
    return np.stack(outputs, axis=1), h
