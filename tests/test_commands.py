"""What users type, run the way they run it: every command in its own process.

A separate process writes the ``.keras`` files (so nothing is registered or imported in the
process that reads them); each command then runs as the installed ``keras-gates`` console
script, and every way of importing Keras is tried in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests import children
from tests.reference import FP32_ATOL
from tests.serving_models import serve_process

pytestmark = pytest.mark.slow  # child processes or real servers: make test, not make check

KERAS_GATES = str(Path(sys.executable).with_name("keras-gates"))  # the script pip installed
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}

WRITER = """
import sys
import keras
import numpy as np
from keras_gates import GatedGRU, GatedGRUCell, GatedLSTM, GatedLSTMCell

folder = sys.argv[1]
keras.utils.set_random_seed(0)
x = keras.Input((None, 3), name="x")
h = GatedLSTM(6, return_sequences=True, use_peepholes=True)(x)
h = keras.layers.RNN([GatedLSTMCell(5), GatedGRUCell(4)], return_sequences=True)(h)
y = keras.layers.Dense(2, name="y")(GatedGRU(5)(h))
model = keras.Model(x, y)
samples = np.random.default_rng(0).random((4, 9, 3), dtype=np.float32)
model.save(f"{folder}/layers.keras")
np.save(f"{folder}/layers_out.npy", model.predict(samples, verbose=0))

