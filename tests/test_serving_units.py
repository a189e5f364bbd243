"""Unit tests for serving's pure layers, no HTTP: the v2 codec, the request body and parameters,
the Batcher, the session table.

The HTTP and gRPC tests check these through real sockets; here each piece is built directly, so a
failure names the layer at fault and the session table runs on an injected clock, not on sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import orjson
import pytest

from keras_gates.serving.batcher import Batcher, BatchLayout
from keras_gates.serving.body import header_length, read_body
from keras_gates.serving.codec import decode_request, encode_error, encode_response
from keras_gates.serving.datatypes import protocol_shape
from keras_gates.serving.errors import (
    INTERNAL_ERROR,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ServingError,
    Unavailable,
    error_payload,
    grpc_code,
)
from keras_gates.serving.parameters import sequence_control
from keras_gates.serving.scheduler import SequenceControl
from keras_gates.serving.sessions import SessionManager

# ---- the one error mapping ---------------------------------------------------------------


@pytest.mark.parametrize(
    "err, status, code",
    [
        (BadRequest("bad x"), 400, "INVALID_ARGUMENT"),
        (NotFound("no model"), 404, "NOT_FOUND"),
        (PayloadTooLarge("too big"), 413, "RESOURCE_EXHAUSTED"),
        (Unavailable("busy"), 503, "UNAVAILABLE"),
        (ServingError("gone", 499), 499, "CANCELLED"),
        (ServingError("odd", 418), 418, "UNKNOWN"),
    ],
)
def test_error_payload_answers_serving_errors_with_their_status_and_message(err, status, code):
    assert error_payload(err, "/where") == (status, err.message)
    assert grpc_code(status) == code  # what the gRPC transport aborts with


def test_error_payload_logs_unexpected_errors_and_leaks_nothing(caplog):
    try:
        raise KeyError("secret internal detail")
    except KeyError as err:
        with caplog.at_level(logging.ERROR, "keras_gates.serving"):
            answer = error_payload(err, "/v2/models/m/infer")
    assert answer == (500, INTERNAL_ERROR) and "secret" not in INTERNAL_ERROR
    (record,) = caplog.records
    assert record.getMessage() == "Unhandled error in /v2/models/m/infer"
    assert "secret internal detail" in record.exc_text and "Traceback" in record.exc_text
    assert grpc_code(500) == "INTERNAL"


# ---- codec ---------------------------------------------------------------------------------


def _binary_body(doc: dict, *blobs: bytes) -> tuple[bytes, int]:
    header = orjson.dumps(doc)
    return b"".join([header, *blobs]), len(header)


def test_decode_json_inputs_options_and_outputs():
    body = orjson.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]},
                {"name": "n", "datatype": "INT32", "shape": [2, 1], "data": [[3], [2]]},
                {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
            "parameters": {"sequence_id": 7},
        }
    )
    request = decode_request(body)
    assert request.id == "r1" and request.parameters == {"sequence_id": 7}
    np.testing.assert_array_equal(request.inputs["x"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert request.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(request.inputs["n"], np.array([[3], [2]], np.int32))
    assert request.inputs["n"].dtype == np.int32 and request.inputs["b"].dtype == np.bool_
    assert request.outputs == ["y", "z"] and request.binary_outputs == {"y"}
    every = decode_request(orjson.dumps({"inputs": orjson.loads(body)["inputs"]}))
    assert every.outputs is None and every.binary_outputs is False and every.id is None


def test_decode_binary_inputs_after_the_json_header():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    n = np.array([2], np.int64)
    doc = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 2, 3],
                "parameters": {"binary_data_size": x.nbytes},
            },
            {
                "name": "n",
                "datatype": "INT64",
                "shape": [1],
                "parameters": {"binary_data_size": n.nbytes},
            },
        ],
        "parameters": {"binary_data_output": True},
    }
    body, header_length = _binary_body(doc, x.tobytes(), n.tobytes())
    request = decode_request(body, header_length)
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["n"], n)
    assert request.binary_outputs is True


def test_encode_then_decode_round_trips_json_and_binary():
    y = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 3, 2)
    h = np.array([[0.25, -0.5]], np.float64)
    body, header_length = encode_response("m", "1", "r9", {"y": y, "h": h}, {"y"}, {"p": 1})
    assert header_length is not None
    doc = orjson.loads(body[:header_length])
    assert doc["model_name"] == "m" and doc["model_version"] == "1" and doc["id"] == "r9"
    assert doc["parameters"] == {"p": 1}
    by_name = {t["name"]: t for t in doc["outputs"]}
    assert by_name["y"]["datatype"] == "FP32" and by_name["y"]["shape"] == [2, 3, 2]
    assert by_name["y"]["parameters"] == {"binary_data_size": y.nbytes}
    blob = body[header_length : header_length + y.nbytes]
    np.testing.assert_array_equal(np.frombuffer(blob, np.float32).reshape(2, 3, 2), y)
    assert by_name["h"]["datatype"] == "FP64" and by_name["h"]["data"] == [0.25, -0.5]
    # the response's tensors decode back as request inputs, bit for bit
    back = {**doc, "inputs": doc.pop("outputs")}
    again = decode_request(orjson.dumps(back) + body[header_length:], len(orjson.dumps(back)))
    np.testing.assert_array_equal(again.inputs["y"], y)
    np.testing.assert_array_equal(again.inputs["h"], h)
    plain, none = encode_response("m", "1", None, {"h": h})
    assert none is None and "id" not in orjson.loads(plain)
    assert orjson.loads(encode_error("no")) == {"error": "no"}


def _input(**fields) -> bytes:
    """A one-input request body; a field given as None is left out."""
    item = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2], **fields}
    item = {k: v for k, v in item.items() if v is not None}
    return orjson.dumps({"inputs": [item]})


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b"{", None, "Malformed JSON in the request body"),
        (b"[]", None, 'non-empty "inputs" list'),
        (orjson.dumps({"inputs": []}), None, 'non-empty "inputs" list'),
        (_input(datatype="FP8"), None, "datatype 'FP8', expected one of BOOL, UINT8"),
        (_input(shape=[2, -1]), None, "expected a list of non-negative integers"),
        (_input(shape=[True]), None, "expected a list of non-negative integers"),
        (_input(data=[1, 2, 3]), None, "which needs 2 values, but data holds 3"),
        (_input(data="12"), None, '"data" must be a list, got str'),
        (_input(datatype="INT32", data=[1.5, 2]), None, "not a (nested) list of INT32 values"),
        (_input(data=None), None, 'neither "data" nor parameters.binary_data_size'),
        (
            _input(data=None, parameters={"binary_data_size": 4}),
            None,
            "binary_data_size 4, expected 8 bytes (FP32 of shape [2])",
        ),
        (b'{"inputs": []}', 99, "Inference-Header-Content-Length is 99 but the body has 14"),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                        {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                    ]
                }
            ),
            None,
            "Input 'x' appears twice in the request; expected once.",
        ),
        (
            orjson.dumps(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 5}
            ),
            None,
            '"id" must be a string, got 5.',
        ),
        (
            orjson.dumps(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                    "outputs": [{"name": "y", "parameters": {"classification": -2}}],
                }
            ),
            None,
            "Output 'y' has parameter classification -2, expected a non-negative integer",
        ),
    ],
)
def test_decode_errors_name_the_problem(body, header_length, message):
    with pytest.raises(BadRequest) as info:
        decode_request(body, header_length)
    assert message in info.value.message and info.value.status == 400


def test_decode_binary_sizes_must_add_up():
    doc = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
        ]
    }
    short, length = _binary_body(doc, b"\0" * 4)
    with pytest.raises(BadRequest, match=r"needs bytes 0\.\.\.8 but only 4 bytes follow"):
        decode_request(short, length)
    extra, length = _binary_body(doc, b"\0" * 12)
    with pytest.raises(BadRequest, match="declare 8 bytes of binary_data_size but 12 bytes"):
        decode_request(extra, length)


# ---- batcher -------------------------------------------------------------------------------


class _Model:
    """Records each call's feeds; per-step output ``y = x * 2``, final output ``s = sum over t``."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[dict[str, np.ndarray]] = []
        self.gate = gate

    def __call__(self, feeds):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(feeds)
        x = feeds["x"]
        return {"y": x * 2, "s": x.sum(axis=1)}


