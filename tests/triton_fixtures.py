"""The real Triton of the suite and a ``keras-gates serve`` of the same repository, shared by
``test_triton_real.py`` (HTTP) and ``test_triton_grpc.py`` (gRPC): one repository, one
``tritonserver`` and one ``keras-gates serve`` per test session, each serving both transports.

The tests that use them carry the ``triton`` xdist group (see conftest.py), so under
``pytest -n`` they all run in one worker and these servers start once. This plugin is loaded in
every test process, the JAX and PyTorch children too: it imports TensorFlow only inside fixtures.
"""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests import triton_server
from tests.serving_models import add_labels, make_rnn_model, run_direct, serve_process

UNITS = 8
IDLE_S = 3  # both servers drop a sequence idle this long
# Models whose Triton config holds concurrent requests until all of a test's rows are queued:
# ``preferred_batch_size`` equal to those rows and a queue delay far longer than sending them
# takes. Their tests then see exactly one execute() call, however the requests interleave.
HELD_DELAY_US = 60_000_000
HELD_ROWS = {"conv_held": 12, "tokens_held": 24}
# ``labelled``: y [B, 5] and y_steps [B, T, 5] with class labels (the classification extension)
CLASSES = 5
LABELS = ["calm", "breeze", "gale", "storm", "hurricane"]


