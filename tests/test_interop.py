"""keras_gates.interop: ONNX files of tf2onnx and keras-gates read back node by node, hand-built
nodes against onnxruntime, the refusals, ``keras-gates inspect`` on an ``.onnx`` file, and the
PyTorch checks of tests/interop_checks.py on TensorFlow (tests/test_backends.py runs that file
on JAX and PyTorch)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from keras_gates import gates
from keras_gates.cli import main
from keras_gates.interop import OnnxImportError, from_onnx
from tests import children, torch_cache
from tests.interop_checks import FEATURES, STEPS, UNITS, apply, batch, check_onnx_files
from tests.interop_files import write_onnx_files
from tests.reference import FP32_ATOL

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("interop")
    write_onnx_files(folder)
    return folder


def test_onnx_files_on_tensorflow(files):
    check_onnx_files(files)


# --------------------------------------------------------------- hand-built nodes, onnxruntime
def _node_model(op: str, inputs: dict, attrs: dict, name: str = "my_node"):
    """A one-node model: X ``(time, batch, features)`` -> Y. ``inputs``: ``{input: array}`` in
    the operator's order (``None``: absent; a string: a graph input of that name)."""
    stored = {k: v for k, v in inputs.items() if v is not None and not isinstance(v, str)}
    names = ["X", *(k if v is not None else "" for k, v in inputs.items())]
    node = helper.make_node(op, names, ["Y"], name=name, **attrs)
    graph_inputs = ["X", *(k for k, v in inputs.items() if isinstance(v, str))]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 3) for n in graph_inputs],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 4)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in stored.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weights(op: str, directions: int, peepholes: bool = False) -> dict:
    """W, R, B (and P after three absent inputs) of a node, in the operator's input order."""
    gates = 4 if op == "LSTM" else 3
    rng = np.random.default_rng(7)
    shapes = {
        "W": (directions, gates * UNITS, FEATURES),
        "R": (directions, gates * UNITS, UNITS),
        "B": (directions, 2 * gates * UNITS),
    }
    weights = {name: rng.uniform(-0.5, 0.5, shape) for name, shape in shapes.items()}
    if peepholes:
        weights.update(sequence_lens=None, initial_h=None, initial_c=None)
        weights["P"] = rng.uniform(-0.5, 0.5, (directions, 3 * UNITS))
    return weights


def _from_onnx(model, folder: Path) -> keras.layers.Layer:
    onnx.save(model, folder / "node.onnx")
    (layer,) = from_onnx(folder / "node.onnx").values()
    return layer