# What the export commands take: gated layers only (one native node each).
x = keras.Input((None, 3), name="x")
y = keras.layers.Dense(2, name="y")(GatedGRU(5)(GatedLSTM(6, return_sequences=True)(x)))
model = keras.Model(x, y)
model.save(f"{folder}/model.keras")
np.save(f"{folder}/samples.npy", samples)
np.save(f"{folder}/model_out.npy", model.predict(samples, verbose=0))
"""

# Each route imports Keras differently, before or after keras_gates; `load` is what then loads.
ROUTES = {
    "import keras after": "import keras_gates\nimport keras\nload = keras.saving.load_model",
    "import keras before": "import keras\nimport keras_gates\nload = keras.saving.load_model",
    "import tensorflow": (
        "import keras_gates\nimport tensorflow as tf\nimport keras\nload = keras.saving.load_model"
    ),
    "tf.keras": "import keras_gates\nimport tensorflow as tf\nload = tf.keras.models.load_model",
    "find_spec probe": (
        "import importlib.util\nimport keras_gates\nassert importlib.util.find_spec('keras')\n"
        "import keras\nload = keras.saving.load_model"
    ),
}


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return children.run(args, timeout=600, cwd=cwd, env=ENV)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved")
    run(sys.executable, "-c", WRITER, str(folder))
    return folder


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_load_model_finds_the_layers_on_every_import_route(route, saved):
    reader = ROUTES[route] + textwrap.dedent(
        """
        import sys
        import numpy as np
        model = load(sys.argv[1] + "/layers.keras")
        kinds = sorted({type(layer).__name__ for layer in model.layers})
        got = model.predict(np.load(sys.argv[1] + "/samples.npy"), verbose=0)
        np.testing.assert_allclose(got, np.load(sys.argv[1] + "/layers_out.npy"), atol=1e-6)
        print(kinds)
        """
    )
    out = run(sys.executable, "-c", reader, str(saved)).stdout
    assert "'GatedGRU', 'GatedLSTM'" in out and "'RNN'" in out


def test_export_command(saved, tmp_path):
    model, samples = str(saved / "model.keras"), str(saved / "samples.npy")
    out = as_users_run("export", model, "-o", str(tmp_path / "m.onnx"), "--samples", samples)
    assert "max_abs_error" in out.stdout and "wrote" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if " full " in line]
    assert [r[2:4] for r in rows] == [["4", "9"]]  # validated on the 4 x 9 samples given
    got = _onnx_run(tmp_path / "m.onnx", np.load(saved / "samples.npy"))
    np.testing.assert_allclose(got, np.load(saved / "model_out.npy"), atol=FP32_ATOL)


def test_export_command_writes_a_triton_repository_into_a_new_folder(saved, tmp_path):
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "not" / "yet" / "there"
    (tmp_path / "classes.txt").write_text("low\nhigh\n")  # y's two classes
    npz = tmp_path / "samples.npz"
    np.savez(npz, x=np.load(saved / "samples.npy"))
    done = run(
        KERAS_GATES,
        "export",
        str(saved / "model.keras"),
        "-o",
        str(tmp_path / "s.onnx"),
        "--streaming",
        "--triton-repo",
        str(repo),
        "--name",
        "seq",
        "--labels",
        str(tmp_path / "classes.txt"),
        "--quantize",  # the int8 flag rides along: one process, an int8 streaming repository
        "int8",
        "--samples",  # real inputs by input name: y spans only 0.05 on them, so the int8
        str(npz),  # error (1e-3) is 2.1% of that range: the bound is raised as the error says
        "--int8-tolerance",
        "0.05",
    )
    config = text_format.Parse(
        (repo / "seq" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.HasField("sequence_batching")
    assert (repo / "seq" / "1" / "model.onnx").is_file()
    # --labels: in the model's metadata, and as the label file Triton's config names
    from keras_gates.labels import LABELS_KEY

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "s.onnx")).metadata_props}
    assert json.loads(props[LABELS_KEY]) == {"y": ["low", "high"]}
    assert {t.name: t.label_filename for t in config.output}["y"] == "labels.txt"
    assert (repo / "seq" / "labels.txt").read_text() == "low\nhigh\n"
    assert "int8_error" in done.stdout and "quantized int8" in done.stdout
    assert "LSTM, 8-bit W and R" in done.stdout  # 6 units: the int8 kernel would be slower
    rows = [line.split() for line in done.stdout.splitlines() if " full " in line]
    assert {(r[2], r[3]) for r in rows} == {("4", "9")}  # the samples given
    written = onnx.load(str(repo / "seq" / "1" / "model.onnx"))
    meta = {p.key: p.value for p in written.metadata_props}
    assert json.loads(meta["keras_gates.quantization"])["mode"] == "int8"


def test_inspect_command(saved, tmp_path):
    report = tmp_path / "report"
    model, samples = str(saved / "model.keras"), str(saved / "samples.npy")
    x = np.load(samples)
    labels = {"high_x0": x[..., 0] > 0.5, "x1": x[..., 1].astype("float64")}
    np.savez(tmp_path / "labels.npz", **labels)
    out = as_users_run(
        "inspect", model, "--input", samples, "--labels", str(tmp_path / "labels.npz"),
        "--out", str(report),
    )  # fmt: skip
    assert "forget" in out.stdout and "update" in out.stdout
    summary = json.loads((report / "summary.json").read_text())
    assert sorted(layer["class"] for layer in summary["layers"].values()) == [
        "GatedGRU",
        "GatedLSTM",
    ]
    assert (report / "index.html").is_file()
    concepts = summary["concepts"]
    assert {name: c["metric"] for name, c in concepts.items()} == {
        "high_x0": "auc",
        "x1": "pearson",
    }
    assert concepts["high_x0"]["positives"] == int(labels["high_x0"].sum())
    for name, concept in concepts.items():
        first = concept["top"][0]
        assert concept["steps"] == x.shape[0] * x.shape[1]
        scores = concept["scores"][first["layer"]][first["signal"]]
        assert scores[first["unit"]] == first["score"]  # the top row is one of the scores
        center = 0.5 if concept["metric"] == "auc" else 0.0
        every = [v for per in concept["scores"].values() for s in per.values() for v in s]
        assert abs(first["score"] - center) == max(abs(v - center) for v in every)
        assert name in out.stdout
    assert "<h2>Concepts</h2>" in (report / "index.html").read_text()


NATIVE_LOG = ("E0000", "W0000", "I0000", "WARNING: All log messages before absl")


def as_users_run(command: str, *argv: str):
    """``keras-gates COMMAND ARGV`` with no TF_CPP_MIN_LOG_LEVEL, as a user's shell has it:
    without it (or --verbose) TensorFlow's C++ log stays out of what the command prints."""
    env = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = children.run([KERAS_GATES, command, *argv], timeout=600, env=env)
    printed = (done.stdout + done.stderr).splitlines()
    assert not [line for line in printed if line.startswith(NATIVE_LOG) or "cuInit" in line]
    assert "AutoGraph could not transform" not in done.stderr
    return done


def test_serve_command_answers_a_request(saved, tmp_path):
    run(KERAS_GATES, "export", str(saved / "model.keras"), "-o", str(tmp_path / "m.onnx"))
    x = np.load(saved / "samples.npy")
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()},
            {"name": "lengths", "datatype": "INT32", "shape": [len(x)], "data": [9] * len(x)},
        ]
    }
    with serve_process(tmp_path / "m.onnx", program=[KERAS_GATES]) as (url, _):
        request = urllib.request.Request(
            f"{url}/v2/models/m/infer", json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    (y,) = [o for o in answer["outputs"] if o["name"] == "y"]
    got = np.asarray(y["data"], np.float32).reshape(y["shape"])
    np.testing.assert_allclose(got, np.load(saved / "model_out.npy"), atol=FP32_ATOL)


def _onnx_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"x": x, "lengths": np.full(len(x), x.shape[1], np.int32)}
    return session.run(["y"], feeds)[0]
