"""Loading a ``.keras`` model that holds keras-gates layers, with errors that say what to pass.

Used by ``keras-gates export`` and ``keras-gates inspect`` (and :func:`keras_gates.export.to_onnx`
given a path): the layers are registered first, whatever route imported Keras in this process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SAVED_WITH = "Pass a .keras file saved with model.save('model.keras')."


def load_model(model: Any, *, argument: str = "model") -> Any:
    """``model`` itself, or the Keras model saved at that path (not compiled: for inference).

    Raises:
        FileNotFoundError: the path is no file; ``argument`` names what the caller passed it as.
        ValueError: the file is not a Keras model Keras can read.
    """
    if not isinstance(model, (str, os.PathLike)):
        return model
    import keras

    from keras_gates import register_layers

    source = Path(model)
    if not source.is_file():
        raise FileNotFoundError(
            f"{argument} '{source}' does not exist or is not a file. {SAVED_WITH}"
        )
    register_layers()  # whatever route imported Keras in this process
    try:
        return keras.saving.load_model(source, compile=False)
    except Exception as err:  # Keras raises many types for unreadable files
        raise ValueError(
            f"Could not read the Keras model {argument} '{source}': {type(err).__name__}: {err}. "
            f"{SAVED_WITH}"
        ) from err
