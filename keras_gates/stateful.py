"""Call a model without disturbing its stateful layers.

Inspection and export validation both run the user's model; a ``stateful=True`` layer inside it
would carry its state into that call and keep the call's state afterwards. :func:`states_preserved`
saves the states first and puts them back after. Public attributes only (``stateful``, ``states``,
``reset_states``); no TensorFlow, so it works on every Keras backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from keras_gates import _internals


@contextlib.contextmanager
def states_preserved(model: keras.layers.Layer, reset: bool = False) -> Iterator[None]:
    """For the duration, the stateful layers in ``model`` keep running from their states (from
    zeros with ``reset=True``); afterwards, even after an error, they hold what they held before.

    Example:

    >>> import keras, numpy as np
    >>> from keras_gates import GatedGRU
    >>> model = keras.Sequential([keras.Input((4, 2), batch_size=1), GatedGRU(3, stateful=True)])
    >>> before = model(np.ones((1, 4, 2)))
    >>> with states_preserved(model, reset=True):
    ...     _ = model(np.ones((1, 4, 2)))
    >>> bool(np.allclose(model.layers[0].states[0], before))
    True
    """
    layers = [
        layer
        for layer in _internals.flatten_layers(model, include_self=True)
        if getattr(layer, "stateful", False)
    ]
    saved = [
        (variable, variable.numpy())
        for layer in layers
        for variable in (getattr(layer, "states", None) or [])
        if variable is not None and hasattr(variable, "assign")
    ]
    try:
        if reset:
            for layer in layers:
                layer.reset_states()
        yield
    finally:
        for variable, value in saved:
            variable.assign(value)
