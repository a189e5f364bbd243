"""Issue 14: a padded row gives what the row gives alone in Keras, or the export says it cannot.

The issue's cases 2 to 5 (case 1, ``keras.layers.RNN`` over cells, is in test_export_cells.py),
each exported once (module fixture) and compared row by row on padded batches with garbage in the
padding: against Keras on each row alone, and against the numpy reference of the gated equations
(``tests/reference.py``). Also: several sequence inputs through Predictor, the server and the
Triton repository, and the inputs the export refuses to pad.
"""

from __future__ import annotations

import json
import re

import httpx
import keras
import numpy as np
import onnx
import pytest

from keras_gates import GatedGRU, GatedLSTM
from keras_gates.export import ExportError, Predictor, read_signature, to_onnx, write_triton_repo
from keras_gates.serving import ServerConfig, create_app
from tests import reference
from tests.export_helpers import dense, keras_row, padded, randomize
from tests.serving_models import ServerThread

ATOL = reference.FP32_ATOL
L = keras.layers


def encoder_decoder():
    enc, dec = keras.Input((None, 6), name="enc"), keras.Input((None, 5), name="dec")
    _, h, c = GatedLSTM(16, return_state=True, name="encoder")(enc)
    y = GatedLSTM(16, return_sequences=True, name="decoder")(dec, initial_state=[h, c])
    return keras.Model([enc, dec], L.Dense(5, name="dense")(y))


def fixed_time():
    inp = keras.Input((20, 4), name="x")
    return keras.Model(inp, L.Dense(2, name="dense")(GatedGRU(8, name="gru")(inp)))


def pooled():
    inp = keras.Input((None, 4), name="x")
    x = L.MaxPooling1D(2, name="pool")(inp)
    return keras.Model(inp, L.Dense(2, name="dense")(GatedGRU(8, name="gru")(x)))


def tokens():
    x = keras.Input((None,), dtype="int32", name="tok")
    y = GatedLSTM(8)(L.Embedding(20, 4, mask_zero=True)(x))
    return keras.Model(x, L.Dense(2, name="dense")(y))


