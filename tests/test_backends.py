"""The layers on every Keras backend, as a user runs them: a fresh process with ``KERAS_BACKEND``.

Each child runs the parity, layer, model-inspection, concept-probe and explorer-API tests (and
keras_gates.interop's checks, tests/interop_checks.py) with TensorFlow made unimportable
(``KERAS_GATES_NO_TENSORFLOW=1``, see conftest.py), so a JAX or PyTorch user never needs it.
A model trained on JAX is then exported by ``keras-gates export`` (TensorFlow, its own process),
and onnxruntime must reproduce what JAX computed.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests import children, torch_cache
from tests.caches import with_jax_cache
from tests.reference import FP32_ATOL
from tests.test_parity import GRID

ROOT = Path(__file__).resolve().parent.parent
LAYER_TESTS = ["tests/test_parity.py", "tests/test_layers.py", "tests/test_inspect_trace.py"]


def _grid_id(case: dict, kind: str) -> str:
    return "-".join(k for k, v in case.items() if v) or "plain"


# JAX compiles every new loop (5-10 s a parity case on a busy 2-core CPU), so it runs a
# representative half: 6 of the 32 stock-parity cases (each flag on in some), 5 of the 12 layer
# contracts (peepholes, coupled with both dropouts, stateful, both GRU forms), 3 of the 8 LSTM
# reference variants and 2 of the 5 Bidirectional merge modes; everything else in full.
_JAX_GRID = {"return_sequences-masked", "return_state-go_backwards"}
_JAX_GRID |= {"return_sequences-return_state-go_backwards-masked"}
_JAX_SKIPPED_CONTRACTS = [
    "GatedLSTM-defaults",
    "GatedLSTM-coupled_input_forget-return_state",
    "GatedLSTM-use_peepholes-coupled_input_forget-use_bias",
    "GatedLSTM-frozen_gates-gate_initializers",
    "GatedLSTM-dropout-recurrent_dropout-seed-go_backwards",
    "GatedGRU-defaults",
    "GatedGRU-frozen_gates-activity_regularizer",
]
_JAX_LSTM_REFERENCE = {"False-False-True", "False-True-False", "True-True-True"}
JAX_DESELECT = [
    f"tests/test_parity.py::test_matches_stock_keras[{_grid_id(case, kind)}-{kind}]"
    for case in GRID
    for kind in ("lstm", "gru")
    if _grid_id(case, kind) not in _JAX_GRID
]
JAX_DESELECT += [f"tests/test_layers.py::test_layer_contract[{v}]" for v in _JAX_SKIPPED_CONTRACTS]
JAX_DESELECT += [
    f"tests/test_parity.py::test_lstm_matches_numpy_reference[{'-'.join(flags)}]"
    for flags in itertools.product(("False", "True"), repeat=3)
    if "-".join(flags) not in _JAX_LSTM_REFERENCE
]
JAX_DESELECT += [
    f"tests/test_layers.py::test_bidirectional_models[{m}]" for m in ("sum", "mul", "ave")
]
# Keras on PyTorch cannot train a stateful RNN called before: the stock keras.layers.LSTM fails
# the same way ("modified by an inplace operation"), so the contract's training clause cannot
# hold for this variant there. Every other test runs in full.
TORCH_DESELECT = [
    "tests/test_layers.py::test_layer_contract[GatedLSTM-stateful-kernel_regularizer-"
    "recurrent_constraint]"
]


def _env(backend: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}
    env.pop("PYTEST_CURRENT_TEST", None)
    return with_jax_cache(env) if backend == "jax" else env


def _run(command: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: int = 540):
    return children.run(command, timeout, cwd=cwd, env=env)


# Files that ride along in another file's JAX child (cheap: they trace a few tiny models).
# The explorer's API tests too (its browser test starts `keras-gates explore`: TensorFlow's side).
RIDERS = {"tests/test_inspect_trace.py": ["tests/test_inspect_probe.py", "tests/test_explorer.py"]}
BROWSER_TEST = (
    "tests/test_explorer.py::test_brushing_a_quoted_string_lists_the_other_quoted_strings"
)

# keras_gates.interop against PyTorch and the ONNX files of tests/interop_files.py (torch on the
# path in every child: tests/torch_cache.py).
INTEROP_TESTS = "tests/interop_checks.py"

# One child per JAX test file (JAX compiles every loop: the files run in parallel under
# ``pytest -n``); PyTorch's child runs them all, after one torch import.
CHILD_SUITES = [
    ("jax", [tests, *RIDERS.get(tests, [])], [*JAX_DESELECT, BROWSER_TEST])
    for tests in [*LAYER_TESTS, INTEROP_TESTS]
]
CHILD_SUITES.append(
    (
        "torch",
        [
            *LAYER_TESTS,
            *(t for r in RIDERS.values() for t in r),
            "tests/test_gate_orders.py",
            INTEROP_TESTS,
        ],
        [*TORCH_DESELECT, BROWSER_TEST],
    )
)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "backend, tests, deselect",
    CHILD_SUITES,
    ids=[f"{b}-{Path(t[0]).stem}" if b == "jax" else b for b, t, _ in CHILD_SUITES],
)
def test_layer_suite_on_backend(backend, tests, deselect, tmp_path):
    env = _env(backend, KERAS_GATES_NO_TENSORFLOW="1")
    if backend == "torch" or INTEROP_TESTS in tests:  # the venv's torch, else the cache's
        env = torch_cache.pythonpath(env)
        if not torch_cache.importable():
            pytest.skip(torch_cache.absent_reason())
    if importlib.util.find_spec(backend) is None and backend != "torch":
        pytest.skip(f"{backend} is not installed")
    if INTEROP_TESTS in tests:  # the ONNX files it reads, exported here on TensorFlow
        from tests.interop_files import write_onnx_files

        write_onnx_files(tmp_path)
        env["KERAS_GATES_INTEROP_FILES"] = str(tmp_path)
    chosen = [test for test in deselect if test.split("::")[0] in tests]
    flags = [arg for test in chosen for arg in ("--deselect", test)]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    result = _run([*command, *flags], env)
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary


_TRAIN_ON_JAX = textwrap.dedent(
    """
    import sys

    sys.modules["tensorflow"] = None  # JAX needs no TensorFlow
    import keras
    import numpy as np

    from keras_gates import GatedGRU, GatedLSTM

    assert keras.config.backend() == "jax", keras.config.backend()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 7, 3)).astype("float32")
    x[:4, 5:] = 0.0  # padded tails, masked by Masking
    y = x.sum(axis=(1, 2))[:, None]
    inputs = keras.Input((None, 3), name="series")
    h = keras.layers.Masking(0.0)(inputs)
    h = GatedLSTM(6, return_sequences=True, use_peepholes=True)(h)
    h = GatedGRU(5)(h)
    model = keras.Model(inputs, keras.layers.Dense(1, name="forecast")(h))
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    model.save(sys.argv[1])
    np.save(sys.argv[2], x)
    np.save(sys.argv[3], keras.ops.convert_to_numpy(model(x)))
    """
)


@pytest.mark.slow
def test_model_trained_on_jax_exports_to_onnx(tmp_path):
    import onnx

    from keras_gates.export import Predictor

    paths = [tmp_path / name for name in ("model.keras", "x.npy", "jax.npy")]
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_ON_JAX)
    _run([sys.executable, str(script), *map(str, paths)], _env("jax"), cwd=tmp_path)

    onnx_path = tmp_path / "model.onnx"
    cli = Path(sys.executable).with_name("keras-gates")
    result = _run([str(cli), "export", str(paths[0]), "-o", str(onnx_path)], _env("tensorflow"))
    table = [line.split() for line in result.stdout.splitlines() if line.startswith("forecast")]
    assert table and all(row[-1] == "yes" for row in table), result.stdout  # validation passed

    ops = [node.op_type for node in onnx.load(onnx_path).graph.node]
    assert ops.count("LSTM") == 1 and ops.count("GRU") == 1, ops
    x, on_jax = np.load(paths[1]), np.load(paths[2])
    lengths = (x != 0.0).any(axis=2).sum(axis=1)  # the Masking layer's view: 5 or 7 steps
    on_onnx = Predictor(onnx_path, device="cpu").predict(x, lengths)["forecast"]
    np.testing.assert_allclose(on_onnx, on_jax, atol=FP32_ATOL)