_LAYOUT = BatchLayout(
    sequence_inputs=frozenset({"x"}),
    per_step_outputs=frozenset({"y"}),
    can_pad=True,
    max_batch_size=8,
)


async def _submit_all(batcher: Batcher, feeds_list: list[dict[str, np.ndarray]], gate):
    """Queue every request while the worker is held, then let it run: they form one batch."""
    with batcher.tracking():
        futures = [batcher.submit(f, f["x"].shape[0], f["x"].shape[1]) for f in feeds_list]
    gate.set()
    return await asyncio.gather(*futures)


def test_batcher_pads_to_the_longest_and_cuts_back_per_request():
    gate = threading.Event()
    model = _Model(gate)
    batcher = Batcher(model, _LAYOUT, name="unit")
    try:
        first = {"x": np.full((1, 1, 2), 9.0, np.float32)}  # held in the worker by the gate
        requests = [
            {"x": np.arange(6, dtype=np.float32).reshape(1, 3, 2)},
            {"x": np.ones((2, 2, 2), np.float32)},
            {"x": np.full((1, 4, 2), 3.0, np.float32)},
        ]

        async def scenario():
            held = batcher.submit(first, 1, 1)
            while batcher.queued:  # the worker took the first request
                await asyncio.sleep(0)
            results = await _submit_all(batcher, requests, gate)
            return await held, results

        held, results = asyncio.run(scenario())
    finally:
        batcher.close()
    np.testing.assert_array_equal(held["y"], first["x"] * 2)
    assert len(model.calls) == 2, "the three queued requests must run as one batch"
    batch = model.calls[1]["x"]
    assert batch.shape == (4, 4, 2)  # rows 1+2+1, time padded to the longest (4)
    np.testing.assert_array_equal(batch[0, 3:], 0)  # padding is zeros
    np.testing.assert_array_equal(batch[1:3, 2:], 0)
    for feeds, result in zip(requests, results, strict=True):
        x = feeds["x"]
        np.testing.assert_array_equal(result["y"], x * 2)  # cut back to its rows and steps
        np.testing.assert_array_equal(result["s"], x.sum(axis=1))  # cut back to its rows only
    assert batcher.active == 0