MODELS = {
    "tokens": tokens,
    "encdec": encoder_decoder,
    "fixed": fixed_time,
    "pooled": pooled,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("padding")
    out = {}
    for name, build in MODELS.items():
        model = randomize(build())
        printed = []
        result = to_onnx(model, folder / f"{name}.onnx", print_fn=printed.append)
        out[name] = (model, result, folder / f"{name}.onnx", "\n".join(printed))
    return out


def test_encoder_decoder_has_one_lengths_input_per_sequence(exported):
    model, result, path, _ = exported["encdec"]
    signature = read_signature(path)
    assert [t.name for t in signature.inputs_with("lengths")] == ["enc_lengths", "dec_lengths"]
    assert signature.lengths_for("enc") == "enc_lengths"
    assert signature.lengths_for("dec") == "dec_lengths"
    predictor = Predictor(path, device="cpu")
    rng = np.random.default_rng(2)
    enc, dec = (rng.random((3, 7, 6)).astype("float32"), rng.random((3, 29, 5)).astype("float32"))
    got = predictor.predict([enc, dec])["dense"]  # the repro: defaults per input
    np.testing.assert_allclose(got, keras_row(model, enc, dec), atol=ATOL, rtol=0)

    enc_len, dec_len = np.array([7, 3, 5], np.int32), np.array([12, 29, 4], np.int32)
    enc, dec = padded(rng, 3, 7, 6, enc_len), padded(rng, 3, 29, 5, dec_len)
    got = predictor.predict([enc, dec], lengths={"enc": enc_len, "dec_lengths": dec_len})["dense"]
    weights = {n: model.get_layer(n).get_gate_weights() for n in ("encoder", "decoder")}
    for row in range(3):
        e, d = enc[row : row + 1, : enc_len[row]], dec[row : row + 1, : dec_len[row]]
        want = keras_row(model, e, d)[0]
        np.testing.assert_allclose(got[row, : dec_len[row]], want, atol=ATOL, rtol=0)
        _, h, c = reference.lstm(e.astype("float64"), weights["encoder"])
        ys, _, _ = reference.lstm(d.astype("float64"), weights["decoder"], state=(h, c))
        np.testing.assert_allclose(got[row, : dec_len[row]], dense(model, ys)[0], atol=ATOL)
    with pytest.raises(ValueError, match="dict keyed by lengths input"):
        predictor.predict([enc, dec], lengths=enc_len)


def test_fixed_time_axis_exports_and_refuses_padding(exported):
    model, result, path, printed = exported["fixed"]
    assert result.validation.passed
    assert {(r.batch, r.time) for r in result.validation.rows if not r.padded} == {(1, 20), (3, 20)}
    assert "input 'x' cannot be padded: its time axis is fixed at 20" in printed
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    padding = json.loads(props["keras_gates.padding"])
    assert padding["x"]["padding"] == "refused" and "fixed at 20" in padding["x"]["reason"]
    predictor = Predictor(path, device="cpu")
    x = np.random.default_rng(3).normal(size=(2, 20, 4)).astype("float32")
    np.testing.assert_allclose(predictor.predict(x)["dense"], keras_row(model, x), atol=ATOL)
    with pytest.raises(ValueError, match=r"cannot pad 'x': its time axis is fixed at 20"):
        predictor.predict(x, lengths=[20, 12])


def test_pooling_rescales_lengths(exported):
    model, result, path, _ = exported["pooled"]
    assert not result.signature.padding_refusals
    rng = np.random.default_rng(5)
    lengths = np.array([29, 12, 7, 2], np.int32)
    x = padded(rng, 4, 29, 4, lengths)
    got = Predictor(path, device="cpu").predict(x, lengths=lengths)["dense"]
    weights = model.get_layer("gru").get_gate_weights()
    for row, n in enumerate(lengths):
        alone = x[row : row + 1, :n]
        np.testing.assert_allclose(got[row], keras_row(model, alone)[0], atol=ATOL, rtol=0)
        pooled = alone[:, : n // 2 * 2].reshape(1, n // 2, 2, 4).max(axis=2)
        _, h = reference.gru(pooled.astype("float64"), weights)
        np.testing.assert_allclose(got[row], dense(model, h)[0], atol=ATOL, rtol=0)
    assert read_signature(path).min_length("x") == 2  # one step leaves the GRU none
    with pytest.raises(ValueError, match="at least 2 steps per row"):
        Predictor(path, device="cpu").predict(x, lengths=[29, 12, 1, 2])


@pytest.mark.parametrize(
    "front",
    [
        lambda: L.AveragePooling1D(3, strides=2),
        lambda: L.Conv1D(4, 3, strides=2, padding="valid"),
        lambda: L.Conv1D(4, 3, padding="causal", dilation_rate=2),
        lambda: L.Cropping1D((1, 2)),
        lambda: L.UpSampling1D(2),
    ],
    ids=["avgpool", "conv_valid_strided", "conv_causal", "cropping", "upsampling"],
)
def test_length_changing_layers_are_exact(tmp_path, front):
    inp = keras.Input((None, 3), name="x")
    y = GatedLSTM(4, return_sequences=True)(front()(inp))
    model = randomize(keras.Model(inp, L.Dense(2)(y)))
    result = to_onnx(model, tmp_path / "f.onnx", print_fn=None)
    assert not result.signature.padding_refusals
    assert all(r.error <= ATOL for r in result.validation.rows if r.padded)
    assert not read_signature(tmp_path / "f.onnx").outputs[0].per_step  # time axis rescaled


@pytest.mark.parametrize(
    "front, reason",
    [
        (lambda: L.MaxPooling1D(2, padding="same", name="p"), r"layer 'p' \(MaxPooling1D\)"),
        (lambda: L.Conv1D(4, 3, padding="same", name="c"), r"layer 'c' \(Conv1D\)"),
    ],
    ids=["pool_same", "conv_same"],
)
def test_inexact_layers_refuse_padding(tmp_path, front, reason):
    inp = keras.Input((None, 3), name="x")
    model = randomize(keras.Model(inp, GatedGRU(4)(front()(inp))))
    printed = []
    result = to_onnx(model, tmp_path / "r.onnx", print_fn=printed.append)
    assert result.validation.passed
    refusals = read_signature(tmp_path / "r.onnx").padding_refusals
    assert list(refusals) == ["x"]
    assert re.search(reason, refusals["x"])
    assert "refused" in printed[0] and "cannot be padded" in printed[-1]
    with pytest.raises(ValueError, match="cannot pad 'x'"):
        Predictor(tmp_path / "r.onnx", device="cpu").predict(
            np.zeros((2, 6, 3), np.float32), lengths=[6, 4]
        )


def test_attention_over_padded_steps_is_found_by_validation(tmp_path):
    src, tgt = keras.Input((None, 4), name="src"), keras.Input((None, 3), name="tgt")
    values = GatedGRU(6, return_sequences=True)(src)
    queries = GatedGRU(6, return_sequences=True)(tgt)
    attended = L.Attention()([queries, values])  # reads every step of src, padding included
    y = L.Dense(2, name="dense")(L.Concatenate()([queries, attended]))
    model = randomize(keras.Model([src, tgt], y))
    result = to_onnx(model, tmp_path / "a.onnx", print_fn=None)
    refusals = result.signature.padding_refusals
    assert list(refusals) == ["src"] and "padded rows differ from the row alone" in refusals["src"]
    rng = np.random.default_rng(8)
    s, lengths = rng.normal(size=(3, 5, 4)).astype("float32"), np.array([9, 4, 6], np.int32)
    t = padded(rng, 3, 9, 3, lengths)
    predictor = Predictor(tmp_path / "a.onnx", device="cpu")
    got = predictor.predict([s, t], lengths={"tgt": lengths})["dense"]
    for row, n in enumerate(lengths):  # tgt pads exactly
        want = keras_row(model, s[row : row + 1], t[row : row + 1, :n])[0]
        np.testing.assert_allclose(got[row, :n], want, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="cannot pad 'src'"):
        predictor.predict([s, t], lengths={"src": [5, 3, 5]})


def test_mixed_precision_is_refused(tmp_path):
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((None, 3)), GatedLSTM(4)])
    finally:
        keras.config.set_dtype_policy(policy)
    with pytest.raises(ExportError, match="float32 only.*float32 copy"):
        to_onnx(model, tmp_path / "m.onnx", print_fn=None)