def sample(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def reference(sources, model: str, x: np.ndarray, lengths: np.ndarray) -> dict:
    """onnxruntime on the model's file itself, with zero initial state for ``stream``."""
    feeds = {"x": x, "lengths": lengths.astype(np.int32)}
    if model == "stream":
        feeds |= {f"rnn.{s}_in": np.zeros((len(x), UNITS), np.float32) for s in "hc"}
    return run_direct(sources[model], feeds)


def make_two_sequence_model(path, units: int = 4, seed: int = 13):
    """``a [B, T, 3], a_lengths, b [B, T, 2], b_lengths -> y``: an LSTM over each sequence input
    with its own lengths (the exporter's ``<input>_lengths``), last hidden states concatenated."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.serving_models import _finish

    nodes, inits = [], []
    for name, features in (("a", 3), ("b", 2)):
        for weight, shape in (("W", (1, 4 * units, features)), ("R", (1, 4 * units, units))):
            inits.append(
                numpy_helper.from_array(sample(shape, seed + len(inits)) * 0.5, f"{name}{weight}")
            )
        inits.append(numpy_helper.from_array(np.zeros((1, 8 * units), np.float32), f"{name}B"))
        nodes.append(helper.make_node("Transpose", [name], [f"{name}t"], perm=[1, 0, 2]))
        lstm_inputs = [f"{name}t", f"{name}W", f"{name}R", f"{name}B", f"{name}_lengths"]
        nodes.append(helper.make_node("LSTM", lstm_inputs, ["", f"{name}h"], hidden_size=units))
        nodes.append(helper.make_node("Squeeze", [f"{name}h", "axis0"], [f"{name}last"]))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    nodes.append(helper.make_node("Concat", ["alast", "blast"], ["y"], axis=1))
    in_specs = [
        ("a", "sequence", TensorProto.FLOAT, [None, None, 3]),
        ("a_lengths", "lengths", TensorProto.INT32, [None]),
        ("b", "sequence", TensorProto.FLOAT, [None, None, 2]),
        ("b_lengths", "lengths", TensorProto.INT32, [None]),
    ]
    out_specs = [("y", "output", TensorProto.FLOAT, [None, 2 * units], False)]
    path = _finish(path, nodes, inits, in_specs, out_specs, False, True)
    return _measured_by_name(path)


def _measured_by_name(path):
    """Each ``<input>_lengths`` measures ``<input>`` (``sequence_input``: what the exporter
    writes)."""
    import dataclasses

    import onnx
    from onnx import helper

    from keras_gates.signature import METADATA_KEY, read_signature

    model = onnx.load(str(path))
    signature = read_signature(model)
    inputs = tuple(
        dataclasses.replace(t, sequence_input=t.name.removesuffix("_lengths"))
        if t.role == "lengths"
        else t
        for t in signature.inputs
    )
    del model.metadata_props[:]
    helper.set_model_props(
        model, {METADATA_KEY: dataclasses.replace(signature, inputs=inputs).to_json()}
    )
    onnx.save(model, str(path))
    return path


def conv_model():
    """``x [B, T, 3]`` through a 'same' Conv1D, then a gated GRU: the export refuses to pad x."""
    import keras

    from keras_gates import GatedGRU

    inp = keras.Input((None, 3), name="x")
    h = keras.layers.Conv1D(4, 3, padding="same", name="conv")(inp)
    return keras.Model(inp, keras.layers.Dense(2, name="dense")(GatedGRU(4, name="gru")(h)))


def token_model(units: int = 4):
    """``tok [B, T]`` through ``Embedding(mask_zero=True)``: zeros are masked (``mask_value``)."""
    import keras

    from keras_gates import GatedLSTM

    tok = keras.Input((None,), dtype="int32", name="tok")
    h = GatedLSTM(units, name="lstm")(keras.layers.Embedding(10, 3, mask_zero=True)(tok))
    return keras.Model(tok, keras.layers.Dense(2, name="dense")(h))


@pytest.fixture(scope="session")
def keras_models(tmp_path_factory):
    """The models exported from Keras (a few seconds): ``{name: (keras model, path)}``."""
    from keras_gates.export import to_onnx  # TensorFlow: only where these tests run
    from tests.export_helpers import aligned_model, randomize

    root = tmp_path_factory.mktemp("triton_keras")
    out = {}
    for name, build in (("conv", conv_model), ("tokens", token_model), ("aligned", aligned_model)):
        model = randomize(build())
        to_onnx(model, root / f"{name}.onnx", print_fn=None)
        out[name] = (model, root / f"{name}.onnx")
    # a token model in int8 (Keras' initializers): at 96 units its LSTM runs DynamicQuantizeLSTM
    # below 3 rows and float32 on its 8-bit weights from there; an 8-bit Embedding, and
    # DynamicQuantizeMatMul for the Dense
    import keras

    keras.utils.set_random_seed(96)  # the same weights on every run
    wide = token_model(units=96)
    to_onnx(wide, root / "tokens_int8.onnx", quantize="int8", print_fn=None)
    out["tokens_int8"] = (wide, root / "tokens_int8.onnx")
    return out


@pytest.fixture(scope="session")
def sources(tmp_path_factory, keras_models):
    root = tmp_path_factory.mktemp("triton_sources")
    labelled = make_rnn_model(root / "labelled.onnx", outputs=CLASSES, seed=14)
    add_labels(labelled, {"y": LABELS, "y_steps": LABELS})  # as to_onnx(labels=...) records
    return {
        "labelled": labelled,
        "plain": make_rnn_model(root / "plain.onnx", seed=11),
        "stream": make_rnn_model(root / "stream.onnx", streaming=True, seed=12),
        "two": make_two_sequence_model(root / "two.onnx"),
        **{name: path for name, (_, path) in keras_models.items()},
    }


def _edit_config(folder, edit) -> None:
    """Change a written ``config.pbtxt`` as a user would (keras-gates serve ignores it)."""
    path = folder / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    edit(config)
    path.write_text(text_format.MessageToString(config))


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory, sources):
    from keras_gates.export import write_triton_repo

    env = triton_server.ensure()["env"]
    root = tmp_path_factory.mktemp("triton_repo")
    held = {"conv_held": sources["conv"], "tokens_held": sources["tokens"]}
    for name, path in {**sources, **held}.items():
        write_triton_repo(
            path,
            root,
            name,
            backend="python",
            execution_env=str(env),
            idle_microseconds=IDLE_S * 1_000_000,
        )

    # The exporter sets allow_ragged_batch only where model.py can pad (tokens); conv's input
    # refuses padding, so conv_held gets it by hand: requests of different lengths then reach
    # one execute() of model.py, which must run each length on its own.
    def hold(rows: int, ragged: bool):
        def edit(config) -> None:
            config.dynamic_batching.max_queue_delay_microseconds = HELD_DELAY_US
            config.dynamic_batching.preferred_batch_size[:] = [rows]
            for tensor in config.input:
                tensor.allow_ragged_batch = tensor.allow_ragged_batch or ragged

        return edit

    _edit_config(root / "conv_held", hold(HELD_ROWS["conv_held"], ragged=True))

    # aligned: the exporter's own allow_ragged_batch, and a short queue delay so that concurrent
    # requests of different lengths tend to share execute() calls (no test counts them)
    def delay(config) -> None:
        config.dynamic_batching.max_queue_delay_microseconds = 100_000

    _edit_config(root / "aligned", delay)
    _edit_config(root / "tokens_held", hold(HELD_ROWS["tokens_held"], ragged=False))
    return root


@pytest.fixture(scope="session")
def triton(triton_repo, tmp_path_factory):
    """The real Triton (:class:`tests.triton_server.TritonServer`) on both its ports."""
    if triton_server.unsupported():
        pytest.skip(f"no real Triton here: {triton_server.unsupported()}")
    log = tmp_path_factory.mktemp("triton_log") / "tritonserver.log"
    with triton_server.TritonServer(triton_repo, log) as server:
        yield server


@pytest.fixture(scope="session")
def keras_gates(triton_repo):
    """``keras-gates serve`` of the same folder, HTTP and gRPC (a :class:`Served`)."""
    flags = ("--max-batch-size", "64", "--session-idle-timeout-s", str(IDLE_S))
    flags += ("--grpc-port", "0", "--no-request-log")
    with serve_process(triton_repo, *flags) as served:
        yield served


@pytest.fixture(scope="session")
def urls(triton, keras_gates):
    """The HTTP base URL of each server."""
    return {"triton": triton.url, "keras-gates": keras_gates.url}


@pytest.fixture(scope="session")
def grpc_urls(triton, keras_gates):
    """The gRPC ``HOST:PORT`` of each server."""
    return {"triton": f"127.0.0.1:{triton.grpc_port}", "keras-gates": keras_gates.grpc_address}


def assert_same_classes(got: np.ndarray, want: np.ndarray, values: np.ndarray, k: int) -> None:
    """Two classification answers (``[B, K]`` of ``b"score:index[:label]"``) name the same classes
    in the same order with the same labels, their scores agree within 1e-5 with each other and
    with ``values`` (the output's values, ``[B, ...]``) at those indices, and each row holds the
    ``k`` largest values (all of them when ``k`` is larger), highest first."""
    rows = values.reshape(len(values), -1)
    assert got.shape == want.shape == (len(values), min(k, rows.shape[1])), (got.shape, k)
    for r in range(len(values)):
        ranked = np.sort(rows[r])[::-1][: got.shape[1]]
        for c in range(got.shape[1]):
            ours, theirs = _parse(got[r, c]), _parse(want[r, c])
            assert ours[1:] == theirs[1:], (got[r], want[r])
            score, index, label = ours
            assert label == (LABELS[index] if index < len(LABELS) else None), got[r, c]
            np.testing.assert_allclose([score, theirs[0]], rows[r, index], atol=1e-5)
            np.testing.assert_allclose(score, ranked[c], atol=1e-5)


def _parse(item) -> tuple[float, int, str | None]:
    text = item.decode() if isinstance(item, bytes) else str(item)
    score, index, *label = text.split(":", 2)
    assert len(score.split(".")[1]) == 6, text  # C's %f
    return float(score), int(index), label[0] if label else None