def test_batcher_keeps_different_feature_shapes_apart_and_isolates_a_failing_request():
    gate = threading.Event()
    calls = []

    def run(feeds):
        gate.wait(10)
        calls.append(feeds["x"].shape)
        if np.isnan(feeds["x"]).any():
            raise ValueError("nan in x")
        return {"y": feeds["x"] + 1, "s": feeds["x"].sum(axis=1)}

    batcher = Batcher(run, _LAYOUT, name="unit")
    requests = [
        {"x": np.ones((1, 2, 2), np.float32)},
        {"x": np.ones((1, 2, 5), np.float32)},  # another feature size: another batch
        {"x": np.full((1, 2, 2), np.nan, np.float32)},  # fails: its neighbour runs alone
    ]

    async def scenario():
        blocker = batcher.submit({"x": np.ones((1, 1, 2), np.float32)}, 1, 1)
        while batcher.queued:  # the worker holds the blocker until the gate opens
            await asyncio.sleep(0)
        with batcher.tracking():
            futures = [batcher.submit(f, 1, 2) for f in requests]
        gate.set()
        await blocker
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close()
    np.testing.assert_array_equal(results[0]["y"], requests[0]["x"] + 1)
    np.testing.assert_array_equal(results[1]["y"], requests[1]["x"] + 1)
    assert isinstance(results[2], ValueError) and "nan in x" in str(results[2])
    # the blocker, the two same-shaped requests together, each of them alone, the other shape
    assert calls == [(1, 1, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 5)]


