"""``keras_gates.stateful.states_preserved``: what inspection and export validation call models in.

Witness: the same stateful model called from zeros by Keras itself (``reset_states``), and the
state variables read before and after.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.stateful import states_preserved

X = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")


def _nested_stateful() -> keras.Model:
    """A stateful LSTM in a nested Sequential, then a stateful GRU: the walker finds both."""
    keras.utils.set_random_seed(5)
    inner = keras.Sequential(
        [keras.Input((5, 3), batch_size=2), GatedLSTM(4, stateful=True, return_sequences=True)]
    )
    inputs = keras.Input((5, 3), batch_size=2)
    return keras.Model(inputs, GatedGRU(2, stateful=True)(inner(inputs)))


def _states(model: keras.Model) -> list[np.ndarray]:
    from keras_gates import _internals

    layers = [layer for layer in _internals.flatten_layers(model) if getattr(layer, "stateful", 0)]
    return [keras.ops.convert_to_numpy(v) for layer in layers for v in layer.states]


def test_reset_runs_from_zeros_and_the_states_come_back():
    model = _nested_stateful()
    model(X)  # move every state away from zeros
    before = _states(model)
    assert len(before) == 3 and all(np.abs(s).max() > 0 for s in before)
    with states_preserved(model, reset=True):
        inside = keras.ops.convert_to_numpy(model(X))
    after = _states(model)
    for layer in (model.layers[1].layers[0], model.layers[2]):
        layer.reset_states()
    from_zeros = keras.ops.convert_to_numpy(model(X))
    np.testing.assert_array_equal(inside, from_zeros)
    for want, got in zip(before, after):
        np.testing.assert_array_equal(got, want)


def test_states_come_back_after_an_error_and_without_reset_the_call_continues():
    model = _nested_stateful()
    model(X)
    before = _states(model)
    with pytest.raises(RuntimeError, match="boom"):
        with states_preserved(model):
            model(X)
            raise RuntimeError("boom")
    for want, got in zip(before, _states(model)):
        np.testing.assert_array_equal(got, want)
    with states_preserved(model):
        continued = keras.ops.convert_to_numpy(model(X))
    np.testing.assert_array_equal(continued, keras.ops.convert_to_numpy(model(X)))
