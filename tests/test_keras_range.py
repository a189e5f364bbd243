"""The oldest Keras that pyproject.toml admits runs the layer tests (the rest of the suite runs on
the newest, pinned in constraints.txt).

The oldest Keras is installed once (``pip install --no-deps --target``, a few seconds; Keras' own
dependencies are the same packages the newest needs) into a cache folder, and a child pytest runs
with it first on ``PYTHONPATH``. Set ``KERAS_GATES_CACHE`` to move the cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keras_gates._internals import NEWEST_KERAS, OLDEST_KERAS
from tests import children
from tests.caches import CACHE

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_parity.py",
    "tests/test_layers.py",
    "tests/test_cudnn_wiring.py",
    "tests/test_private_api.py",
    # The exporter leans on Keras internals the most: one LSTM, one GRU, Bidirectional, peepholes.
    "tests/test_export.py::test_export_matches_keras[lstm_last_dense]",
    "tests/test_export.py::test_export_matches_keras[gru_reset_before]",
    "tests/test_export.py::test_export_matches_keras[bidi_concat]",
    "tests/test_export.py::test_export_matches_keras[lstm_peepholes]",
]


def _keras_at(version: str) -> Path:
    target = CACHE / f"keras-{version}"
    if not (target / "keras" / "__init__.py").is_file():
        partial = target.with_name(target.name + ".partial")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(partial),
                f"keras=={version}",
            ],
            check=True,
            capture_output=True,
        )
        partial.rename(target)  # atomic: a half-finished install is never taken for the cache
    return target


def test_pyproject_states_the_tested_range():
    text = (ROOT / "pyproject.toml").read_text()
    oldest = ".".join(OLDEST_KERAS.split(".")[:2])
    newest_minor = int(NEWEST_KERAS.split(".")[1])
    assert re.search(rf'"keras>={re.escape(oldest)},<3\.{newest_minor + 1}"', text), (
        f"pyproject.toml should require keras>={oldest},<3.{newest_minor + 1}"
    )
    pins = (ROOT / "constraints.txt").read_text()
    assert f"keras=={NEWEST_KERAS}\n" in pins, "constraints.txt should pin the newest Keras"


@pytest.mark.slow
def test_layer_suite_on_the_oldest_keras():
    keras_dir = _keras_at(OLDEST_KERAS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(keras_dir), str(ROOT)])}
    env.pop("PYTEST_CURRENT_TEST", None)
    check = "import keras; print(keras.__version__)"
    version = children.run([sys.executable, "-c", check], 120, env=env, cwd=ROOT).stdout.strip()
    assert version == OLDEST_KERAS, f"the child imports Keras {version!r}, not {OLDEST_KERAS}"
    result = children.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        600,
        check=False,
        env=env,
        cwd=ROOT,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert "failed" not in summary and "skipped" not in summary, summary