def test_batcher_full_queue_is_unavailable_then_recovers():
    gate = threading.Event()
    model = _Model(gate)
    batcher = Batcher(model, BatchLayout(max_batch_size=1), max_queue_size=2, name="tiny")
    x = {"x": np.ones((1, 1, 2), np.float32)}

    async def scenario():
        futures = [batcher.submit(x, 1, 1)]
        while batcher.queued:  # the worker holds the first request
            await asyncio.sleep(0)
        futures += [batcher.submit(x, 1, 1), batcher.submit(x, 1, 1)]
        with pytest.raises(Unavailable) as info:
            batcher.submit(x, 1, 1)
        gate.set()
        await asyncio.gather(*futures)
        after = await batcher.submit(x, 1, 1)
        return info.value, after

    try:
        error, after = asyncio.run(scenario())
    finally:
        batcher.close()
    assert error.status == 503
    assert error.message == (
        "Model 'tiny' is overloaded: 2 requests queued (the limit, --max-queue-size 2); "
        "retry later."
    )
    np.testing.assert_array_equal(after["y"], x["x"] * 2)


def test_batcher_tracking_counts_under_the_lock_and_refuses_after_close():
    batcher = Batcher(_Model(), _LAYOUT, name="closing")
    with batcher.tracking():
        with batcher.tracking():
            assert batcher.active == 2
        assert batcher.active == 1
    with pytest.raises(RuntimeError), batcher.tracking():
        assert batcher.active == 1
        raise RuntimeError("request failed")
    assert batcher.active == 0  # a failing request is uncounted too
    batcher.close()

    async def late():
        batcher.submit({"x": np.ones((1, 1, 2), np.float32)}, 1, 1)

    with pytest.raises(Unavailable, match="'closing' is shutting down; retry on another server"):
        asyncio.run(late())


# ---- session table (injected clock) --------------------------------------------------------


def _sessions(**kwargs) -> tuple[SessionManager, list[int]]:
    counts: list[int] = []
    zero = {"h": np.zeros((1, 2), np.float32)}
    return SessionManager(zero, on_change=counts.append, **kwargs), counts


def _use(manager: SessionManager, seq_id, start: bool, state=None, end=False, now=0.0):
    session = manager.acquire(seq_id, start)
    manager.begin(session, start)
    manager.release(session, state, end)
    session.last_used = now  # the injected clock: when this chunk was answered
    return session


def test_sessions_evicted_after_the_idle_timeout_by_injected_clock():
    manager, counts = _sessions(idle_timeout_s=60.0)
    state = {"h": np.ones((1, 2), np.float32)}
    _use(manager, "a", True, state, now=100.0)
    _use(manager, 7, True, now=130.0)
    assert _use(manager, "a", False, None, now=100.0).state is state  # a failed chunk keeps it
    busy = manager.acquire(7, False)  # a session with a request in flight is never evicted
    assert manager.sweep(now=159.9) == 0 and len(manager) == 2
    assert manager.sweep(now=160.0) == 1 and len(manager) == 1  # "a": idle exactly 60 s
    assert manager.sweep(now=1000.0) == 0  # 7 is busy
    manager.release(busy, None, False)
    busy.last_used = 200.0
    assert manager.sweep(now=259.0) == 0
    assert manager.sweep(now=260.0) == 1 and len(manager) == 0
    assert counts == [1, 2, 1, 0]
    with pytest.raises(BadRequest) as info:
        manager.acquire("a", False)
    assert info.value.message == (
        "Sequence 'a' is not open: it was evicted after 60 s idle. Start it with "
        "sequence_start=true before sending further chunks."
    )
    restarted = _use(manager, "a", True, now=300.0)
    np.testing.assert_array_equal(restarted.state["h"], 0)  # a fresh start from zeros


