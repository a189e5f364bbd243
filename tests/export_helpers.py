"""Helpers shared by the padded-export tests: random weights, padded rows, Keras on one row."""

from __future__ import annotations

import numpy as np


def randomize(model, seed=0):
    """Random weights everywhere (biases and peepholes too) so no term hides behind a zero."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def padded(rng, batch, time, features, lengths):
    """Random rows with large garbage past each length."""
    x = rng.normal(size=(batch, time, features)).astype("float32")
    for row, n in enumerate(lengths):
        x[row, n:] = rng.normal(5.0, 4.0, size=(time - n, features))
    return x


def keras_row(model, *arrays):
    """Keras on one or several inputs (a row alone), as an array."""
    out = model(list(arrays) if len(arrays) > 1 else arrays[0], training=False)
    return np.asarray(out)


def dense(model, y):
    """The model's ``dense`` layer applied in numpy (after the reference recurrence)."""
    kernel, bias = model.get_layer("dense").get_weights()
    return y @ kernel + bias


def aligned_model():
    """``a [B, T, 3]`` and ``b [B, T, 2]`` merged step by step (``b`` projected, then concatenated
    with ``a`` on the feature axis) into a GatedGRU, then a per-step ``dense``: the export has one
    lengths input (``a``'s) and ``b`` ``aligned_with`` ``a``, so both servers pad the two alike."""
    import keras

    from keras_gates import GatedGRU

    a, b = keras.Input((None, 3), name="a"), keras.Input((None, 2), name="b")
    merged = keras.layers.Concatenate()([a, keras.layers.Dense(3, name="project_b")(b)])
    y = GatedGRU(4, return_sequences=True, name="gru")(merged)
    return keras.Model([a, b], keras.layers.Dense(2, name="dense")(y))
