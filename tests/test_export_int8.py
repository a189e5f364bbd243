"""int8 export (``to_onnx(..., quantize="int8")``): structure, size, accuracy against Keras and
the float32 export on full and padded batches, refusals, Predictor and the server on the file.

Three witnesses: Keras (each padded row run alone), the float32 ONNX file and the int8 one.
"""

from __future__ import annotations

import json

import httpx
import keras
import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.export import ExportError, Predictor, ValidationError, to_onnx, write_triton_repo
from keras_gates.export.lstm_int8 import float_from_batch
from keras_gates.serving import ServerConfig, create_app
from tests.export_helpers import keras_row, padded, randomize
from tests.reference import EXPORT_ATOL
from tests.serving_models import ServerThread

# int8 weights (one scale per gate row) and, for the Dense head (and LSTMs from 64 units at small
# batches), inputs quantized per tensor at run time: measured 0.2-0.8% of the output range at 16
# units over <= 13 steps; the exporter's default bound is 2% of the range.
INT8_RTOL = 0.02
LAYERS = {"lstm": GatedLSTM, "gru": GatedGRU}
LENGTHS = [13, 9, 4]


def _model(kind: str) -> keras.Model:
    keras.utils.set_random_seed(1)
    x = keras.Input((None, 4), name="x")
    y = keras.layers.Dense(2, name="dense")(LAYERS[kind](16, name=kind)(x))
    return randomize(keras.Model(x, y), seed=3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``{kind: (model, float32 path, int8 path, int8 ExportResult, printed table)}``."""
    folder = tmp_path_factory.mktemp("int8")
    found = {}
    for kind in LAYERS:
        model = _model(kind)
        printed: list[str] = []
        f32, i8 = folder / f"{kind}32.onnx", folder / f"{kind}8.onnx"
        to_onnx(model, f32, validate=False, print_fn=None)
        result = to_onnx(model, i8, quantize="int8", print_fn=printed.append)
        found[kind] = (model, f32, i8, result, "\n".join(printed))
    return found


def _weights(path, dtype: int) -> list[np.ndarray]:
    """The weight matrices of ``dtype``: initializers with two axes or more (not biases, zero
    points)."""
    inits = onnx.load(str(path)).graph.initializer
    kept = [i for i in inits if i.data_type == dtype and not i.name.endswith((".B", "zero_point"))]
    return [a for a in map(onnx.numpy_helper.to_array, kept) if a.ndim >= 2]


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_int8_nodes_size_and_metadata(exported, kind):
    model, f32, i8, result, _ = exported[kind]
    counts = result.op_counts
    assert counts.get("DynamicQuantizeMatMul") == 1 and counts.get("MatMul", 0) == 0
    # 16 units: the int8 kernel would be slower, so the node reads W and R from 8-bit initializers
    op = kind.upper()
    assert counts.get(op) == 1 and result.quantization["float_from_batch"] is None
    graph = onnx.load(str(i8)).graph
    (node,) = [n for n in graph.node if n.op_type == op]
    inits = {i.name: i for i in graph.initializer}
    assert node.input[1] not in inits and node.input[2] not in inits
    stored = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert {f"{kind}.W.int8", f"{kind}.R.int8"} <= stored
    # every weight matrix (W, R, the Dense kernel) is stored in 1 byte a value instead of 4
    floats, bytes_ = _weights(f32, onnx.TensorProto.FLOAT), _weights(i8, onnx.TensorProto.INT8)
    assert sorted(a.size for a in bytes_) == sorted(a.size for a in floats)
    left = _weights(i8, onnx.TensorProto.FLOAT)  # only vectors are left: one scale per row
    assert all(sum(d > 1 for d in a.shape) <= 1 for a in left)
    meta = {p.key: p.value for p in onnx.load(str(i8)).metadata_props}
    quantization = json.loads(meta["keras_gates.quantization"])
    assert quantization["mode"] == "int8" and quantization["bytes"] < quantization["float32_bytes"]
    float_meta = {p.key: p.value for p in onnx.load(str(f32)).metadata_props}
    assert json.loads(float_meta["keras_gates.quantization"]) == {"mode": None}
    validation = json.loads(meta["keras_gates.validation"])
    assert validation["passed"] and validation["rtol"] == INT8_RTOL
    assert max(validation["float32"]["max_abs_error"].values()) <= EXPORT_ATOL


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_int8_matches_keras_and_float32_on_full_and_padded_batches(exported, kind):
    model, f32, i8, result, printed = exported[kind]
    header = printed.splitlines()[0]
    assert "float32_error" in header and "int8_error" in header
    assert "padded x [13, 12, 9, 8]" in printed and "int8 0.02 x each output's range" in printed
    rng = np.random.default_rng(5)
    x = padded(rng, len(LENGTHS), max(LENGTHS), 4, LENGTHS)
    lengths = np.array(LENGTHS, np.int32)
    wants = np.concatenate([keras_row(model, x[r : r + 1, :n]) for r, n in enumerate(LENGTHS)])
    full = keras_row(model, x)
    scale = float(max(np.ptp(wants), np.ptp(full)))
    float_run, int8_run = Predictor(f32, device="cpu"), Predictor(i8, device="cpu")
    for given, want in ((lengths, wants), (None, full)):
        got32 = float_run.predict(x, lengths=given)["dense"]
        got8 = int8_run.predict(x, lengths=given)["dense"]
        np.testing.assert_allclose(got32, want, atol=EXPORT_ATOL)
        np.testing.assert_allclose(got8, want, atol=INT8_RTOL * scale, rtol=0)
        np.testing.assert_allclose(got8, got32, atol=INT8_RTOL * scale, rtol=0)
        assert np.abs(got8 - got32).max() > 0  # the int8 file is not the float32 one


def test_int8_lstm_branches_by_batch_and_both_are_validated(tmp_path):
    """From 64 units: below ``float_from_batch(units)`` rows ``DynamicQuantizeLSTM`` (its input
    quantized per batch, so a row's answer moves with its batch mates), from there the float32
    ``LSTM`` on the same 8-bit weights (a row's answer does not move). Both within the bound of
    each padded row run alone in Keras, with inf and nan in the padding."""
    keras.utils.set_random_seed(6)
    x = keras.Input((None, 4), name="x")
    model = keras.Model(x, GatedLSTM(128, name="lstm")(x))  # Keras initializers: not chaotic
    path = tmp_path / "lstm8.onnx"
    result = to_onnx(model, path, quantize="int8", print_fn=None)
    threshold = float_from_batch(128)
    assert threshold == 4 and result.quantization["float_from_batch"] == threshold
    assert {r.batch for r in result.validation.rows} >= {1, threshold}  # both branches
    (node,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == "If"]
    branches = {a.name: [n.op_type for n in a.g.node] for a in node.attribute}
    assert branches["then_branch"].count("DynamicQuantizeLSTM") == 1
    assert branches["else_branch"].count("LSTM") == 1
    rng = np.random.default_rng(11)
    predictor = Predictor(path, device="cpu")
    for batch in (threshold - 1, threshold):
        lengths = np.array([13 - 3 * r for r in range(batch)], np.int32)
        x = padded(rng, batch, 13, 4, lengths)
        for r, n in enumerate(lengths[1:], 1):
            x[r, n:] = [np.inf, -np.inf, np.nan][r - 1]
        want = np.concatenate([keras_row(model, x[r : r + 1, :n]) for r, n in enumerate(lengths)])
        (got,) = predictor.predict(x, lengths=lengths).values()
        np.testing.assert_allclose(got, want, atol=INT8_RTOL * float(np.ptp(want)), rtol=0)
        mates = x.copy()  # the same rows after the first, whose values grow 8x
        mates[0, : lengths[0]] *= 8
        (moved,) = predictor.predict(mates, lengths=lengths).values()
        if batch < threshold:
            assert np.abs(moved[1:] - got[1:]).max() > 0  # quantized with its batch mates
        else:
            np.testing.assert_array_equal(moved[1:], got[1:])  # float32: each row alone


@pytest.mark.parametrize(
    "options, wrong",
    [
        ({"quantize": "int4"}, "`quantize`"),
        ({"quantize": "INT8"}, "`quantize`"),
        ({"quantize": True}, "`quantize`"),
        ({"quantize": "int8", "int8_tolerance": 0}, "`int8_tolerance`"),
        ({"quantize": "int8", "int8_tolerance": "2%"}, "`int8_tolerance`"),
    ],
)
def test_bad_quantize_values_are_refused_and_write_nothing(exported, tmp_path, options, wrong):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=wrong) as raised:
        to_onnx(exported["gru"][0], path, print_fn=None, **options)
    assert "int8" in str(raised.value) and not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_int8_beyond_its_tolerance_fails_validation_and_writes_nothing(exported, tmp_path):
    path = tmp_path / "tight.onnx"
    with pytest.raises(ValidationError, match="int8_tolerance=1e-07") as raised:
        to_onnx(exported["lstm"][0], path, quantize="int8", int8_tolerance=1e-7, print_fn=None)
    assert "int8_error" in str(raised.value) and not path.exists()
    assert "raise int8_tolerance (--int8-tolerance)" in str(raised.value)  # what to do
    assert list(tmp_path.iterdir()) == []


def test_server_and_triton_repository_run_the_int8_file(exported, tmp_path):
    for kind in LAYERS:
        folder = write_triton_repo(exported[kind][2], tmp_path, f"{kind}8")
        config = text_format.Parse(
            (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert config.backend == "onnxruntime" and [i.name for i in config.input] == [
            "x",
            "lengths",
        ]
    rng = np.random.default_rng(8)
    x = padded(rng, len(LENGTHS), max(LENGTHS), 4, LENGTHS)
    lengths = np.array(LENGTHS, np.int32)
    with ServerThread(create_app(tmp_path, ServerConfig())) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for kind in LAYERS:
                model, _, path, _, _ = exported[kind]
                local = Predictor(path, device="cpu").predict(x, lengths=lengths)["dense"]
                rows = [keras_row(model, x[r : r + 1, :n]) for r, n in enumerate(LENGTHS)]
                want = np.concatenate(rows)
                bound = INT8_RTOL * float(np.ptp(want))
                body = {
                    "inputs": [
                        {
                            "name": "x",
                            "datatype": "FP32",
                            "shape": list(x.shape),
                            "data": x.ravel().tolist(),
                        },
                        {
                            "name": "lengths",
                            "datatype": "INT32",
                            "shape": [len(LENGTHS)],
                            "data": LENGTHS,
                        },
                    ]
                }
                answer = client.post(f"/v2/models/{kind}8/infer", json=body)
                assert answer.status_code == 200, answer.text
                (out,) = answer.json()["outputs"]
                got = np.asarray(out["data"], np.float32).reshape(out["shape"])
                # activations are quantized per batch: the server may group rows otherwise
                np.testing.assert_allclose(got, want, atol=bound, rtol=0)
                np.testing.assert_allclose(got, local, atol=bound, rtol=0)


def test_gru_loop_design_keeps_padding_and_state_exact(monkeypatch, tmp_path):
    """The Loop of int8 steps (wide GRUs; forced here at 16 units, below 4 rows): per-step
    outputs zero past each length, streaming state in and out; from 4 rows the float32 GRU on
    the same 8-bit weights."""
    from keras_gates.export import quantize

    monkeypatch.setattr(quantize, "LOOP_MIN_UNITS", 0)
    monkeypatch.setattr(quantize, "gru_float_from_batch", lambda units: 4)
    keras.utils.set_random_seed(2)
    x = keras.Input((None, 4), name="x")
    y = keras.layers.Dense(2, name="dense")(GatedGRU(16, return_sequences=True, name="gru")(x))
    model = randomize(keras.Model(x, y), seed=4)
    f32, i8 = tmp_path / "loop32.onnx", tmp_path / "loop8.onnx"
    to_onnx(model, f32, validate=False, print_fn=None)
    result = to_onnx(model, i8, quantize="int8", streaming=True, print_fn=None)
    assert result.op_counts.get("If") == 1 and result.op_counts.get("GRU", 0) == 0
    (node,) = [n for n in onnx.load(str(i8)).graph.node if n.op_type == "If"]
    branches = {a.name: [n.op_type for n in a.g.node] for a in node.attribute}
    assert "Loop" in branches["then_branch"] and "GRU" in branches["else_branch"]
    assert any(r.case == "2 chunks" for r in result.validation.rows)  # state in, state out
    assert {r.batch for r in result.validation.rows} >= {1, 4}  # both branches validated
    rng = np.random.default_rng(9)
    predictor8, predictor32 = Predictor(i8, device="cpu"), Predictor(f32, device="cpu")
    for lengths in (LENGTHS, [*LENGTHS, 6]):  # 3 rows: the Loop; 4 rows: float32
        x = padded(rng, len(lengths), max(lengths), 4, lengths)
        got8 = predictor8.predict(x, lengths=lengths)["dense"]
        got32 = predictor32.predict(x, lengths=lengths)["dense"]
        for r, n in enumerate(lengths):
            want = keras_row(model, x[r : r + 1, :n])[0]
            np.testing.assert_allclose(got8[r, :n], want, atol=INT8_RTOL * float(np.ptp(want)))
            np.testing.assert_allclose(got8[r, n:], got32[r, n:], atol=1e-6)  # Dense of zeros


def test_int8_lstm_file_is_refused_by_from_onnx_with_what_to_inspect(exported):
    from keras_gates.interop import OnnxImportError, from_onnx

    with pytest.raises(OnnxImportError, match="is an int8 export.*float32 export or the .keras"):
        from_onnx(exported["lstm"][2])


def test_user_samples_by_name_and_wrong_ones_are_refused_naming_the_input(exported, tmp_path):
    model = exported["gru"][0]
    x = np.random.default_rng(4).normal(size=(2, 7, 4)).astype(np.float32)
    result = to_onnx(model, tmp_path / "ok.onnx", samples=[{"x": x}], print_fn=None)
    assert [(r.batch, r.time) for r in result.validation.rows if not r.padded] == [(2, 7)]
    wrong = [
        ([{"y": x}], r"names the inputs \['y'\], expected exactly the model's inputs \['x'\]"),
        ([x[:, :, :3]], r"input 'x' has shape \(2, 7, 3\), expected \(batch, any, 4\)"),
        ([x[0]], r"input 'x' has shape \(7, 4\), expected \(batch, any, 4\)"),
        ([[x, x]], r"has 2 arrays, expected 1: one per model input \['x'\]"),
    ]
    for samples, message in wrong:
        with pytest.raises(ExportError, match=message):
            to_onnx(model, tmp_path / "bad.onnx", samples=samples, print_fn=None)
        assert not (tmp_path / "bad.onnx").exists()


def test_int8_validation_runs_both_lstm_branches_on_user_samples(tmp_path):
    """A user batch of 8 rows (all float32 branch at 128 units) gets a 1-row sample too."""
    keras.utils.set_random_seed(7)
    x = keras.Input((None, 4), name="x")
    model = keras.Model(x, GatedLSTM(128, name="lstm")(x))
    batch = np.random.default_rng(5).normal(size=(8, 6, 4)).astype(np.float32)
    result = to_onnx(model, tmp_path / "l.onnx", quantize="int8", samples=[batch], print_fn=None)
    full = sorted((r.batch, r.time) for r in result.validation.rows if not r.padded)
    assert full == [(1, 6), (8, 6)] and float_from_batch(128) == 4
