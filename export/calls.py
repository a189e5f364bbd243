"""How the trace calls layers that are not cut: in inference mode, ``TimeDistributed`` folded."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from keras_gates import _internals


def inference_call(op: Any):
    """Call ``op`` the way ``Functional`` does, with ``training=False``."""

    def call(*args, **kwargs):
        if "training" in _internals.call_context_args(op):
            kwargs["training"] = False
        return op(*args, **kwargs)

    return call


def is_time_distributed(op: Any) -> bool:
    import keras

    return isinstance(op, keras.layers.TimeDistributed)


def time_distributed_call(op: Any):
    """``TimeDistributed`` as one call on ``[batch * time, ...]`` and a reshape back.

    Keras 3 maps the inner layer over time with ``vectorized_map``, which tf2onnx turns into a
    ``Loop`` (and, measured, gets the time axis wrong). Folding time into the batch is exact for
    layers that treat rows independently, which is what ``TimeDistributed`` requires anyway.
    """

    def call(x, *args, **kwargs):
        kwargs.pop("mask", None)
        if "training" in _internals.call_context_args(op.layer):
            kwargs["training"] = False
        shape = tf.shape(x)
        flat = tf.reshape(x, tf.concat([[-1], shape[2:]], axis=0))
        y = op.layer(flat, *args, **kwargs)
        y = tf.reshape(y, tf.concat([shape[:2], tf.shape(y)[1:]], axis=0))
        mask = _internals.get_keras_mask(x)
        if mask is not None:
            _internals.set_keras_mask(y, mask)
        return y

    return call
