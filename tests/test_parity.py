"""Numerical parity of the gated layers with three independent witnesses:
the stock Keras layers (weights copied gate by gate), a numpy reference, and fixed values."""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np
import pytest
from keras.ops import convert_to_numpy as to_numpy

from keras_gates import GatedGRU, GatedLSTM
from tests import reference
from tests.reference import FP32_ATOL, GRAD_ATOL

RNG = np.random.default_rng(42)
X = RNG.standard_normal((3, 7, 4)).astype("float32")
MASK = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], bool)

GRID = [
    dict(zip(("return_sequences", "return_state", "go_backwards", "masked"), combo))
    for combo in itertools.product([False, True], repeat=4)
]


def _stock_and_gated(kind, **kwargs):
    stock_cls = keras.layers.LSTM if kind == "lstm" else keras.layers.GRU
    gated_cls = GatedLSTM if kind == "lstm" else GatedGRU
    stock = stock_cls(5, **kwargs)
    stock(X)  # build with random weights
    return stock, gated_cls.from_keras(stock)


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(
    "case", GRID, ids=lambda c: "-".join(k for k, v in c.items() if v) or "plain"
)
def test_matches_stock_keras(kind, case):
    case = dict(case)
    masked = case.pop("masked")
    stock, gated = _stock_and_gated(kind, **case)
    mask = MASK if masked else None
    for want, got in zip(_as_list(stock(X, mask=mask)), _as_list(gated(X, mask=mask))):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=FP32_ATOL)


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("lstm", {"use_bias": False}),
        ("lstm", {"activation": "relu", "recurrent_activation": "hard_sigmoid"}),
        ("lstm", {"unit_forget_bias": False, "bias_initializer": "random_normal"}),
        ("gru", {"reset_after": False}),
        ("gru", {"use_bias": False}),
        ("gru", {"reset_after": False, "use_bias": False}),
        ("gru", {"activation": "relu", "recurrent_activation": "hard_sigmoid"}),
    ],
)
def test_matches_stock_keras_variants(kind, kwargs):
    stock, gated = _stock_and_gated(kind, return_sequences=True, **kwargs)
    np.testing.assert_allclose(to_numpy(gated(X)), to_numpy(stock(X)), atol=FP32_ATOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradients_match_stock_keras(kind):
    """One SGD step with learning rate 1 moves each weight by minus its gradient: the same step
    on the stock and the gated layer (padded steps masked) gives the same gradients. Public API
    only, so the same check runs on every backend."""
    stock, gated = _stock_and_gated(kind, return_sequences=True)
    padded = np.where(MASK[..., None], X, 0.0).astype("float32")
    deltas = []
    for layer in (stock, gated):
        model = keras.Sequential([keras.Input(X.shape[1:]), keras.layers.Masking(0.0), layer])
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=_sum_of_squares)
        before = {v.path: to_numpy(v) for v in layer.trainable_weights}
        model.train_on_batch(padded, np.zeros((len(X), X.shape[1], 5), "float32"))
        deltas.append({v.path: before[v.path] - to_numpy(v) for v in layer.trainable_weights})
    kernel, recurrent = (
        np.concatenate([deltas[1][f"{gated.name}/{g}/{part}"] for g in gated.keras_order], -1)
        for part in ("kernel", "recurrent_kernel")
    )
    stock_kernel, stock_recurrent = (v.path for v in stock.trainable_weights[:2])
    np.testing.assert_allclose(kernel, deltas[0][stock_kernel], atol=GRAD_ATOL)
    np.testing.assert_allclose(recurrent, deltas[0][stock_recurrent], atol=GRAD_ATOL)


def _sum_of_squares(y_true, y_pred):
    return keras.ops.sum(keras.ops.square(y_pred - y_true), axis=-1)


