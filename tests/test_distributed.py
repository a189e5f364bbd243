"""Training under tf.distribute.MirroredStrategy, and mixed precision, compared by the numbers.

MirroredStrategy uses the two logical CPUs conftest.py creates. Multi-worker training (two
processes on loopback) and JAX DataParallel (two XLA CPU devices) run as the examples
``multi_worker.py`` and ``jax_data_parallel.py`` in tests/test_examples.py, each checked against
a single-process run in the same way.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.ops import convert_to_numpy as to_numpy

from keras_gates import GatedGRU, GatedLSTM
from tests.reference import DISTRIBUTED_ATOL, FP16_ATOL

RNG = np.random.default_rng(7)
X = RNG.standard_normal((8, 6, 4)).astype("float32")
Y = RNG.standard_normal((8, 1)).astype("float32")


def _model(layer_cls, initial=None, dtype=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 4)),
            layer_cls(3, dtype=dtype, name="gated"),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )
    if initial is not None:
        model.set_weights(initial)
    return model


def _fit(model):
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss="mse")
    model.fit(X, Y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    return model.get_weights()


@pytest.fixture(scope="module")
def strategy():
    # One strategy per process: a second MirroredStrategy on the same CPUs reuses collective
    # instance keys and TensorFlow then mixes up the two models' all-reduces.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.mark.slow  # MirroredStrategy training on two logical devices
@pytest.mark.parametrize("layer_cls", [GatedLSTM, GatedGRU])
def test_mirrored_strategy_equals_single_device(layer_cls, strategy):
    initial = _model(layer_cls).get_weights()
    single = _fit(_model(layer_cls, initial))
    with strategy.scope():
        mirrored = _model(layer_cls, initial)
    mirrored = _fit(mirrored)  # each replica: 4 of the 8 samples of each global batch
    moved = max(np.abs(a - b).max() for a, b in zip(single, initial))
    assert moved > 1e-3, "training did not move the weights: the comparison would prove nothing"
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, atol=DISTRIBUTED_ATOL)


@pytest.mark.parametrize("layer_cls", [GatedLSTM, GatedGRU])
def test_mixed_float16_matches_float32(layer_cls):
    full = keras.Sequential([keras.Input((6, 4)), layer_cls(3, return_sequences=True)])
    half = keras.Sequential(
        [keras.Input((6, 4)), layer_cls(3, return_sequences=True, dtype="mixed_float16")]
    )
    half.layers[0].set_gate_weights(full.layers[0].get_gate_weights())
    out = half(X)
    assert out.dtype == "float16"
    assert all(v.dtype == "float32" for v in half.layers[0].weights)
    np.testing.assert_allclose(to_numpy(out).astype("float32"), to_numpy(full(X)), atol=FP16_ATOL)
    trace = half.layers[0].trace(X)
    assert trace["hidden"].dtype == np.float32  # traces are reported in float32
    np.testing.assert_allclose(trace["hidden"], full.layers[0].trace(X)["hidden"], atol=FP16_ATOL)


def test_mixed_float16_training_follows_float32():
    """Three epochs under mixed_float16 move the weights as float32 does (measured: updates
    up to 0.44 agree within 1e-4)."""
    initial = _model(GatedLSTM).get_weights()
    single = _fit(_model(GatedLSTM, initial))
    half = _fit(_model(GatedLSTM, initial, dtype="mixed_float16"))
    for a, b, start in zip(half, single, initial):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a - start, b - start, atol=FP16_ATOL)
