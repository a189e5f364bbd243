"""Packaging as users meet it: the wheel, installed into fresh virtual environments, each extra
alone, and the commands of that extra run from the environment's own scripts.

One wheel is built for all. Installs use the installers' caches (pip's is warm after ``make
test``'s own set-up) and the tested versions (``constraints.txt``). A dependency missing from an
extra fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests import children
from tests.serving_models import serve_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
ENV.pop("KERAS_BACKEND", None)  # what a user's shell has: Keras' own default
ENV.pop("PYTHONPATH", None)

TRAIN = """
import keras, numpy as np
from keras_gates import GatedGRU, GatedLSTM
model = keras.Sequential([keras.Input((None, 3)), GatedLSTM(4, return_sequences=True),
                          GatedGRU(3), keras.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
before = model.layers[0].get_gate_weights()["forget"]["kernel"].copy()
history = model.fit(np.random.rand(8, 7, 3), np.random.rand(8, 1), epochs=1, verbose=0)
assert np.isfinite(history.history["loss"][0])
assert not np.allclose(before, model.layers[0].get_gate_weights()["forget"]["kernel"])
model.save("model.keras")
np.save("samples.npy", np.random.rand(4, 7, 3).astype("float32"))
print("trained one step")
"""


def run(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    return children.run([str(a) for a in args], timeout=900, check=check, cwd=cwd, env=ENV)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT)
    (built,) = out.glob("keras_gates-*.whl")
    return built


EXTRAS = ("", "tensorflow,inspect", "export", "serve")


@pytest.fixture(scope="module")
def environments(tmp_path_factory, wheel):
    """``extra -> folder`` of a fresh virtual environment (``python -m venv``) holding the wheel
    with that extra.

    The base environment is installed by pip itself, as the README tells users. The others by
    uv's pip interface, which reads the same wheel metadata (requirements per extra, console
    scripts) and installs an environment with TensorFlow from its cache in about a second where
    pip takes 35 s; they are installed two at a time.
    """

    def make(extra: str) -> Path:
        folder = tmp_path_factory.mktemp(f"venv-{extra.replace(',', '-') or 'base'}")
        run(sys.executable, "-m", "venv", folder / "env")
        python = folder / "env" / "bin" / "python"
        spec = f"{wheel}[{extra}]" if extra else str(wheel)
        if extra:
            installer = [sys.executable, "-m", "uv", "pip", "install", "--python", python]
        else:
            installer = [python, "-m", "pip", "install", "--no-compile"]
            installer.append("--disable-pip-version-check")
        run(*installer, "-q", spec, "-c", ROOT / "constraints.txt")
        return folder

    with ThreadPoolExecutor(max_workers=2) as pool:
        made = dict(zip(EXTRAS, pool.map(make, EXTRAS), strict=True))
    return made.__getitem__


def bin_of(folder: Path, name: str) -> Path:
    return folder / "env" / "bin" / name


def test_base_install_imports_and_names_the_missing_backend(environments):
    folder = environments("")
    python = bin_of(folder, "python")
    out = run(python, "-c", "import keras_gates; print(keras_gates.__version__)").stdout
    assert out.strip()
    done = run(python, "-c", "from keras_gates import GatedLSTM", check=False)
    assert done.returncode != 0
    assert "keras-gates[tensorflow]" in done.stderr, done.stderr
    assert run(python, "-m", "pip", "show", "tensorflow", check=False).returncode != 0


def test_tensorflow_and_inspect_extras_train_and_inspect(environments):
    folder = environments("tensorflow,inspect")
    assert "trained one step" in run(bin_of(folder, "python"), "-c", TRAIN, cwd=folder).stdout
    gates = bin_of(folder, "keras-gates")
    out = run(gates, "inspect", "model.keras", "--input", "samples.npy", "--out", "r", cwd=folder)
    assert "forget" in out.stdout and (folder / "r" / "index.html").is_file()
    run(bin_of(folder, "python"), "-c", EXPLORER_FILES, cwd=folder)


# What `keras-gates explore` serves, from the inspect extra (tests/test_explorer.py runs it).
EXPLORER_FILES = """
from importlib.resources import files
import fastapi, uvicorn
static = files("keras_gates.inspect") / "static"
assert (static / "explorer.html").is_file() and (static / "explorer.js").is_file()
assert (files("plotly") / "package_data" / "plotly.min.js").is_file()
"""


def test_export_extra_exports_with_a_triton_repository(environments):
    folder = environments("export")
    run(bin_of(folder, "python"), "-c", TRAIN, cwd=folder)
    gates = bin_of(folder, "keras-gates")
    out = run(
        gates, "export", "model.keras", "-o", "m.onnx", "--triton-repo", "new/repo", cwd=folder
    )
    assert "passed" in out.stdout
    assert (folder / "new" / "repo" / "m" / "config.pbtxt").is_file()


def test_serve_extra_serves_without_tensorflow(environments):
    exported = environments("export") / "m.onnx"
    assert exported.is_file(), "the export test above writes m.onnx (the module runs in order)"
    folder = environments("serve")
    python = bin_of(folder, "python")
    for backend in ("tensorflow", "jax", "torch"):
        assert run(python, "-m", "pip", "show", backend, check=False).returncode != 0, backend
    x = np.random.default_rng(0).random((2, 7, 3), dtype=np.float32)
    body = {
        "inputs": [
            {
                "name": "input_layer",
                "datatype": "FP32",
                "shape": [2, 7, 3],
                "data": x.ravel().tolist(),
            },
            {"name": "lengths", "datatype": "INT32", "shape": [2], "data": [7, 4]},
        ]
    }
    program = [str(bin_of(folder, "keras-gates"))]
    with serve_process(exported, cwd=folder, env=ENV, program=program) as (url, _):
        with urllib.request.urlopen(f"{url}/v2/models/m", timeout=10) as response:
            metadata = json.loads(response.read())
        body["inputs"][0]["name"] = metadata["inputs"][0]["name"]
        request = urllib.request.Request(
            f"{url}/v2/models/m/infer", json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    (output,) = answer["outputs"]
    assert output["shape"] == [2, 1] and np.isfinite(output["data"]).all()