def test_session_cap_sweeps_idle_ones_first_then_answers_503():
    manager, _ = _sessions(max_sessions=2, idle_timeout_s=60.0)
    now = time.monotonic()
    _use(manager, "old", True, now=now - 120.0)  # idle past the timeout: swept to make room
    _use(manager, "b", True, now=now)
    _use(manager, "c", True, now=now)
    assert len(manager) == 2
    with pytest.raises(Unavailable) as info:
        manager.acquire("d", True)
    assert info.value.status == 503
    assert info.value.message.startswith(
        "Too many open sequences: 2 (the limit, --max-sessions 2); end finished sequences"
    )
    _use(manager, "b", False, end=True, now=now)
    with pytest.raises(BadRequest, match="'b' is not open: it has ended"):
        manager.acquire("b", False)
    _use(manager, "d", True, now=now)  # room again
    with pytest.raises(BadRequest, match="'zz' is not open: it was never started"):
        manager.acquire("zz", False)


# ---- the request body, its parameters and the shapes the protocol writes -------------------
def _receive(*chunks: bytes, disconnect: bool = False):
    """An ASGI ``receive`` sending ``chunks`` as ``http.request`` messages."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    if disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})

    async def receive():
        return messages.pop(0)

    return receive


def test_read_body_joins_chunks_inflates_and_refuses_what_exceeds_the_limit():
    import gzip

    assert asyncio.run(read_body(_receive(b"ab", b"", b"cd"), {}, 4)) == b"abcd"
    packed, gzipped = gzip.compress(b"x" * 100), {b"content-encoding": b"gzip"}
    assert asyncio.run(read_body(_receive(packed), gzipped, 100)) == b"x" * 100
    with pytest.raises(PayloadTooLarge, match="Decompressed request body exceeds the limit of 99"):
        asyncio.run(read_body(_receive(packed), gzipped, 99))
    with pytest.raises(PayloadTooLarge, match="Request body of 5 bytes exceeds the limit of 4"):
        asyncio.run(read_body(_receive(b"abcde"), {b"content-length": b"5"}, 4))
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 4 bytes"):
        asyncio.run(read_body(_receive(b"abc", b"de"), {}, 4))
    with pytest.raises(BadRequest, match="disconnected before sending the whole body"):
        asyncio.run(read_body(_receive(b"ab", disconnect=True), {}, 4))
    with pytest.raises(BadRequest, match="Content-Encoding 'br' is not supported"):
        asyncio.run(read_body(_receive(b"ab"), {b"content-encoding": b"br"}, 4))
    assert header_length({b"inference-header-content-length": b"12"}) == 12
    with pytest.raises(BadRequest, match="must be an integer, got 'x'"):
        header_length({b"inference-header-content-length": b"x"})


@pytest.mark.parametrize(
    "parameters, expected",
    [
        ({}, None),
        ({"sequence_id": 0}, None),
        ({"sequence_id": ""}, None),
        ({"sequence_id": 7, "sequence_start": True}, SequenceControl(7, True, False)),
        ({"sequence_id": "a", "sequence_end": True}, SequenceControl("a", False, True)),
    ],
)
def test_sequence_control_of_the_parameters(parameters, expected):
    assert sequence_control(parameters) == expected


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"sequence_id": 7, "sequence_start": "yes"}, "must be true or false"),
        ({"sequence_start": True}, "need a non-zero sequence_id"),
        ({"sequence_id": True}, "must be an integer or a string, got True"),
        ({"sequence_id": 1.5}, "must be an integer or a string, got 1.5"),
    ],
)
def test_sequence_control_refuses_bad_parameters(parameters, message):
    with pytest.raises(BadRequest, match=message):
        sequence_control(parameters)


def test_protocol_shape_frees_dims_and_gives_batch_only_tensors_a_second_dim():
    assert protocol_shape((None, None, 3)) == [-1, -1, 3]
    assert protocol_shape((2, 5)) == [2, 5]
    assert protocol_shape((None,)) == [-1, 1]  # [batch] tensors are [B, 1] on the wire (Triton)