def _infer(client, model, inputs):
    body = {
        "inputs": [
            {"name": n, "datatype": d, "shape": list(a.shape), "data": a.ravel().tolist()}
            for n, a, d in inputs
        ]
    }
    return client.post(f"/v2/models/{model}/infer", json=body)


def test_server_and_triton_handle_several_lengths_and_refusals(exported, tmp_path):
    encdec = exported["encdec"]
    for name in ("encdec", "fixed", "pooled", "tokens"):
        write_triton_repo(exported[name][2], tmp_path, name)
    config = (tmp_path / "encdec" / "config.pbtxt").read_text()
    assert 'name: "enc_lengths"' in config and 'name: "dec_lengths"' in config
    rng = np.random.default_rng(6)
    enc, dec = rng.random((2, 7, 6)).astype("float32"), rng.random((2, 11, 5)).astype("float32")
    x = rng.normal(size=(1, 20, 4)).astype("float32")
    with ServerThread(create_app(tmp_path, ServerConfig())) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answer = _infer(client, "encdec", [("enc", enc, "FP32"), ("dec", dec, "FP32")])
            assert answer.status_code == 200, answer.text
            out = answer.json()["outputs"][0]
            got = np.array(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(got, keras_row(encdec[0], enc, dec), atol=ATOL)
            lens = np.array([3, 7], np.int32)
            answer = _infer(
                client,
                "encdec",
                [("enc", enc, "FP32"), ("dec", dec, "FP32"), ("enc_lengths", lens, "INT32")],
            )
            out = answer.json()["outputs"][0]
            got = np.array(out["data"], np.float32).reshape(out["shape"])
            want = keras_row(encdec[0], enc[:1, :3], dec[:1])
            np.testing.assert_allclose(got[:1], want, atol=ATOL)
            answer = _infer(client, "fixed", [("x", x, "FP32")])
            assert answer.status_code == 200, answer.text
            short = np.array([12], np.int32)
            answer = _infer(client, "fixed", [("x", x, "FP32"), ("lengths", short, "INT32")])
            assert answer.status_code == 400
            assert "cannot be padded" in answer.text and "fixed at 20" in answer.text
            one_step = rng.normal(size=(1, 1, 4)).astype("float32")
            answer = _infer(client, "pooled", [("x", one_step, "FP32")])
            assert answer.status_code == 400 and "expected at least 2" in answer.text
            pre = keras.utils.pad_sequences([[3, 5, 7, 9], [4, 2]]).astype("int32")
            answer = _infer(client, "tokens", [("tok", pre, "INT32")])
            assert answer.status_code == 400 and "masked steps" in answer.text, answer.text
            post = keras.utils.pad_sequences([[3, 5, 7, 9], [4, 2]], padding="post")
            answer = _infer(client, "tokens", [("tok", post.astype("int32"), "INT32")])
            out = answer.json()["outputs"][0]
            got = np.array(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(got, keras_row(exported["tokens"][0], post), atol=ATOL)


def test_cli_prints_the_refusal(exported, tmp_path, capsys):
    from keras_gates.cli import main

    model = exported["fixed"][0]
    model.save(tmp_path / "fixed.keras")
    assert main(["export", str(tmp_path / "fixed.keras"), "-o", str(tmp_path / "f.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "padded x: time axis fixed at 20" in printed  # the table's padded case
    assert "input 'x' cannot be padded: its time axis is fixed at 20" in printed
    assert read_signature(tmp_path / "f.onnx").padding_refusals["x"].startswith("its time axis")


def test_unvalidated_export_records_padding_as_unchecked(tmp_path):
    to_onnx(randomize(pooled()), tmp_path / "u.onnx", validate=False, print_fn=None)
    props = {p.key: p.value for p in onnx.load(tmp_path / "u.onnx").metadata_props}
    assert json.loads(props["keras_gates.padding"]) == {
        "x": {"lengths": "lengths", "padding": "unchecked", "reason": None}
    }


def test_masked_translation_model_pads_both_inputs(tmp_path):
    src = keras.Input((None,), dtype="int32", name="src")
    tgt = keras.Input((None,), dtype="int32", name="tgt")
    _, h, c = GatedLSTM(8, return_state=True)(L.Embedding(20, 6, mask_zero=True)(src))
    y = GatedLSTM(8, return_sequences=True)(L.Embedding(20, 6, mask_zero=True)(tgt), [h, c])
    model = randomize(keras.Model([src, tgt], L.Dense(20, name="dense")(y)))
    result = to_onnx(model, tmp_path / "t.onnx", print_fn=None)
    assert not result.signature.padding_refusals
    rng = np.random.default_rng(9)
    s, t = rng.integers(1, 20, (3, 8)).astype("int32"), rng.integers(1, 20, (3, 11)).astype("int32")
    s_len, t_len = np.array([8, 2, 5], np.int32), np.array([3, 11, 7], np.int32)
    got = Predictor(tmp_path / "t.onnx", device="cpu").predict(
        {"src": s, "tgt": t}, lengths={"src": s_len, "tgt": t_len}
    )["dense"]
    for row in range(3):  # garbage (non-zero tokens) past each length
        want = keras_row(model, s[row : row + 1, : s_len[row]], t[row : row + 1, : t_len[row]])
        np.testing.assert_allclose(got[row, : t_len[row]], want[0], atol=ATOL, rtol=0)


def test_inputs_merged_step_by_step_share_lengths(tmp_path):
    a, b = keras.Input((None, 3), name="a"), keras.Input((None, 2), name="b")
    c = keras.Input((None, 4), name="c")
    merged = GatedGRU(5)(L.Concatenate()([a, L.Dense(3, name="project_b")(b)]))
    y = L.Dense(2, name="dense")(L.Concatenate()([merged, GatedLSTM(3)(c)]))
    model = randomize(keras.Model([a, b, c], y))
    result = to_onnx(model, tmp_path / "m.onnx", print_fn=None)
    signature = result.signature
    assert [t.name for t in signature.inputs_with("lengths")] == ["a_lengths", "c_lengths"]
    assert [t.aligned_with for t in signature.inputs_with("sequence")] == [None, "a", None]
    assert not signature.padding_refusals
    rng = np.random.default_rng(10)
    a_len, c_len = np.array([9, 4, 6], np.int32), np.array([2, 5, 5], np.int32)
    xa, xb, xc = (
        padded(rng, 3, 9, 3, a_len),
        padded(rng, 3, 9, 2, a_len),
        padded(rng, 3, 5, 4, c_len),
    )
    predictor = Predictor(tmp_path / "m.onnx", device="cpu")
    got = predictor.predict([xa, xb, xc], lengths={"a": a_len, "c": c_len})["dense"]
    for row in range(3):
        n, m = a_len[row], c_len[row]
        alone = [xa[row : row + 1, :n], xb[row : row + 1, :n], xc[row : row + 1, :m]]
        np.testing.assert_allclose(got[row], keras_row(model, *alone)[0], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="'b' and 'a' with 8 and 9 steps"):
        predictor.predict([xa, xb[:, :8], xc])


def test_concatenation_along_time_refuses_padding(tmp_path):
    a, b = keras.Input((None, 3), name="a"), keras.Input((None, 3), name="b")
    joined = L.Concatenate(axis=1, name="join")([a, b])
    model = randomize(keras.Model([a, b], GatedGRU(4)(joined)))
    result = to_onnx(model, tmp_path / "j.onnx", print_fn=None)
    assert result.validation.passed
    assert (
        "layer 'join' (Concatenate) joins sequences along time"
        in (result.signature.padding_refusals["a"])
    )


def test_masked_steps_before_unmasked_ones_are_refused(exported):
    model, result, path, _ = exported["tokens"]
    assert read_signature(path).inputs[0].mask_value == 0
    predictor = Predictor(path, device="cpu")
    pre = keras.utils.pad_sequences([[3, 5, 7, 9], [4, 2], [1, 0, 3]]).astype("int32")
    with pytest.raises(ValueError, match=r"masked steps \(equal to 0\) .* rows \[1, 2\]"):
        predictor.predict(pre)  # pre-padding (Keras' default) and a hole
    post = keras.utils.pad_sequences([[3, 5, 7, 9], [4, 2]], padding="post").astype("int32")
    got = predictor.predict(post, lengths=[4, 3])["dense"]  # a masked step inside the length
    np.testing.assert_allclose(got, keras_row(model, post), atol=ATOL, rtol=0)
