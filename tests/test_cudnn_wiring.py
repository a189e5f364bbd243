"""The cuDNN path's wiring, checked on a CPU: what the layers hand to Keras' cuDNN kernels.

No GPU is available to the suite, so Keras' ``backend.lstm``/``backend.gru`` are replaced by a
recorder that then declines (as they do without a GPU). The recorded weights must be the gate
variables fused in Keras' (= cuDNN's) layout, so that on a GPU the result equals the stock layer.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_gates import GatedGRU, GatedLSTM, _internals, gates

X = np.random.default_rng(3).standard_normal((2, 5, 3)).astype("float32")


@pytest.fixture
def recorder(monkeypatch):
    calls = {}

    def record(name):
        def kernel(*args, **kwargs):
            calls[name] = (args, kwargs)
            raise NotImplementedError  # what Keras does when cuDNN cannot run

        return kernel

    monkeypatch.setattr(_internals, "fused_lstm", record("lstm"))
    monkeypatch.setattr(_internals, "fused_gru", record("gru"))
    return calls


def _fused(layer, part):
    weights = layer.get_gate_weights()
    return gates.fuse({g: weights[g][part] for g in layer.keras_order}, layer.keras_order)


def test_lstm_hands_keras_layout_to_cudnn(recorder):
    layer = GatedLSTM(4, return_sequences=True, go_backwards=True)
    out = layer(X)
    _, kwargs = recorder["lstm"]
    for part in ("kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(np.asarray(kwargs[part]), _fused(layer, part))
    assert kwargs["go_backwards"] and kwargs["return_sequences"]
    assert tuple(out.shape) == (2, 5, 4)  # the generic loop answered after the decline


def test_gru_hands_stacked_biases_to_cudnn(recorder):
    layer = GatedGRU(4)
    layer(X)
    _, kwargs = recorder["gru"]
    np.testing.assert_array_equal(np.asarray(kwargs["kernel"]), _fused(layer, "kernel"))
    bias = np.stack([_fused(layer, "bias"), _fused(layer, "recurrent_bias")])
    np.testing.assert_array_equal(np.asarray(kwargs["bias"]), bias)
    assert kwargs["reset_after"] is True


@pytest.mark.parametrize(
    "layer",
    [
        lambda: GatedLSTM(4, use_peepholes=True),
        lambda: GatedLSTM(4, coupled_input_forget=True),
        lambda: GatedLSTM(4, recurrent_dropout=0.1),
        lambda: GatedGRU(4, reset_after=False),
    ],
)
def test_variants_cudnn_cannot_run_never_reach_it(recorder, layer):
    layer()(X, training=True)
    assert recorder == {}


def test_use_cudnn_true_without_a_gpu_is_a_clear_error(recorder):
    with pytest.raises(ValueError, match="use_cudnn='auto'"):
        GatedLSTM(4, use_cudnn=True)(X)
