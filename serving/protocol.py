"""The protocol layer: the inference handler of the Open Inference Protocol (KServe v2) and the
HTTP error boundary.

Handlers resolve the model, read and decode the body (:mod:`.codec`), hand numpy tensors to the
model's :class:`~keras_gates.serving.scheduler.ModelScheduler` and encode what comes back. A
:class:`~keras_gates.serving.errors.ServingError` becomes ``{"error": message}`` with its status;
anything else is logged with its traceback and becomes a 500 that leaks nothing (both through
:func:`~keras_gates.serving.errors.error_payload`, which the gRPC transport shares).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
import zlib

import orjson
from fastapi.responses import Response

from .codec import decode_request, encode_error, encode_response
from .errors import BadRequest, PayloadTooLarge, Unavailable, error_payload
from .metrics import ServingMetrics
from .repository import ModelRepository
from .runtime import ModelRuntime
from .scheduler import ModelScheduler, SchedulerConfig, SequenceControl

request_log = logging.getLogger("keras_gates.serving.requests")
HEADER_LENGTH = b"inference-header-content-length"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Server settings.

    Args:
        scheduler: batching and session settings applied to every model.
        max_body_bytes: larger request bodies (after decompression) get 413.
        sweep_interval_s: how often idle sessions are evicted (default: a quarter of the timeout).
        model_control_mode: ``"explicit"`` (load/unload through the repository API) or
            ``"poll"`` (rescan the repository every ``repository_poll_s`` seconds).
    """

    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    max_body_bytes: int = 64 * 1024 * 1024
    sweep_interval_s: float | None = None
    model_control_mode: str = "explicit"  # or "poll" (see serving/control.py)
    repository_poll_s: float = 15.0

    def __post_init__(self):
        if self.model_control_mode not in ("explicit", "poll"):
            raise ValueError(
                "Received an invalid value for argument `model_control_mode`, expected "
                f"'explicit' or 'poll', got {self.model_control_mode!r}."
            )
        if not self.repository_poll_s > 0:
            raise ValueError(
                "Received an invalid value for argument `repository_poll_s`, expected a number "
                f"> 0, got {self.repository_poll_s!r}."
            )


