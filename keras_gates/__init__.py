"""keras-gates: Keras recurrent layers you can open up gate by gate.

>>> import keras
>>> from keras_gates import GatedLSTM
>>> model = keras.Sequential([keras.Input((20, 3)), GatedLSTM(16), keras.layers.Dense(1)])
>>> model.layers[0].get_gate_weights()["forget"]["kernel"].shape
(3, 16)

The layers (and with them Keras and its backend) load on first use, so that
``keras_gates.serving`` runs without TensorFlow. Once ``keras_gates`` is imported,
``keras.saving.load_model`` finds the layers with no ``custom_objects``, whichever route Keras is
imported by (``import keras``, ``import tensorflow``, ``tf.keras``; before or after
``keras_gates``): if Keras is already loaded the layers register at once, otherwise right after
Keras finishes loading. Code that loads models can also call :func:`register_layers` itself.

The subpackages load on first use too: ``keras_gates.export`` (ONNX export, :class:`Predictor`,
Triton repositories), ``keras_gates.inspect`` (gate inspection), ``keras_gates.interop``
(models from PyTorch and ONNX) and ``keras_gates.serving`` (the inference server, which never
loads TensorFlow or Keras).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from keras_gates.version import __version__

_LAYERS = {
    "GatedGRU": "keras_gates.gru",
    "GatedGRUCell": "keras_gates.gru",
    "GatedLSTM": "keras_gates.lstm",
    "GatedLSTMCell": "keras_gates.lstm",
}

# Reached as attributes (``keras_gates.export.to_onnx``), imported on first use. Not in __all__:
# ``from keras_gates import *`` would import each one, and with it its optional extras.
_SUBPACKAGES = ("export", "inspect", "interop", "serving")

__all__ = [*sorted(_LAYERS), "__version__", "gates", "register_layers"]

_BACKEND_HINT = (
    "The keras-gates layers need Keras with a backend installed, as Keras itself does: "
    "pip install 'keras-gates[tensorflow]' (or '[jax]'), or set KERAS_BACKEND to an installed "
    "backend."
)


def __getattr__(name: str):
    if name in _LAYERS:
        return getattr(_import_layer_module(_LAYERS[name]), name)
    if name == "gates" or name in _SUBPACKAGES:
        return importlib.import_module(f"keras_gates.{name}")
    raise AttributeError(f"module 'keras_gates' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})


def _import_layer_module(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in ("keras", "tensorflow", "jax", "torch"):
            raise ModuleNotFoundError(f"{err}. {_BACKEND_HINT}", name=err.name) from err
        raise


def register_layers() -> None:
    """Register ``GatedLSTM``, ``GatedGRU`` and their cells with Keras' serialization registry.

    Importing the layer modules registers them (``@register_keras_serializable``); calling this
    twice is harmless. Every keras-gates function that loads a ``.keras`` file calls it first.
    """
    for module in sorted(set(_LAYERS.values())):
        _import_layer_module(module)


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Registers the layers right after Keras finishes loading, whoever imports it.

    It answers every ``find_spec("keras")`` (also the probes TensorFlow makes without importing)
    with the spec the other finders give, its loader wrapped so that executing Keras registers
    the layers; it leaves ``sys.meta_path`` only once Keras has really been executed.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        spec = next(
            (
                found
                for finder in sys.meta_path
                if finder is not self and hasattr(finder, "find_spec")
                for found in [finder.find_spec(fullname, path, target)]
                if found is not None
            ),
            None,
        )
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _forget_hook()
            register_layers()

        spec.loader.exec_module = exec_module
        return spec


def _forget_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterKeras)]


if "keras" in sys.modules:
    register_layers()
elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
