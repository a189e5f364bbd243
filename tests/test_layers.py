"""The gated layers' API: contract, gate weights, freezing, tracing, models, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras.ops import convert_to_numpy as to_numpy

from keras_gates import GatedGRU, GatedGRUCell, GatedLSTM, GatedLSTMCell
from tests.layer_contract import run_layer_contract
from tests.reference import FP32_ATOL

X = np.random.default_rng(1).standard_normal((3, 6, 4)).astype("float32")

VARIANTS = [
    (GatedLSTM, {}),
    (GatedLSTM, {"return_sequences": True, "use_peepholes": True}),
    (GatedLSTM, {"coupled_input_forget": True, "return_state": True}),
    (GatedLSTM, {"use_peepholes": True, "coupled_input_forget": True, "use_bias": False}),
    (GatedLSTM, {"frozen_gates": ["forget"], "gate_initializers": {"forget": {"bias": 2.0}}}),
    (GatedLSTM, {"dropout": 0.2, "recurrent_dropout": 0.2, "seed": 1, "go_backwards": True}),
    (GatedLSTM, {"coupled_input_forget": True, "dropout": 0.1, "recurrent_dropout": 0.2}),
    (GatedLSTM, {"stateful": True, "kernel_regularizer": "l2", "recurrent_constraint": "max_norm"}),
    (GatedGRU, {}),
    (GatedGRU, {"reset_after": False, "return_sequences": True}),
    (GatedGRU, {"use_bias": False, "return_state": True, "dropout": 0.3, "seed": 2}),
    (GatedGRU, {"frozen_gates": ["reset"], "activity_regularizer": "l1"}),
]


def _variant_id(variant) -> str:
    return variant.__name__ if isinstance(variant, type) else "-".join(variant) or "defaults"


@pytest.mark.parametrize("layer_cls, kwargs", VARIANTS, ids=_variant_id)
def test_layer_contract(layer_cls, kwargs, tmp_path):
    run_layer_contract(layer_cls, {"units": 5, **kwargs}, tmp_path)


def test_weight_names_read_like_gates():
    layer = GatedLSTM(4, name="gated_lstm")
    layer(X)
    paths = [w.path for w in layer.weights]
    assert paths[:3] == [
        "gated_lstm/input/kernel",
        "gated_lstm/input/recurrent_kernel",
        "gated_lstm/input/bias",
    ]
    assert "gated_lstm/forget/bias" in paths
    assert layer.gate_names == ("input", "forget", "candidate", "output")
    assert GatedGRU(2).gate_names == ("update", "reset", "candidate")


def test_get_and_set_gate_weights_round_trip():
    layer = GatedGRU(4)
    layer(X)
    weights = layer.get_gate_weights()
    assert set(weights) == {"update", "reset", "candidate"}
    assert set(weights["reset"]) == {"kernel", "recurrent_kernel", "bias", "recurrent_bias"}
    layer.set_gate_weights({"reset": {"bias": np.full(4, 3.0)}})
    np.testing.assert_array_equal(layer.get_gate_weights()["reset"]["bias"], np.full(4, 3.0))
    np.testing.assert_array_equal(
        layer.get_gate_weights()["update"]["kernel"], weights["update"]["kernel"]
    )


def test_set_gate_weights_changes_outputs_as_expected():
    layer = GatedLSTM(3, return_sequences=True)
    layer(X)
    layer.set_gate_weights({"output": {"bias": np.full(3, -50.0)}})  # output gate shut
    np.testing.assert_allclose(to_numpy(layer(X)), 0.0, atol=1e-6)


def test_unit_forget_bias_and_per_gate_initializer():
    layer = GatedLSTM(3, gate_initializers={"input": {"bias": "ones"}})
    layer(X)
    weights = layer.get_gate_weights()
    np.testing.assert_array_equal(weights["forget"]["bias"], np.ones(3))
    np.testing.assert_array_equal(weights["input"]["bias"], np.ones(3))
    layer2 = GatedLSTM(3, gate_initializers={"forget": {"bias": 2.0}})
    layer2(X)
    np.testing.assert_array_equal(layer2.get_gate_weights()["forget"]["bias"], np.full(3, 2.0))


def test_frozen_gate_does_not_train_and_persists(tmp_path):
    model = keras.Sequential(
        [keras.Input((6, 4)), GatedLSTM(3, frozen_gates=["forget"]), keras.layers.Dense(1)]
    )
    layer = model.layers[0]
    before = layer.get_gate_weights()
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(X, np.ones((3, 1)), epochs=2, verbose=0)
    after = layer.get_gate_weights()
    for part in before["forget"]:
        np.testing.assert_array_equal(before["forget"][part], after["forget"][part])
    assert not np.allclose(before["input"]["kernel"], after["input"]["kernel"])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[0].frozen_gates == ("forget",)
    assert all("forget" not in v.path for v in loaded.layers[0].trainable_weights)


def test_freeze_and_unfreeze_gates_at_runtime():
    layer = GatedGRU(3)
    layer(X)
    layer.freeze_gates("update", "reset")
    assert {v.path.split("/")[-2] for v in layer.trainable_weights} == {"candidate"}
    assert layer.get_config()["frozen_gates"] == ["update", "reset"]
    layer.unfreeze_gates("reset")
    assert layer.frozen_gates == ("update",)


def test_coupled_forget_gate_owns_no_weights():
    layer = GatedLSTM(3, coupled_input_forget=True, use_peepholes=True)
    layer(X)
    weights = layer.get_gate_weights()
    assert set(weights) == {"input", "candidate", "output"}
    assert "peephole" in weights["input"] and "peephole" not in weights["candidate"]
    trace = layer.trace(X)
    np.testing.assert_allclose(trace["forget"], 1.0 - trace["input"], atol=1e-6)


@pytest.mark.parametrize("layer_cls", [GatedLSTM, GatedGRU])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_trace_matches_call_and_keeps_state(layer_cls, go_backwards):
    layer = layer_cls(4, return_sequences=True, go_backwards=go_backwards, stateful=True)
    layer(X)
    state_before = [keras.ops.convert_to_numpy(v) for v in layer.states]
    trace = layer.trace(X)
    for before, var in zip(state_before, layer.states):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(var))
    called = to_numpy(layer(X))  # continues from the same state the trace started from
    hidden = trace["hidden"][:, ::-1] if go_backwards else trace["hidden"]
    np.testing.assert_allclose(hidden, called, atol=FP32_ATOL)
    for gate in layer.gate_names:
        assert trace[gate].shape == (3, 6, 4)
        assert (trace[gate] >= -1).all() and (trace[gate] <= 1).all()


def test_trace_masked_steps_are_zero_and_reported():
    layer = GatedLSTM(4)
    mask = np.array([[1] * 6, [1] * 3 + [0] * 3, [1] * 6], bool)
    trace = layer.trace(X, mask=mask)
    np.testing.assert_array_equal(trace["mask"], mask)
    assert np.all(trace["input"][1, 3:] == 0) and np.all(trace["input"][1, :3] != 0)
    np.testing.assert_allclose(trace["hidden"][:, 2], to_numpy(layer(X[:, :3])), atol=FP32_ATOL)


def test_cells_inside_keras_rnn_and_stacked():
    single = keras.layers.RNN(GatedLSTMCell(4))
    assert tuple(single(X).shape) == (3, 4)
    stacked = keras.layers.RNN([GatedLSTMCell(4), GatedGRUCell(3)], return_sequences=True)
    assert tuple(stacked(X).shape) == (3, 6, 3)
    # A cell inside keras.layers.RNN computes what the layer computes.
    layer = GatedGRU(4, return_sequences=True)
    layer(X)
    rnn = keras.layers.RNN(GatedGRUCell(4), return_sequences=True)
    rnn(X)
    rnn.cell.set_gate_weights(layer.get_gate_weights())
    np.testing.assert_allclose(to_numpy(rnn(X)), to_numpy(layer(X)), atol=FP32_ATOL)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_models(merge_mode, tmp_path):
    inputs = keras.Input((6, 4))
    outputs = keras.layers.Bidirectional(GatedGRU(3), merge_mode=merge_mode)(inputs)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "bi.keras")
    loaded = keras.saving.load_model(tmp_path / "bi.keras")
    for a, b in zip(keras.tree.flatten(model(X)), keras.tree.flatten(loaded(X))):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)


def test_masking_and_embedding_mask_zero():
    padded = X.copy()
    padded[1, 4:] = 0.0
    model = keras.Sequential([keras.Input((6, 4)), keras.layers.Masking(0.0), GatedLSTM(3)])
    np.testing.assert_allclose(
        to_numpy(model(padded))[1], to_numpy(model(padded[1:2, :4]))[0], atol=FP32_ATOL
    )
    tokens = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    emb = keras.Sequential(
        [keras.Input((5,)), keras.layers.Embedding(9, 4, mask_zero=True), GatedGRU(3)]
    )
    np.testing.assert_allclose(
        to_numpy(emb(tokens))[0], to_numpy(emb(tokens[:1, :3]))[0], atol=FP32_ATOL
    )


def test_from_keras_and_to_keras_round_trip():
    stock = keras.layers.LSTM(4, return_sequences=True, go_backwards=True)
    stock(X)
    gated = GatedLSTM.from_keras(stock)
    back = gated.to_keras()
    assert isinstance(back, keras.layers.LSTM)
    np.testing.assert_allclose(to_numpy(back(X)), to_numpy(stock(X)), atol=FP32_ATOL)
    with pytest.raises(ValueError, match="use_peepholes=True"):
        peep = GatedLSTM(4, use_peepholes=True)
        peep(X)
        peep.to_keras()
    with pytest.raises(TypeError, match="keras.layers.GRU"):
        GatedGRU.from_keras(stock)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GatedLSTM(0), r"argument `units`, expected a positive integer, got 0"),
        (lambda: GatedGRU(-3), r"argument `units`, expected a positive integer, got -3"),
        (lambda: GatedLSTM(3, dropout=1.0), r"argument `dropout`, expected a float in \[0, 1\)"),
        (lambda: GatedGRU(3, recurrent_dropout=-0.1), r"`recurrent_dropout`.*got -0.1"),
        (lambda: GatedLSTM(3, frozen_gates=["update"]), r"unknown gate name 'update'.*frozen"),
        (lambda: GatedGRU(3, gate_initializers={"forget": {}}), r"unknown gate name 'forget'"),
        (lambda: GatedGRU(3, gate_initializers={"reset": {"peep": 1}}), r"unknown part 'peep'"),
        (lambda: GatedLSTM(3, use_cudnn="yes"), r"`use_cudnn`.*got 'yes'"),
    ],
)
def test_bad_arguments_name_the_rule(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_gate_weights_are_rejected_before_writing():
    layer = GatedLSTM(3)
    with pytest.raises(ValueError, match="no weights yet"):
        layer.get_gate_weights()
    layer(X)
    before = layer.get_gate_weights()
    with pytest.raises(ValueError, match=r"shape \(4, 2\) for `input/kernel`, expected shape"):
        layer.set_gate_weights(
            {"forget": {"bias": np.zeros(3)}, "input": {"kernel": np.zeros((4, 2))}}
        )
    np.testing.assert_array_equal(
        layer.get_gate_weights()["forget"]["bias"], before["forget"]["bias"]
    )
    with pytest.raises(ValueError, match="unknown gate name 'reset'"):
        layer.set_gate_weights({"reset": {}})
    with pytest.raises(ValueError, match="unknown part 'recurrent_bias'"):
        layer.set_gate_weights({"input": {"recurrent_bias": np.zeros(3)}})
    coupled = GatedLSTM(3, coupled_input_forget=True)
    coupled(X)
    with pytest.raises(ValueError, match="owns no weights"):
        coupled.set_gate_weights({"forget": {"bias": np.zeros(3)}})


def test_builds_inside_a_subclassed_model():
    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.gru = GatedGRU(4, return_sequences=True)
            self.lstm = GatedLSTM(3, use_peepholes=True)

        def call(self, x):
            return self.lstm(self.gru(x))

    model = Model()
    assert tuple(model(X).shape) == (3, 3)
    assert model.gru.get_gate_weights()["reset"]["kernel"].shape == (4, 4)
