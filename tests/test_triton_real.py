"""One client for both servers: the same ``tritonclient.http`` code against a real NVIDIA Triton
(the ``tritonserver`` of ``nvidia-pytriton``, Python backend) serving the repository
``write_triton_repo(backend="python")`` wrote, and against ``keras-gates serve`` of the same
folder. Answers agree within 1e-5 and with onnxruntime run directly on the file (or, for the two
models the exporter wrote from Keras, with Keras on each request alone); both refuse the feeds the
signature refuses (padding of a 'same' convolution's input, masked holes) with the same message.
The repository and both servers are session fixtures of ``tests/triton_fixtures.py``.
"""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from keras_gates.export.triton import write_triton_repo
from tests import triton_server
from tests.export_helpers import keras_row
from tests.serving_models import make_rnn_model, run_direct
from tests.triton_fixtures import HELD_ROWS, assert_same_classes, reference, sample
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # child processes or real servers: make test, not make check

ATOL = 1e-5
SERVERS = ("triton", "keras-gates")

if triton_server.unsupported():  # printed with -ra, the suite's default
    pytest.skip(f"no real Triton here: {triton_server.unsupported()}", allow_module_level=True)


@pytest.fixture(params=SERVERS)
def url(request, urls):
    return urls[request.param]


def client_for(url: str, concurrency: int = 4):
    import tritonclient.http as http

    return http.InferenceServerClient(url.removeprefix("http://"), concurrency=concurrency)


def tensors(x: np.ndarray, lengths=None, binary=True):
    """The request tensors: ``x`` and optionally ``lengths``; outputs y and y_steps."""
    import tritonclient.http as http

    inputs = [http.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=binary)
    if lengths is not None:
        inputs.append(http.InferInput("lengths", list(lengths.shape), "INT32"))
        inputs[1].set_data_from_numpy(lengths, binary_data=binary)
    outputs = [http.InferRequestedOutput(n, binary_data=binary) for n in ("y", "y_steps")]
    return {"inputs": inputs, "outputs": outputs}


def arrays(result) -> dict[str, np.ndarray]:
    return {n: result.as_numpy(n) for n in ("y", "y_steps")}


def infer(client, model: str, x: np.ndarray, lengths=None, binary=True, **sequence):
    """The one client code both servers get."""
    return arrays(client.infer(model, **tensors(x, lengths, binary), **sequence))


# ---- health, metadata, configuration, statistics ----------------------------------------------
def test_health_and_server_metadata(url):
    client = client_for(url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("plain") and client.is_model_ready("stream")
        extensions = set(client.get_server_metadata()["extensions"])
        assert {"binary_tensor_data", "sequence", "model_repository", "statistics"} <= extensions
        assert {"model_configuration", "parameters"} <= extensions
    finally:
        client.close()


@pytest.mark.parametrize("model", ["plain", "stream"])
def test_metadata_config_and_stats_agree(urls, model):
    docs = {}
    for name, url in urls.items():
        client = client_for(url)
        try:
            docs[name] = (
                client.get_model_metadata(model),
                client.get_model_config(model),
                client.get_inference_statistics(model)["model_stats"][0],
            )
        finally:
            client.close()
    (meta_t, config_t, stats_t), (meta_k, config_k, stats_k) = docs["triton"], docs["keras-gates"]
    # The recurrent state is the server's business in a sequence; keras-gates also lets a client
    # without sequence_id carry it (optional inputs), which it advertises in the metadata.
    state = {f"rnn.{s}_{d}" for s in "hc" for d in ("in", "out")}
    for key in ("inputs", "outputs"):
        assert [t for t in meta_k[key] if t["name"] not in state] == meta_t[key]
    assert {t["name"]: t["shape"] for t in meta_t["inputs"]}["lengths"] == [-1, 1]
    assert config_k["max_batch_size"] == config_t["max_batch_size"] == 64
    assert set(config_t) <= set(config_k), set(config_t) - set(config_k)
    # keras-gates describes the onnxruntime flavour (no ragged inputs there) and pads different
    # lengths itself ("keras_gates_pads_variable_lengths"); the Python flavour lets Triton batch
    # them.
    ragged = {t["name"] for t in config_t["input"] if t.pop("allow_ragged_batch")}
    assert ragged == ({"x", "lengths"} if model == "plain" else set())
    for key in ("input", "output"):
        ours = [
            {k: v for k, v in t.items() if not k.startswith("keras_gates")} for t in config_k[key]
        ]
        assert not any(t.pop("allow_ragged_batch", False) for t in ours)
        assert ours == config_t[key]
    assert (
        ("sequence_batching" in config_k)
        == ("sequence_batching" in config_t)
        == (model == "stream")
    )
    assert set(stats_t) <= set(stats_k), set(stats_t) - set(stats_k)
    assert set(stats_t["inference_stats"]) == set(stats_k["inference_stats"])


def unload_fully(url: str, name: str) -> None:
    """Unload ``name`` and wait until the server says it is: Triton unloads in the background,
    and a folder removed under a model still unloading leaves the server not ready."""

    def state() -> str | None:
        index = httpx.post(f"{url}/v2/repository/index", json={}, timeout=60).json()
        return {e["name"]: e.get("state") for e in index}.get(name)

    answer = httpx.post(f"{url}/v2/repository/models/{name}/unload", timeout=60)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: state() == "UNAVAILABLE", message=lambda: f"{name} is {state()}")