def test_bidirectional_matches_stock():
    stock = keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True))
    stock(X)
    gated = keras.layers.Bidirectional(GatedLSTM(5, return_sequences=True))
    gated(X)
    gated.forward_layer.set_gate_weights(
        GatedLSTM.from_keras(stock.forward_layer).get_gate_weights()
    )
    gated.backward_layer.set_gate_weights(
        GatedLSTM.from_keras(stock.backward_layer).get_gate_weights()
    )
    np.testing.assert_allclose(
        to_numpy(gated(X, mask=MASK)), to_numpy(stock(X, mask=MASK)), atol=FP32_ATOL
    )


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_stateful_continuation_matches_stock(kind):
    stock_cls = keras.layers.LSTM if kind == "lstm" else keras.layers.GRU
    stock = stock_cls(5, stateful=True, return_sequences=True)
    stock(X)
    stock.reset_state()
    gated = (GatedLSTM if kind == "lstm" else GatedGRU).from_keras(stock)
    gated.reset_state()
    whole = to_numpy(stock(X))
    first, second = to_numpy(gated(X[:, :3])), to_numpy(gated(X[:, 3:]))
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=FP32_ATOL)
    gated.reset_state()
    np.testing.assert_allclose(to_numpy(gated(X)), whole, atol=FP32_ATOL)


# ----------------------------------------------------------------------------- numpy reference
@pytest.mark.parametrize("peepholes", [False, True])
@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_lstm_matches_numpy_reference(peepholes, coupled, go_backwards):
    layer = GatedLSTM(
        5,
        return_sequences=True,
        use_peepholes=peepholes,
        coupled_input_forget=coupled,
        go_backwards=go_backwards,
        bias_initializer="random_normal",
        gate_initializers={g: {"peephole": "random_normal"} for g in ("input", "output")},
    )
    layer(X)
    weights = layer.get_gate_weights()
    want, _, _ = reference.lstm(
        X.astype("float64"),
        weights,
        peepholes=peepholes,
        coupled=coupled,
        mask=MASK,
        go_backwards=go_backwards,
    )
    got = to_numpy(layer(X, mask=MASK))
    np.testing.assert_allclose(got, want, atol=FP32_ATOL)


@pytest.mark.parametrize("reset_after", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_gru_matches_numpy_reference(reset_after, go_backwards):
    layer = GatedGRU(
        5,
        return_sequences=True,
        reset_after=reset_after,
        go_backwards=go_backwards,
        bias_initializer="random_normal",
    )
    layer(X)
    want, _ = reference.gru(
        X.astype("float64"),
        layer.get_gate_weights(),
        reset_after=reset_after,
        mask=MASK,
        go_backwards=go_backwards,
    )
    np.testing.assert_allclose(to_numpy(layer(X, mask=MASK)), want, atol=FP32_ATOL)


# ----------------------------------------------------------------------------- fixed values
def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_lstm_fixed_values_from_constant_initializers():
    """Kernels 0.1, recurrent kernels 0.2, biases 0, forget bias 1, all-ones inputs (2 features):
    every unit follows the same scalar recursion, written out by hand."""
    layer = GatedLSTM(
        3,
        return_sequences=True,
        kernel_initializer=keras.initializers.Constant(0.1),
        recurrent_initializer=keras.initializers.Constant(0.2),
    )
    out = to_numpy(layer(np.ones((1, 2, 2), "float32")))
    h = c = 0.0
    expected = []
    for _ in range(2):
        pre = 2 * 0.1 + 3 * 0.2 * h
        i, f, o = _sig(pre), _sig(pre + 1.0), _sig(pre)
        c = f * c + i * math.tanh(pre)
        h = o * math.tanh(c)
        expected.append(h)
    np.testing.assert_allclose(out[0, :, 0], expected, atol=FP32_ATOL)
    np.testing.assert_allclose(out[0, :, 0], [0.059437, 0.117412], atol=1e-6)  # by hand


def test_gru_fixed_values_from_constant_initializers():
    layer = GatedGRU(
        3,
        return_sequences=True,
        kernel_initializer=keras.initializers.Constant(0.1),
        recurrent_initializer=keras.initializers.Constant(0.2),
        gate_initializers={"candidate": {"bias": 0.5}},
    )
    out = to_numpy(layer(np.ones((1, 2, 2), "float32")))
    h = 0.0
    expected = []
    for _ in range(2):
        z = r = _sig(0.2 + 0.6 * h)
        n = math.tanh(0.2 + 0.5 + r * 0.6 * h)
        h = z * h + (1 - z) * n
        expected.append(h)
    np.testing.assert_allclose(out[0, :, 0], expected, atol=FP32_ATOL)
