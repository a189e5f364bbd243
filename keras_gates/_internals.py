"""The one module that touches private Keras or TensorFlow API (``keras.src``, ``_`` attributes).

Everything else in ``keras_gates``, ``export`` and ``serving`` goes through the functions here or
through public Keras API (``tests/test_private_api.py`` checks this by reading the code). Each
entry says what it wraps and why no public route exists, so that a Keras upgrade that breaks one
breaks here, with a message naming the Keras version (:func:`check_keras`).

Backend dispatch lives here too: which accelerator is present, and the fused LSTM/GRU kernels
(cuDNN on TensorFlow/PyTorch GPUs, Keras' JAX kernels where Keras uses them), reached exactly as
``keras.layers.LSTM``/``GRU`` reach them. Nothing imports TensorFlow unless the backend is
TensorFlow (or the exporter, which always runs on TensorFlow, asks).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

import keras

# The Keras versions this module was checked against (pyproject.toml states them; the suite runs on
# the newest, tests/test_keras_range.py runs the layer tests on the oldest).
OLDEST_KERAS = "3.8.0"  # the first with keras.src.export.tf2onnx_lib
NEWEST_KERAS = "3.15.1"


def _private(module: str, name: str) -> Any:
    """``module.name`` from ``keras.src``, or an ImportError naming the Keras version."""
    try:
        # Loaded modules from sys.modules: rnn_loop runs inside tf.function, where AutoGraph
        # would warn that it cannot convert importlib's internals.
        loaded = sys.modules.get(module) or importlib.import_module(module)
        return getattr(loaded, name)
    except (ImportError, AttributeError) as err:
        raise ImportError(
            f"keras-gates needs `{module}.{name}`, which Keras {keras.__version__} does not have "
            f"({err}). keras-gates is tested with Keras {OLDEST_KERAS} to {NEWEST_KERAS}: "
            f"pip install 'keras>={OLDEST_KERAS},<={NEWEST_KERAS}'."
        ) from err


def check_keras() -> None:
    """Resolve every private entry point now; raise naming the Keras version if one is gone."""
    for module, name in _ENTRY_POINTS:
        _private(module, name)
    for attribute in ("_track_variable",):
        if not hasattr(keras.layers.Dense(1), attribute):
            raise ImportError(
                f"keras-gates needs `Layer.{attribute}`, which Keras {keras.__version__} does "
                f"not have. keras-gates is tested with Keras {OLDEST_KERAS} to {NEWEST_KERAS}."
            )


_ENTRY_POINTS = [
    ("keras.src.backend.common.name_scope", "current_path"),
    ("keras.src.layers.rnn.dropout_rnn_cell", "DropoutRNNCell"),
    ("keras.src.backend", "rnn"),
    ("keras.src.backend", "lstm"),
    ("keras.src.backend", "gru"),
    ("keras.src.backend", "get_keras_mask"),
    ("keras.src.backend", "set_keras_mask"),
]


# ----------------------------------------------------------------------------- the layers
# The cell base class with Keras' per-gate dropout masks (no public export).
DropoutRNNCell = _private("keras.src.layers.rnn.dropout_rnn_cell", "DropoutRNNCell")


def current_name_path() -> str:
    """The name-scope path variables created now would get (``"model/layer"``)."""
    return _private("keras.src.backend.common.name_scope", "current_path")()


def track_variable(layer: keras.layers.Layer, variable: keras.Variable) -> None:
    """Track a variable made outside ``add_weight`` (which resets the name scope we set)."""
    layer._track_variable(variable)


def init_scope() -> contextlib.AbstractContextManager:
    """Eager execution for initial values. Only TensorFlow may build a layer inside a scratch
    graph (Keras traces ``compute_output_spec`` in a ``FuncGraph``); elsewhere a no-op."""
    if keras.config.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.init_scope()


def rnn_loop(step: Callable, inputs: Any, initial_states: list, **kwargs: Any) -> tuple:
    """Keras' backend recurrence (``keras.src.backend.rnn``: ``tf.while_loop``, ``lax.scan``,
    a torch loop): what ``keras.layers.RNN`` runs. Returns ``(last, outputs, states)``."""
    return _private("keras.src.backend", "rnn")(step, inputs, initial_states, **kwargs)


def fused_lstm(*args: Any, **kwargs: Any) -> tuple:
    """Keras' fused LSTM kernel for this backend (cuDNN on GPUs); raises NotImplementedError
    where it cannot run, exactly as for ``keras.layers.LSTM``."""
    return _private("keras.src.backend", "lstm")(*args, **kwargs)


def fused_gru(*args: Any, **kwargs: Any) -> tuple:
    """Keras' fused GRU kernel for this backend; as :func:`fused_lstm`."""
    return _private("keras.src.backend", "gru")(*args, **kwargs)


