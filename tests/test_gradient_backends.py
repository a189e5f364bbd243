"""Gradient flow gives the same numbers on TensorFlow, JAX and PyTorch.

One small model with fixed weights (Masking, a peephole GatedLSTM, a stock GRU, Dense) over a
padded batch, and a stateful GatedLSTM called before: ``gradient_flow`` and
``state_gradient_flow`` on TensorFlow in this process, and on JAX and PyTorch in child processes
with ``KERAS_BACKEND`` set and TensorFlow made unimportable. The numbers are compared per sample
and lag within GRAD_ATOL (the same float32 computation on each backend).
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests import children, torch_cache
from tests.caches import with_jax_cache
from tests.reference import GRAD_ATOL

pytestmark = pytest.mark.slow  # child processes or real servers: make test, not make check

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    if os.environ["KERAS_BACKEND"] != "tensorflow":
        sys.modules["tensorflow"] = None  # JAX and PyTorch users never need TensorFlow
    import keras
    import numpy as np

    from keras_gates import GatedLSTM
    from keras_gates.inspect import gradient_flow, inspect_model, state_gradient_flow


    def compute(path):
        assert keras.config.backend() == os.environ["KERAS_BACKEND"], keras.config.backend()
        rng = np.random.default_rng(0)
        x = rng.normal(size=(5, 9, 3)).astype("float32")
        x[1, 6:] = 0.0  # right padding, masked by Masking
        x[3, 4:] = 0.0
        inputs = keras.Input((None, 3))
        h = keras.layers.Masking(0.0)(inputs)
        h = GatedLSTM(4, return_sequences=True, use_peepholes=True, name="lstm")(h)
        h = keras.layers.GRU(3, name="gru")(h)
        model = keras.Model(inputs, keras.layers.Dense(2)(h))
        model.set_weights([0.6 * rng.normal(size=w.shape) for w in model.get_weights()])

        flow = gradient_flow(model, x)
        states = state_gradient_flow(model, x)
        summary = inspect_model(model, x)["summary"]["gradient_flow"]
        assert summary["note"] is None and summary["input"] is not None, summary
        arrays = {"input": flow["per_sample"], "input_reach": flow["reach"]}
        for key, profile in states.items():
            arrays[key] = profile["per_sample"]
            arrays[key + "_reach"] = profile["reach"]
            assert summary["layers"][key]["reach"] == int(profile["reach"]), (key, summary)

        # A stateful layer called before: the gradients start from its current state, which
        # the analysis leaves as it found it.
        stateful = keras.Sequential(
            [keras.Input((9, 3), batch_size=5), GatedLSTM(3, stateful=True, name="stateful")]
        )
        stateful.set_weights([0.6 * rng.normal(size=w.shape) for w in stateful.get_weights()])
        stateful(x)
        before = [keras.ops.convert_to_numpy(v) for v in stateful.non_trainable_variables]
        arrays["stateful_input"] = gradient_flow(stateful, x)["per_sample"]
        arrays["stateful"] = state_gradient_flow(stateful, x)["stateful"]["per_sample"]
        after = [keras.ops.convert_to_numpy(v) for v in stateful.non_trainable_variables]
        assert all(np.array_equal(a, b) for a, b in zip(before, after)), "state changed"
        np.savez(path, **arrays)


    if __name__ == "__main__":
        compute(sys.argv[1])
    """
)


def _run(tmp_path: Path, backend: str) -> dict[str, np.ndarray]:
    out, script = tmp_path / f"{backend}.npz", tmp_path / "flow.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env = with_jax_cache(env) if backend == "jax" else env
    env.pop("PYTEST_CURRENT_TEST", None)
    env = torch_cache.pythonpath(env) if backend == "torch" else env
    children.run([sys.executable, str(script), str(out)], timeout=600, cwd=ROOT, env=env)
    return dict(np.load(out))


@pytest.fixture(scope="module")
def on_tensorflow(tmp_path_factory):
    """The script's numbers on TensorFlow, computed in this process."""
    namespace = {"__name__": "flow"}
    exec(SCRIPT, namespace)
    out = tmp_path_factory.mktemp("tf") / "tensorflow.npz"
    namespace["compute"](out)
    return dict(np.load(out))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_gradient_flow_is_the_same_on_every_backend(on_tensorflow, backend, tmp_path):
    if backend == "torch":
        if torch_cache.ready() is None and not _importable("torch"):
            pytest.skip(torch_cache.absent_reason())
    got = _run(tmp_path, backend)
    assert sorted(got) == sorted(on_tensorflow)
    assert set(on_tensorflow) >= {"input", "lstm", "gru", "stateful_input", "stateful"}
    for key, want in on_tensorflow.items():
        # NaN where a padded sample has no step at that lag, on every backend alike.
        np.testing.assert_allclose(got[key], want, atol=GRAD_ATOL, rtol=0, err_msg=key)
    assert np.nanmax(on_tensorflow["input"]) > 0.1  # the norms are not vanishingly small


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
