"""The one call into tf2onnx: a traced ``tf.function`` to an ONNX model, quiet, on the CPU.

tf2onnx 1.17 predates numpy 2 (``np.object``, its constant folding); Keras ships the patch that
makes it work (in Keras' own ONNX export, a private module), applied through
``keras_gates._internals.patch_tf2onnx``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import tensorflow as tf


def function_to_onnx(function: Any, specs: list[tf.TensorSpec], opset: int) -> Any:
    """``tf2onnx.convert.from_function(function, specs, opset=opset)``'s ``onnx.ModelProto``."""
    import tf2onnx

    from keras_gates import _internals

    tf2onnx.logging.set_level(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _internals.patch_tf2onnx()
        with tf.device("/cpu:0"):
            model_proto, _ = tf2onnx.convert.from_function(function, specs, opset=opset)
    return model_proto