def _onnxruntime(model, x: np.ndarray) -> np.ndarray:
    """The node's Y ``(time, directions, batch, units)`` as ``(batch, time, directions*units)``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString())
    y = session.run(None, {"X": x.transpose(1, 0, 2)})[0]
    return y.transpose(2, 0, 1, 3).reshape(x.shape[0], STEPS, -1)


NODES = {  # id -> (op, attributes, peepholes); every node also has hidden_size
    "lstm-reverse-peepholes-hard_sigmoid-softsign": ("LSTM", {
        "direction": "reverse", "activations": ["HardSigmoid", "Softsign", "Softsign"],
        "activation_alpha": [1 / 6], "activation_beta": [0.5],
    }, True),
    "lstm-bidirectional-input_forget": ("LSTM", {
        "direction": "bidirectional", "input_forget": 1,
    }, False),
    "gru-bidirectional": ("GRU", {"direction": "bidirectional"}, False),
    "gru-linear_before_reset-relu": ("GRU", {
        "linear_before_reset": 1, "activations": ["Sigmoid", "Relu"],
    }, False),
}  # fmt: skip


@pytest.mark.parametrize("case", NODES)
def test_hand_built_node_against_onnxruntime(case, tmp_path):
    op, attrs, peepholes = NODES[case]
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    model = _node_model(op, _weights(op, directions, peepholes), {"hidden_size": UNITS, **attrs})
    onnx.checker.check_model(model)
    layer = _from_onnx(model, tmp_path)
    x = batch(4)[0] + 0.5  # a full batch: onnxruntime is given no sequence_lens
    got = apply([layer], x)
    if attrs.get("direction") == "reverse":  # a Keras layer running backwards: last step first
        got = got[:, ::-1]
    np.testing.assert_allclose(got, _onnxruntime(model, x), atol=FP32_ATOL)
    if peepholes:
        assert layer.use_peepholes and layer.get_gate_weights()["input"]["peephole"].any()


REFUSED = {  # id -> (op, attributes, changed inputs, what the message names)
    "clip": ("LSTM", {"clip": 3.0}, {}, "attribute `clip`=3.0"),
    "onnx-default-hard-sigmoid": (
        "GRU", {"activations": ["HardSigmoid", "Tanh"]}, {}, "'HardSigmoid' with these parameters"
    ),
    "unknown-activation": (
        "GRU", {"activations": ["Sigmoid", "ScaledTanh"]}, {}, "attribute `activations`"
    ),
    "g-and-h-differ": (
        "LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"]}, {}, "g and the output activation h"
    ),
    "weights-computed-at-run-time": ("GRU", {}, {"W": "W"}, "input W ('W') is computed at run"),
    "stored-initial-state": (
        "GRU", {}, {"sequence_lens": None, "initial_h": np.ones((1, 1, UNITS))}, "initial_h"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED)
def test_refused_nodes_name_node_and_attribute(case, tmp_path):
    op, attrs, changed, named = REFUSED[case]
    model = _node_model(op, {**_weights(op, 1), **changed}, {"hidden_size": UNITS, **attrs})
    with pytest.raises(OnnxImportError) as raised:
        _from_onnx(model, tmp_path)
    assert "Node 'my_node'" in str(raised.value) and named in str(raised.value), raised.value


def test_file_without_recurrent_nodes_is_refused(tmp_path):
    node = helper.make_node("Relu", ["X"], ["Y"])
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "g", [value("X", TensorProto.FLOAT, None)], [value("Y", TensorProto.FLOAT, None)]
    )
    onnx.save(helper.make_model(graph), tmp_path / "relu.onnx")
    with pytest.raises(OnnxImportError, match="has no LSTM or GRU node .*Relu"):
        from_onnx(tmp_path / "relu.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        from_onnx(tmp_path / "missing.onnx")


def test_readme_gate_order_table_is_gates_py():
    """The README's table lists every fused layout of keras_gates/gates.py, as it is there."""
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \([^)]*\) \| ([a-z, ]+) \|$", readme, flags=re.M)
    layouts = {
        name
        for name, value in vars(gates).items()
        if name.isupper() and isinstance(value, tuple) and name != "LSTM_COMPUTE"
    }
    assert sorted(name for name, _ in rows) == sorted(layouts)
    for name, order in rows:
        assert tuple(order.split(", ")) == getattr(gates, name), name


# ------------------------------------------------------------------------------ inspect
def test_inspect_command_reads_the_recurrent_nodes_of_an_onnx_file(files, tmp_path, capsys):
    x, _ = batch()
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "report"
    code = main(
        ["inspect", str(files / "keras_gates.onnx"), "--input", str(tmp_path / "x.npy")]
        + ["--mask-value", "0", "--out", str(out), "--no-horizon"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "recurrent nodes of" in printed and "coupled, backwards" in printed, printed
    # the GRU running backwards hands Keras' reversed sequence on (a ReverseSequence node)
    assert "node 'bi' is not inspected" in printed, printed
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["layers"]) == ["coupled", "backwards"]
    assert summary["layers"]["coupled"]["gates"] == ["input", "forget", "candidate", "output"]


# --------------------------------------------------------------------- PyTorch on TensorFlow
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torch_checks_on_tensorflow():
    """tests/interop_checks.py's PyTorch checks in a child on TensorFlow, torch on the path
    (tests/test_backends.py runs the whole file on JAX and PyTorch; this module reads the ONNX
    files on TensorFlow in-process, above)."""
    if not torch_cache.importable():
        pytest.skip(torch_cache.absent_reason())
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PYTEST_CURRENT_TEST", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "torch"]
    result = children.run(
        [*command, "tests/interop_checks.py"], 540, cwd=ROOT, env=torch_cache.pythonpath(env)
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
