"""A layer-contract helper (after keras/src/testing/test_case.py::run_layer_test).

Each clause is its own function, so a failure names the clause that broke.
"""

from __future__ import annotations

import json

import keras
import numpy as np
from keras.ops import convert_to_numpy as to_numpy


def run_layer_contract(layer_cls, init_kwargs, tmp_path, *, input_shape=(3, 6, 4)):
    """Check shapes, weight counts, config and JSON round trips, `.keras` save/load and one
    training step for ``layer_cls(**init_kwargs)`` on inputs of ``input_shape``."""
    x = np.random.default_rng(0).standard_normal(input_shape).astype("float32")
    layer = layer_cls(**init_kwargs)
    check_output_shapes(layer, x, init_kwargs["units"])
    check_one_variable_per_gate_and_part(layer, input_shape[-1], init_kwargs["units"])
    check_config_round_trip(layer_cls, layer)
    model = keras.Sequential([keras.Input(input_shape[1:], batch_size=input_shape[0]), layer])
    check_saved_and_loaded_outputs_match(model, layer, x, tmp_path)
    check_a_training_step_moves_weights(model, layer, x)
    return layer


def check_output_shapes(layer, x, units: int) -> None:
    outputs = layer(x)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    batch, steps = x.shape[:2]
    expected = (batch, steps, units) if layer.return_sequences else (batch, units)
    assert tuple(outputs[0].shape) == expected
    for state in outputs[1:]:
        assert tuple(state.shape) == (batch, units)


def check_one_variable_per_gate_and_part(layer, input_dim: int, units: int) -> None:
    weights = layer.get_gate_weights()
    assert len(layer.trainable_weights) + len(layer.non_trainable_weights) == sum(
        len(parts) for parts in weights.values()
    )
    for gate, parts in weights.items():
        assert parts["kernel"].shape == (input_dim, units), gate
        assert parts["recurrent_kernel"].shape == (units, units), gate
        for var in layer.gate_variables[gate].values():
            assert f"/{gate}/" in var.path


def check_config_round_trip(layer_cls, layer) -> None:
    """``from_config(get_config())`` through JSON gives the same config."""
    config = layer.get_config()
    clone = layer_cls.from_config(
        json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))["config"]
    )
    assert clone.get_config() == config


def check_saved_and_loaded_outputs_match(model, layer, x, tmp_path) -> None:
    """A `.keras` save and load (no custom_objects) gives identical outputs."""
    path = tmp_path / f"{layer.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    if layer.stateful:
        layer.reset_state()
        loaded.layers[0].reset_state()
    np.testing.assert_allclose(to_numpy(_first(model(x))), to_numpy(_first(loaded(x))), atol=1e-6)


def check_a_training_step_moves_weights(model, layer, x) -> None:
    """One SGD step moves the (trainable) weights."""
    head = keras.Sequential([model, keras.layers.Lambda(_first), keras.layers.Flatten()])
    head.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [to_numpy(v) for v in layer.trainable_weights]
    target = np.ones((x.shape[0],) + tuple(head.output_shape[1:]), "float32")
    head.fit(x, target, batch_size=x.shape[0], epochs=1, verbose=0)
    moved = [not np.allclose(b, to_numpy(v)) for b, v in zip(before, layer.trainable_weights)]
    assert any(moved)


def _first(outputs):
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs
