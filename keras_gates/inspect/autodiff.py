"""Vector–Jacobian products on the active Keras backend: the one place gradients dispatch on it.

:func:`vjp_function` turns ``forward(primal, *aux)``, written in ``keras.ops``, into a function
returning ∂⟨forward(primal, *aux), cotangent⟩/∂primal as a numpy array:

- TensorFlow: ``tf.GradientTape`` inside a ``tf.function`` (variables are read when it runs);
- JAX: ``jax.vjp`` inside ``jax.jit``, the variables' values passed in through a
  ``keras.StatelessScope`` (so a jitted function sees trained weights and never assigns state);
- PyTorch: ``torch.autograd.grad``, also inside a ``keras.StatelessScope`` (a stateful layer's
  in-place state update would otherwise invalidate the graph it is part of).

Nothing here imports TensorFlow unless the backend is TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np

VJP = Callable[[np.ndarray, Sequence[np.ndarray], np.ndarray], np.ndarray]


def vjp_function(forward: Callable, variables: Sequence[keras.Variable]) -> VJP:
    """``grad(primal, aux, cotangent)``: the gradient of ⟨forward(primal, *aux), cotangent⟩
    with respect to ``primal``. ``variables``: every variable ``forward`` reads (JAX passes their
    current values in on each call)."""
    backend = keras.config.backend()
    if backend == "tensorflow":
        return _tensorflow(forward)
    if backend == "jax":
        return _jax(forward, list(variables))
    if backend == "torch":
        return _torch(forward, list(variables))
    raise NotImplementedError(
        f"Gradient flow needs automatic differentiation on the Keras backend, and backend "
        f"{backend!r} has none here: use KERAS_BACKEND=tensorflow, jax or torch."
    )


def _tensorflow(forward: Callable) -> VJP:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def grad(primal, aux, cotangent):
        # A root name scope (the model's name) may not start with "_"; a nested one may.
        with tf.GradientTape() as tape, tf.name_scope("gradient_flow"):
            tape.watch(primal)
            out = forward(primal, *aux)
        return tape.gradient(out, primal, output_gradients=tf.cast(cotangent, out.dtype))

    return lambda primal, aux, cotangent: np.asarray(
        grad(tf.convert_to_tensor(primal), tuple(aux), cotangent)
    )


def _jax(forward: Callable, variables: list) -> VJP:
    import jax

    @jax.jit
    def grad(values, primal, aux, cotangent):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            out, pullback = jax.vjp(lambda p: forward(p, *aux), primal)
        return pullback(cotangent.astype(out.dtype))[0]

    def run(primal, aux, cotangent):
        values = [variable.value for variable in variables]
        return np.asarray(grad(values, primal, tuple(aux), cotangent))

    return run


def _torch(forward: Callable, variables: list) -> VJP:
    import torch

    def run(primal, aux, cotangent):
        primal = keras.ops.convert_to_tensor(primal).detach().requires_grad_(True)
        aux = [keras.ops.convert_to_tensor(a) for a in aux]
        mapping = [(variable, variable.value) for variable in variables]
        with torch.enable_grad(), keras.StatelessScope(state_mapping=mapping):
            out = forward(primal, *aux)
            cotangent = torch.as_tensor(cotangent, dtype=out.dtype, device=out.device)
            (grad,) = torch.autograd.grad(out, primal, grad_outputs=cotangent)
        return grad.detach().cpu().numpy()

    return run
