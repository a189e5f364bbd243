"""keras-gates: Keras recurrent layers you can open up gate by gate.

>>> import keras
>>> from keras_gates import GatedLSTM
>>> model = keras.Sequential([keras.Input((20, 3)), GatedLSTM(16), keras.layers.Dense(1)])
>>> model.layers[0].get_gate_weights()["forget"]["kernel"].shape
(3, 16)

The layers (and with them Keras and TensorFlow) load on first use, so that ``keras_gates.serving``
runs without TensorFlow. They also load as soon as Keras itself is imported, so that
``keras.saving.load_model`` finds them with no ``custom_objects`` once ``keras_gates`` is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

from keras_gates.version import __version__

_LAYERS = {
    "GatedGRU": "keras_gates.gru",
    "GatedGRUCell": "keras_gates.gru",
    "GatedLSTM": "keras_gates.lstm",
    "GatedLSTMCell": "keras_gates.lstm",
}

__all__ = [*sorted(_LAYERS), "__version__", "gates"]


def __getattr__(name: str):
    if name in _LAYERS:
        return getattr(importlib.import_module(_LAYERS[name]), name)
    if name == "gates":
        return importlib.import_module("keras_gates.gates")
    raise AttributeError(f"module 'keras_gates' has no attribute {name!r}")


def _register_layers() -> None:
    """Import the layer modules, which registers them as Keras serializables."""
    for module in sorted(set(_LAYERS.values())):
        importlib.import_module(module)


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Registers the layers right after ``import keras`` finishes (a post-import hook)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _register_layers()

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    _register_layers()
elif not any(isinstance(f, _AfterKerasImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterKerasImport())