class Served:
    """The models an app serves: schedulers and metrics by ``(name, version)``."""

    def __init__(self, repository: ModelRepository, config: ServerConfig):
        self.repository = repository
        self.config = config
        self.metrics = ServingMetrics()
        self.schedulers: dict[tuple[str, str], ModelScheduler] = {}
        self.model_metrics = {}
        for runtime in repository.runtimes():
            self.attach(runtime)
        self.ready = True

    def attach(self, runtime: ModelRuntime) -> ModelScheduler | None:
        """Serve ``runtime``; returns the scheduler it replaces (to be drained and closed)."""
        key = (runtime.name, runtime.version)
        previous = self.schedulers.get(key)
        metrics = self.metrics.for_model(*key)
        scheduler = ModelScheduler(
            runtime, self.config.scheduler, observer=metrics, on_sessions=metrics.sessions_changed
        )
        self.repository.put(runtime)
        self.model_metrics[key], self.schedulers[key] = metrics, scheduler
        return previous

    def detach(self, key: tuple[str, str]) -> ModelScheduler:
        """Stop routing requests to ``key``; returns its scheduler (to be drained and closed)."""
        self.repository.drop(*key)
        self.model_metrics.pop(key)
        return self.schedulers.pop(key)

    def get(self, name: str, version: str | None = None):
        key = self.repository.resolve(name, version)
        return self.schedulers[key], self.model_metrics[key]

    def close(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.close()


def answer_error(err: BaseException, where: str) -> Response:
    """The HTTP answer to ``err`` (see :func:`~keras_gates.serving.errors.error_payload`)."""
    status, message = error_payload(err, where)
    return Response(encode_error(message), status_code=status, media_type="application/json")


def json_response(doc, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def boundary(endpoint):
    """Answer ServingErrors with their status and anything else with a logged, opaque 500."""

    @functools.wraps(endpoint)
    async def guarded(*args, **kwargs):
        try:
            return await endpoint(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - error_payload logs what it cannot name
            return answer_error(err, endpoint.__name__)

    return guarded


async def _read_body(receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The request body from ASGI ``receive``, refusing more than ``limit`` bytes (413)."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"Request body of {declared.decode()} bytes exceeds the limit of {limit} bytes "
            "(--max-body-mb); send smaller batches."
        )
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("The client disconnected before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"Request body exceeds the limit of {limit} bytes (--max-body-mb)."
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = headers.get(b"content-encoding")
    if encoding and encoding != b"identity":
        body = _decompress(body, encoding.decode("latin-1"), limit)
    return body


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate.")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise BadRequest(f"Request body is not valid {encoding} data: {err}.") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"Decompressed request body exceeds the limit of {limit} bytes.")
    return data


def _header_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(
            f"Inference-Header-Content-Length must be an integer, got {value.decode()!r}."
        ) from None


def _sequence(parameters: dict) -> SequenceControl | None:
    seq_id = parameters.get("sequence_id")
    start = parameters.get("sequence_start", False)
    end = parameters.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise BadRequest(
            f"Parameters sequence_start and sequence_end must be true or false, got {start!r} "
            f"and {end!r}."
        )
    if seq_id is None or (seq_id == 0 and not isinstance(seq_id, bool)) or seq_id == "":
        if start or end:
            raise BadRequest("sequence_start/sequence_end need a non-zero sequence_id.")
        return None
    if isinstance(seq_id, bool) or not isinstance(seq_id, int | str):
        raise BadRequest(f"Parameter sequence_id must be an integer or a string, got {seq_id!r}.")
    return SequenceControl(seq_id, start, end)


INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_WANTED = frozenset((b"content-length", b"content-encoding", HEADER_LENGTH))


class InferFastPath:
    """Answers ``POST /v2/models/{m}[/versions/{v}]/infer`` straight from ASGI.

    The app calls :meth:`handle` before anything else: the hot path skips routing, middleware,
    request objects and dependency solving (about a third of the per-request time of a FastAPI
    route here). Everything else goes on to FastAPI.
    """

    def __init__(self, served: Served):
        self.served = served

    async def handle(self, scope, receive, send) -> bool:
        """Serve ``scope`` if it is an inference request; returns whether it did."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        match = INFER_PATH.match(scope["path"])
        if match is None:
            return False
        headers = {k: v for k, v in scope["headers"] if k in _WANTED}
        status, payload, extra = await infer(
            self.served, match[1], match[2], headers, receive, scope
        )
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(payload)).encode()), *extra],
        }
        await send(start)
        await send({"type": "http.response.body", "body": payload})
        return True


_JSON = [(b"content-type", b"application/json")]
_BINARY = b"application/octet-stream"


async def infer(served: Served, name: str, version: str | None, headers, receive, scope):
    """One inference request; returns ``(status, body, headers)``. The error boundary of /infer:
    ServingErrors answer with their status, anything else is logged and answers an opaque 500."""
    start = time.perf_counter()
    metrics = None
    status, request_id, seq = 200, None, None
    try:
        scheduler, metrics = served.get(name, version)
        if not served.ready:
            raise Unavailable("The server is shutting down; retry on another instance.")
        with scheduler.active():
            body = await _read_body(receive, headers, served.config.max_body_bytes)
            decoded = decode_request(body, _header_length(headers))
            request_id = decoded.id
            seq = _sequence(decoded.parameters)
            outputs = await scheduler.infer(decoded.inputs, decoded.outputs, seq)
        payload, header_length = encode_response(
            scheduler.name, scheduler.version, request_id, outputs, decoded.binary_outputs
        )
        if header_length is None:
            extra = _JSON
        else:
            extra = [
                (b"content-type", _BINARY),
                (HEADER_LENGTH, str(header_length).encode()),
            ]
    except Exception as err:  # noqa: BLE001 - error_payload logs what it cannot name
        status, message = error_payload(err, scope["path"])
        payload, extra = encode_error(message), _JSON
    seconds = time.perf_counter() - start
    client = scope.get("client")
    account(served, metrics, status, seconds, scope["path"], client and client[0], request_id, seq)
    return status, payload, extra


def account(
    served: Served, metrics, status: int, seconds: float, path: str, client, request_id, seq
):
    """Count one inference request (either transport) in the metrics and write its log line."""
    if metrics is None:
        served.metrics.failure_unknown(status)
    elif status == 200:
        metrics.request_done(seconds)
    else:
        metrics.request_failed(status, seconds)
    if request_log.isEnabledFor(logging.INFO):
        _log_request(path, client, status, seconds, request_id, seq)


def _log_request(path: str, client, status: int, seconds: float, request_id, seq) -> None:
    record = {
        "event": "infer",
        "path": path,
        "status": status,
        "ms": round(seconds * 1000, 3),
        "client": client,
    }
    if request_id is not None:
        record["id"] = request_id
    if seq is not None:
        record["sequence_id"] = seq.id
    request_log.info(orjson.dumps(record).decode())