def test_our_config_loads_in_triton(keras_gates, triton, triton_repo):
    repo = triton_repo
    """The /config keras-gates serve answers, given to a real Triton (Python backend)."""
    env = triton_server.ensure()["env"]
    for model in ("plain", "stream"):
        doc = httpx.get(f"{keras_gates.url}/v2/models/{model}/config").json()
        config = json_format.ParseDict(
            doc, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )
        name = f"ours_{model}"
        config.name, config.platform, config.backend = name, "", "python"
        config.default_model_filename = ""
        config.parameters["EXECUTION_ENV_PATH"].string_value = str(env)
        shutil.copytree(repo / model / "1", repo / name / "1")
        (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))
        answer = httpx.post(f"{triton.url}/v2/repository/models/{name}/load", timeout=60)
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{triton.url}/v2/models/{name}/ready").status_code == 200
        unload_fully(triton.url, name)
        shutil.rmtree(repo / name)


def test_onnxruntime_flavour_as_far_as_this_triton_goes(triton, triton_repo, sources):
    """The default flavour: Triton parses and validates its config (the sequence batcher's state
    and controls included) and loads it once its backend is swapped for the Python one; the
    onnxruntime backend itself is not in this Triton, so its own load stops at the backend."""
    env, repo = triton_server.ensure()["env"], triton_repo
    for model in ("plain", "stream", "two"):
        path, name = sources[model], f"ort_{model}"
        write_triton_repo(path, repo, name)
        answer = httpx.post(f"{triton.url}/v2/repository/models/{name}/load", timeout=60)
        assert answer.status_code == 400 and "onnxruntime" in answer.text, answer.text
        config = text_format.Parse(
            (repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert config.backend == "onnxruntime"
        config.backend = "python"
        config.parameters["EXECUTION_ENV_PATH"].string_value = str(env)
        for helper in ("model.py", "keras_gates_signature.py", "keras_gates_batching.py"):
            shutil.copy(repo / model / "1" / helper, repo / name / "1" / helper)
        (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))
        answer = httpx.post(f"{triton.url}/v2/repository/models/{name}/load", timeout=60)
        assert answer.status_code == 200, answer.text
        unload_fully(triton.url, name)
        shutil.rmtree(repo / name)


# ---- inference ---------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_variable_length_batch(url, sources, binary):
    x = sample((3, 6, 3), seed=1)
    lengths = np.array([[6], [2], [4]], np.int32)  # the advertised [B, 1]
    client = client_for(url)
    try:
        got = infer(client, "plain", x, lengths, binary=binary)
    finally:
        client.close()
    want = reference(sources, "plain", x, lengths.ravel())
    for name in ("y", "y_steps"):
        np.testing.assert_allclose(got[name], want[name], atol=ATOL)


def test_concurrent_requests_of_different_lengths(url, sources):
    """Both pad them into shared calls (Triton's dynamic batcher: ``allow_ragged_batch``, which
    the exporter writes); per-step outputs come back cut to each request's length."""
    cases = [(sample((1 + i % 2, 2 + i, 3), seed=20 + i), 2 + i) for i in range(8)]
    client = client_for(url)
    try:
        pending = [client.async_infer("plain", **tensors(x)) for x, _ in cases]
        results = [arrays(handle.get_result()) for handle in pending]
    finally:
        client.close()
    for (x, steps), got in zip(cases, results):
        want = reference(sources, "plain", x, np.full(len(x), steps))
        np.testing.assert_allclose(got["y"], want["y"], atol=ATOL)
        np.testing.assert_allclose(got["y_steps"], want["y_steps"], atol=ATOL)


def test_two_sequence_inputs_each_with_its_lengths(url, sources):
    import tritonclient.http as http

    a, b = sample((3, 5, 3), seed=90), sample((3, 5, 2), seed=91)
    a_lengths = np.array([[5], [2], [4]], np.int32)
    b_lengths = np.array([[1], [5], [3]], np.int32)
    arrays = {"a": a, "a_lengths": a_lengths, "b": b, "b_lengths": b_lengths}
    inputs = []
    for name, value in arrays.items():
        inputs.append(http.InferInput(name, list(value.shape), "FP32" if name in "ab" else "INT32"))
        inputs[-1].set_data_from_numpy(value)
    client = client_for(url)
    try:
        got = client.infer("two", inputs).as_numpy("y")
        only_a = client.infer("two", inputs[:1] + inputs[2:]).as_numpy("y")  # a_lengths: full
    finally:
        client.close()
    feeds = {k: v.ravel() if k.endswith("lengths") else v for k, v in arrays.items()}
    np.testing.assert_allclose(got, run_direct(sources["two"], feeds)["y"], atol=ATOL)
    feeds["a_lengths"] = np.full(3, 5, np.int32)
    np.testing.assert_allclose(only_a, run_direct(sources["two"], feeds)["y"], atol=ATOL)
    assert np.abs(got - only_a).max() > 1e-3  # the lengths mattered


# ---- the signature's refusals, and no padding where the export refused it --------------------
def named_tensors(arrays: dict[str, np.ndarray]):
    """The request tensors of the Keras-exported models: their inputs, output ``dense``."""
    import tritonclient.http as http

    inputs = []
    for name, value in arrays.items():
        datatype = "FP32" if value.dtype == np.float32 else "INT32"
        inputs.append(http.InferInput(name, list(value.shape), datatype))
        inputs[-1].set_data_from_numpy(value)
    return {"inputs": inputs, "outputs": [http.InferRequestedOutput("dense")]}


def refusal(client, model: str, arrays: dict[str, np.ndarray]) -> str:
    """The message of the 400 answer to a request the signature refuses."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, **named_tensors(arrays))
    assert caught.value.status() == "400", caught.value
    return caught.value.message()


def test_refused_padding_short_lengths_get_400(url, keras_models):
    """Lengths shorter than the time axis of an input the export cannot pad: 400 with the
    signature's reason; full rows get Keras' answer."""
    model = keras_models["conv"][0]
    x = sample((2, 5, 3), seed=100)
    client = client_for(url)
    try:
        message = refusal(client, "conv", {"x": x, "lengths": np.array([[5], [3]], np.int32)})
        full = client.infer("conv", **named_tensors({"x": x})).as_numpy("dense")
    finally:
        client.close()
    assert "shorter than its time dimension 5, but its rows cannot be padded" in message
    assert "padding='same'" in message and "Pass rows of 5 steps" in message
    np.testing.assert_allclose(full, np.asarray(model(x)), atol=ATOL)


def stats_counting(client, model: str, before: dict, rows: int) -> dict:
    """The model's statistics once they count ``rows`` more inferences than ``before``: a
    server may record them just after it answered."""

    def stats() -> dict:
        return client.get_inference_statistics(model)["model_stats"][0]

    def counted() -> dict | None:
        now = stats()
        return now if int(now["inference_count"]) - int(before["inference_count"]) >= rows else None

    return wait_until(counted, message=lambda: f"{model} statistics: {stats()}")


def test_concurrent_different_lengths_of_a_refused_input(url, keras_models, urls):
    """Requests of different lengths reach one execute() of Triton's dynamic batcher (and one
    batch of keras-gates'): neither pads the conv model's input, each answer is Keras' on that
    request alone (rows of one request share its length, so no row is padded there either).
    ``conv_held``'s config holds the requests until all their rows are queued (triton_fixtures)."""
    model = keras_models["conv"][0]
    cases = [sample((1 + i % 2, 2 + i % 4, 3), seed=110 + i) for i in range(8)]
    assert sum(len(x) for x in cases) == HELD_ROWS["conv_held"]
    client = client_for(url, concurrency=len(cases))  # every request sent at once
    try:
        before = client.get_inference_statistics("conv_held")["model_stats"][0]
        pending = [client.async_infer("conv_held", **named_tensors({"x": x})) for x in cases]
        results = [handle.get_result().as_numpy("dense") for handle in pending]
        after = stats_counting(client, "conv_held", before, sum(len(x) for x in cases))
    finally:
        client.close()
    for x, got in zip(cases, results):
        np.testing.assert_allclose(got, np.asarray(model(x)), atol=ATOL)
    if url == urls["triton"]:  # all requests shared one execute() call: the mixed path ran
        executions = after["execution_count"] - before["execution_count"]
        assert executions == 1, (before, after)


def test_concurrent_different_lengths_share_calls(url, keras_models, urls):
    """The default export of a model whose rows can be padded: concurrent requests of different
    lengths share execute() calls on Triton (the exporter's allow_ragged_batch, model.py's
    padding) and each answer is Keras' on that request alone. ``tokens_held`` is that export
    with a config that holds the requests until all their rows are queued (triton_fixtures)."""
    model = keras_models["tokens"][0]
    rng = np.random.default_rng(130)
    cases = [rng.integers(1, 10, (1 + i % 2, 3 + 2 * i), dtype=np.int32) for i in range(16)]
    assert sum(len(x) for x in cases) == HELD_ROWS["tokens_held"]
    client = client_for(url, concurrency=len(cases))  # every request sent at once
    try:
        before = client.get_inference_statistics("tokens_held")["model_stats"][0]
        pending = [client.async_infer("tokens_held", **named_tensors({"tok": x})) for x in cases]
        results = [handle.get_result().as_numpy("dense") for handle in pending]
        after = stats_counting(client, "tokens_held", before, sum(len(x) for x in cases))
    finally:
        client.close()
    for x, got in zip(cases, results):
        np.testing.assert_allclose(got, np.asarray(model(x)), atol=ATOL)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == sum(len(x) for x in cases), (before, after)
    if url == urls["triton"]:  # without allow_ragged_batch: one execution per request
        assert executions == 1, (before, after)


def test_inputs_merged_step_by_step_are_padded_alike_on_both(urls, keras_models):
    """A Keras model with two inputs merged step by step and one lengths input: both servers
    decide to pad (the signature's one rule: allow_ragged_batch on Triton, the scheduler's
    padding on keras-gates serve), and concurrent requests of different lengths get Keras'
    answer for each request alone from both."""
    from keras_gates.signature import read_signature

    model, path = keras_models["aligned"]
    signature = read_signature(path)
    (lengths,) = [t.name for t in signature.inputs_with("lengths")]
    assert {t.aligned_with for t in signature.inputs_with("sequence")} == {None, "a"}
    assert signature.pads_batches and signature.padded_inputs == {"a", "b"}
    config_t = httpx.get(f"{urls['triton']}/v2/models/aligned/config").json()
    config_k = httpx.get(f"{urls['keras-gates']}/v2/models/aligned/config").json()
    assert {t["name"] for t in config_t["input"] if t.get("allow_ragged_batch")} == {
        "a",
        "b",
        lengths,
    }
    assert config_k["dynamic_batching"]["keras_gates_pads_variable_lengths"] is True
    rng = np.random.default_rng(140)
    cases = []
    for i in range(8):
        rows, steps = 1 + i % 2, 2 + i
        arrays = {
            "a": rng.standard_normal((rows, steps, 3)).astype(np.float32),
            "b": rng.standard_normal((rows, steps, 2)).astype(np.float32),
        }
        if rows == 2:  # a row shorter than its request too
            arrays[lengths] = np.array([[steps], [1 + i // 2]], np.int32)
        cases.append(arrays)
    for server, url in urls.items():
        client = client_for(url)
        try:
            pending = [client.async_infer("aligned", **named_tensors(c)) for c in cases]
            results = [handle.get_result().as_numpy("dense") for handle in pending]
        finally:
            client.close()
        for arrays, got in zip(cases, results):
            steps = arrays["a"].shape[1]
            assert got.shape == (len(arrays["a"]), steps, 2), server
            row_lengths = arrays.get(lengths, np.full((len(got), 1), steps)).ravel()
            for row, n in enumerate(row_lengths):
                alone = [arrays[name][row : row + 1, :n] for name in ("a", "b")]
                want = keras_row(model, *alone)
                np.testing.assert_allclose(got[row, :n], want[0], atol=ATOL, err_msg=server)


def test_int8_export_runs_unchanged_on_both(urls, keras_models):
    """``to_onnx(quantize="int8")``'s file in Triton's Python backend and in keras-gates serve:
    the same answer from both (activations are quantized per batch: the same batch, the same
    numbers), within the int8 tolerance (2 % of the output's range) of Keras, on both branches
    of its LSTM (``DynamicQuantizeLSTM`` for 1 row, float32 on the 8-bit weights for 8)."""
    model = keras_models["tokens_int8"][0]
    tok = np.random.default_rng(5).integers(1, 10, (8, 6)).astype(np.int32)  # no padding
    want = np.asarray(model(tok))
    bound = 0.02 * float(np.ptp(want))  # of the output's range over the 8 rows
    for rows in (1, 8):
        got = {}
        for server, base in urls.items():
            client = client_for(base)
            try:
                got[server] = client.infer("tokens_int8", **named_tensors({"tok": tok[:rows]}))
            finally:
                client.close()
            got[server] = got[server].as_numpy("dense")
        np.testing.assert_allclose(got["keras-gates"], got["triton"], atol=ATOL)
        error = float(np.abs(got["triton"] - want[:rows]).max())
        assert 0 < error <= bound, (rows, error, bound)  # int8 (not the float32 file), close


def test_masked_hole_gets_400(url, keras_models):
    """Pre-padded tokens (masked zeros before unmasked steps): the RNN nodes cannot skip them;
    post-padded ones get Keras' answer."""
    model = keras_models["tokens"][0]
    rows = [[3, 5, 7, 9], [4, 2]]
    pre = np.array([[3, 5, 7, 9], [0, 0, 4, 2]], np.int32)
    post = np.array([[3, 5, 7, 9], [4, 2, 0, 0]], np.int32)
    client = client_for(url)
    try:
        message = refusal(client, "tokens", {"tok": pre})
        got = client.infer("tokens", **named_tensors({"tok": post})).as_numpy("dense")
    finally:
        client.close()
    assert "masked steps (equal to 0) before unmasked ones in rows [1]" in message, message
    want = np.concatenate([np.asarray(model(np.array([r], np.int32))) for r in rows])
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_refusals_name_the_same_reason_on_both(urls):
    """The same request, the same signature message from both servers."""
    x = sample((1, 4, 3), seed=120)
    messages = {}
    for server, url in urls.items():
        client = client_for(url)
        try:
            messages[server] = refusal(
                client, "conv", {"x": x, "lengths": np.array([[2]], np.int32)}
            )
        finally:
            client.close()
    reason = messages["triton"].split("Received ", 1)[1]
    assert reason and reason in messages["keras-gates"], messages


def test_lengths_in_either_form_on_keras_gates(keras_gates, sources):
    x = sample((2, 5, 3), seed=3)
    want = reference(sources, "plain", x, np.array([5, 3]))
    client = client_for(keras_gates.url)
    try:
        for lengths in (np.array([[5], [3]], np.int32), np.array([5, 3], np.int32)):
            got = infer(client, "plain", x, lengths)
            np.testing.assert_allclose(got["y"], want["y"], atol=ATOL)
    finally:
        client.close()


def test_streamed_chunks_equal_whole_sequence(url, sources):
    whole = {k: sample((1, 9, 3), seed=40 + k) for k in (1, 2)}
    cuts = [(0, 4), (4, 5), (5, 9)]
    client = client_for(url)
    got = {k: [] for k in whole}
    try:
        for i, (a, b) in enumerate(cuts):  # two sequences, interleaved
            for k, x in whole.items():
                flags = {"sequence_start": i == 0, "sequence_end": i == len(cuts) - 1}
                chunk = np.ascontiguousarray(x[:, a:b])
                got[k].append(infer(client, "stream", chunk, sequence_id=500 + k, **flags))
    finally:
        client.close()
    for k, x in whole.items():
        want = reference(sources, "stream", x, np.array([9]))
        np.testing.assert_allclose(got[k][-1]["y"], want["y"], atol=ATOL)
        steps = np.concatenate([chunk["y_steps"] for chunk in got[k]], axis=1)
        np.testing.assert_allclose(steps, want["y_steps"], atol=ATOL)


def test_idle_sequence_is_dropped(url, urls, triton):
    """A sequence idle for longer than ``max_sequence_idle_microseconds`` is dropped.

    No request may probe it meanwhile (one would keep it alive), so each server is watched from
    the side: keras-gates serve on its open-sessions gauge, Triton in its log, where its sequence
    reaper says (verbose level 1, switched on through Triton's logging extension) that it
    force-ended the sequence.
    """
    from tritonclient.utils import InferenceServerException

    client = client_for(url)
    x = sample((1, 2, 3), seed=80)
    on_triton = url == urls["triton"]
    if on_triton:
        httpx.post(f"{url}/v2/logging", json={"log_verbose_level": 1}).raise_for_status()
    try:
        infer(client, "stream", x, sequence_id=77, sequence_start=True)
        if on_triton:
            ended = "Reaper: force-ending CORRID 77"
            wait_until(
                lambda: ended in triton.log.read_text(errors="replace"),
                timeout=60,
                message=f"Triton's log has no {ended!r}",
            )
        else:
            gone = 'keras_gates_active_sessions{model="stream",version="1"} 0.0'
            wait_until(lambda: gone in httpx.get(f"{url}/metrics").text, message="not evicted")
        with pytest.raises(InferenceServerException) as caught:
            infer(client, "stream", x, sequence_id=77)
        assert caught.value.status() == "400"
    finally:
        client.close()
        if on_triton:
            httpx.post(f"{url}/v2/logging", json={"log_verbose_level": 0}).raise_for_status()


# ---- the classification extension --------------------------------------------------------------
def test_classification_agrees(urls, sources):
    """The same ``class_count`` requests (binary and JSON, K within, at and beyond the classes,
    a per-step output) to both servers: the same classes, labels and scores (``labelled``'s
    label files come from the repository's ``label_filename``s)."""
    import tritonclient.http as http

    x = sample((3, 4, 3), seed=150)
    values = reference(sources, "labelled", x, np.full(3, 4))
    cases = [("y", 2, True), ("y", 5, False), ("y", 9, True), ("y_steps", 7, False)]
    answers = {}
    for server, url in urls.items():
        client = client_for(url)
        try:
            for output, k, binary in cases:
                inputs = [http.InferInput("x", list(x.shape), "FP32")]
                inputs[0].set_data_from_numpy(x, binary_data=binary)
                asked = http.InferRequestedOutput(output, binary_data=binary, class_count=k)
                result = client.infer("labelled", inputs, outputs=[asked])
                answers[server, output, k] = result.as_numpy(output)
        finally:
            client.close()
    for output, k, _ in cases:
        ours, theirs = answers["keras-gates", output, k], answers["triton", output, k]
        assert_same_classes(ours, theirs, values[output], k)


# ---- errors ------------------------------------------------------------------------------------
def _tensor(name="x", datatype="FP32", shape=(1, 2, 3), data=None):
    data = [0.5] * int(np.prod(shape)) if data is None else data
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}


# (case, model, body, Triton's status, keras-gates' status): the differences are on purpose and
# listed in the README.
BAD_REQUESTS = [
    ("unknown model", "nope", {"inputs": [_tensor()]}, 404, 404),
    ("wrong datatype", "plain", {"inputs": [_tensor(datatype="FP64")]}, 400, 400),
    ("wrong rank", "plain", {"inputs": [_tensor(shape=(1, 6))]}, 400, 400),
    ("wrong feature size", "plain", {"inputs": [_tensor(shape=(1, 2, 4))]}, 400, 400),
    ("unknown input", "plain", {"inputs": [_tensor(), _tensor("z")]}, 400, 400),
    ("missing input", "plain", {"inputs": [_tensor("lengths", "INT32", (1, 1), [1])]}, 400, 400),
    ("data size", "plain", {"inputs": [_tensor(data=[0.5] * 5)]}, 500, 400),
    ("data not numbers", "plain", {"inputs": [_tensor(data=[0.5] * 5 + ["a"])]}, 500, 400),
    (
        "lengths > time",
        "plain",
        {"inputs": [_tensor(), _tensor("lengths", "INT32", (1, 1), [3])]},
        400,
        400,
    ),
    (
        "lengths 0",
        "plain",
        {"inputs": [_tensor(), _tensor("lengths", "INT32", (1, 1), [0])]},
        400,
        400,
    ),
    ("unknown output", "plain", {"inputs": [_tensor()], "outputs": [{"name": "nope"}]}, 400, 400),
    ("no inputs", "plain", {"inputs": []}, 400, 400),
    (
        "classification -1",
        "plain",
        {"inputs": [_tensor()], "outputs": [{"name": "y", "parameters": {"classification": -1}}]},
        500,
        400,
    ),
    (
        "classification not an integer",
        "plain",
        {"inputs": [_tensor()], "outputs": [{"name": "y", "parameters": {"classification": "2"}}]},
        500,
        400,
    ),
    (
        "sequence never started",
        "stream",
        {"inputs": [_tensor()], "parameters": {"sequence_id": 999}},
        400,
        400,
    ),
    # keras-gates also takes the other natural form, and a streaming model without a sequence
    (
        "lengths as [B]",
        "plain",
        {"inputs": [_tensor(), _tensor("lengths", "INT32", (1,), [2])]},
        400,
        200,
    ),  # fmt: skip
    ("no sequence_id", "stream", {"inputs": [_tensor()]}, 400, 200),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_status(urls, case):
    _, model, body, triton_status, ours = case
    for server, want in (("triton", triton_status), ("keras-gates", ours)):
        answer = httpx.post(f"{urls[server]}/v2/models/{model}/infer", json=body, timeout=30)
        assert answer.status_code == want, (server, answer.text)
        assert want == 200 or answer.json()["error"], (server, answer.text)


def test_malformed_json_status(urls):
    for server, want in (("triton", 500), ("keras-gates", 400)):
        answer = httpx.post(f"{urls[server]}/v2/models/plain/infer", content=b"{nope", timeout=30)
        assert answer.status_code == want, (server, answer.text)


def test_nan_is_refused_by_both(url):
    x = sample((1, 3, 3), seed=70)
    x[0, 1, 2] = np.nan
    client = client_for(url)
    try:
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException) as caught:
            infer(client, "plain", x)
        assert caught.value.status() == "400" and "NaN" in caught.value.message()
    finally:
        client.close()


# ---- the model repository extension (last: it changes the repository) -------------------------
def model_state(client, model: str) -> str | None:
    return {e["name"]: e.get("state") for e in client.get_model_repository_index()}[model]


def test_load_unload_and_new_version(url, triton_repo, sources):
    repo = triton_repo
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = client_for(url)
    x = sample((1, 4, 3), seed=60)
    try:
        client.unload_model("plain")
        with pytest.raises(InferenceServerException):
            infer(client, "plain", x)
        # Triton unloads in the background
        wait_until(lambda: model_state(client, "plain") == "UNAVAILABLE", message="not unloaded")
        client.load_model("plain")
        want = reference(sources, "plain", x, np.array([4]))
        np.testing.assert_allclose(infer(client, "plain", x)["y"], want["y"], atol=ATOL)
        # A new version copied into the repository, then loaded: it answers by default.
        other = make_rnn_model(repo.parent / f"v2_{url.rsplit(':', 1)[1]}.onnx", seed=99)
        shutil.copytree(repo / "plain" / "1", repo / "plain" / "2")
        shutil.copy(other, repo / "plain" / "2" / "model.onnx")
        client.load_model("plain")
        want = run_direct(other, {"x": x, "lengths": np.array([4], np.int32)})
        np.testing.assert_allclose(infer(client, "plain", x)["y"], want["y"], atol=ATOL)
        assert client.is_model_ready("plain", "2")
        assert isinstance(client, http.InferenceServerClient)
    finally:
        shutil.rmtree(repo / "plain" / "2", ignore_errors=True)
        client.load_model("plain")
        client.close()