def gpu_available() -> bool:
    """Whether the backend runs on a GPU (public routes; Keras' own checks are private)."""
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def cudnn_blocks_jit() -> bool:
    """TensorFlow's cuDNN kernels cannot be XLA-compiled (Keras sets ``supports_jit=False``)."""
    return keras.config.backend() == "tensorflow" and gpu_available()


# ----------------------------------------------------------------------------- models
def flatten_layers(layer: keras.layers.Layer, include_self: bool = False) -> list:
    """Every layer inside ``layer`` (nested models, wrappers, RNN cells), each once, from public
    attributes only: the replacement for the private ``Layer._flatten_layers``. ``InputLayer``s
    (no weights, no state) are left out: Keras' own walker lists some and not others."""
    seen: dict[int, keras.layers.Layer] = {}

    def visit(node: Any) -> None:
        if not isinstance(node, keras.layers.Layer) or id(node) in seen:
            return
        seen[id(node)] = node
        for child in _children(node):
            visit(child)

    visit(layer)
    found = [node for node in seen.values() if not isinstance(node, keras.layers.InputLayer)]
    return found if include_self else [node for node in found if node is not layer]


def _children(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    yield from getattr(layer, "layers", None) or []
    for attribute in ("layer", "forward_layer", "backward_layer", "cell"):
        child = getattr(layer, attribute, None)
        if isinstance(child, keras.layers.Layer):
            yield child
    yield from getattr(layer, "cells", None) or []


@contextlib.contextmanager
def shadowed_calls(layers: list, wrap: Callable) -> Iterator[None]:
    """For the duration, each layer's ``call`` is ``wrap(layer, layer.call)``.

    Relies on ``Layer.__call__`` calling ``self.call`` looked up on the instance; set with
    ``object.__setattr__`` so Keras' attribute tracking never sees it.
    """
    unique = list({id(layer): layer for layer in layers}.values())
    patched = []
    try:
        for layer in unique:
            object.__setattr__(layer, "call", wrap(layer, layer.call))
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")


def functional_of(model: Any) -> Any | None:
    """The ``Functional`` graph of a Functional or built Sequential model, else ``None``."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def run_through_graph(functional: Any, inputs: Any, operation_fn: Callable) -> Any:
    """Run a ``Functional`` graph calling ``operation_fn(op)(*args, **kwargs)`` per operation."""
    return functional._run_through_graph(inputs, operation_fn=operation_fn)


def producing_layer(tensor: Any) -> Any:
    """The operation that produced a symbolic ``KerasTensor``."""
    return tensor._keras_history[0]


def call_context_args(layer: Any) -> tuple:
    """The call arguments (``training``, ...) Keras passes down from the outer call. Keras
    before 3.10 has no ``_call_context_args``: there, ``training`` if ``call`` takes it."""
    names = getattr(layer, "_call_context_args", None)
    if names is None:
        names = ("training",) if "training" in inspect.signature(layer.call).parameters else ()
    return tuple(names)


def get_keras_mask(tensor: Any) -> Any:
    """The Keras mask attached to ``tensor`` (``None`` if none)."""
    return _private("keras.src.backend", "get_keras_mask")(tensor)


def set_keras_mask(tensor: Any, mask: Any) -> None:
    """Attach a Keras mask to ``tensor``."""
    _private("keras.src.backend", "set_keras_mask")(tensor, mask)


def patch_tf2onnx() -> None:
    """Keras' numpy-2 compatibility patch for tf2onnx (``keras.src.export.tf2onnx_lib``)."""
    _private("keras.src.export.tf2onnx_lib", "patch_tf2onnx")()


# ----------------------------------------------------------------------------- TensorBoard
def summary_metadata(plugin_name: str, data_class: str) -> Any:
    """The ``SummaryMetadata`` protobuf that ``tf.summary.scalar``/``histogram`` attach
    (``tensorflow.core.framework.summary_pb2``), so that writing needs no ``tensorboard``.
    ``data_class``: ``"scalar"`` or ``"tensor"``."""
    from tensorflow.core.framework import summary_pb2

    classes = {"scalar": summary_pb2.DATA_CLASS_SCALAR, "tensor": summary_pb2.DATA_CLASS_TENSOR}
    plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name)
    return summary_pb2.SummaryMetadata(plugin_data=plugin, data_class=classes[data_class])
