"""HTTP inference: ``POST /v2/models/{m}[/versions/{v}]/infer``, answered straight from ASGI.

A request is a short pipeline: read the body (:mod:`.body`), decode it (:mod:`.codec`), serve it
(:meth:`~keras_gates.serving.server.InferenceServer.infer`) and encode the outputs; an error at
any step becomes the JSON error answer (:func:`~keras_gates.serving.responses.error_answer`).
Either way the request is then counted and logged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from .body import HEADER_LENGTH, header_length, read_body
from .codec import decode_request, encode_response
from .responses import error_answer
from .scheduler import ModelScheduler
from .server import InferenceServer, RequestRecord
from .tensors import InferRequest

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_WANTED = frozenset((b"content-length", b"content-encoding", HEADER_LENGTH))
_JSON = [(b"content-type", b"application/json")]
_BINARY = b"application/octet-stream"

Headers = list[tuple[bytes, bytes]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class InferFastPath:
    """Answers ``POST /v2/models/{m}[/versions/{v}]/infer`` straight from ASGI.

    The app calls :meth:`handle` before anything else: the hot path skips routing, middleware,
    request objects and dependency solving (about a third of the per-request time of a FastAPI
    route here). Everything else goes on to FastAPI.
    """

    def __init__(self, server: InferenceServer):
        self.server = server

    async def handle(self, scope: dict[str, Any], receive: Receive, send) -> bool:
        """Serve ``scope`` if it is an inference request; returns whether it did."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        match = INFER_PATH.match(scope["path"])
        if match is None:
            return False
        headers = {k: v for k, v in scope["headers"] if k in _WANTED}
        status, payload, extra = await infer(
            self.server, match[1], match[2], headers, receive, scope
        )
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(payload)).encode()), *extra],
        }
        await send(start)
        await send({"type": "http.response.body", "body": payload})
        return True


async def infer(
    server: InferenceServer,
    name: str,
    version: str | None,
    headers: dict[bytes, bytes],
    receive: Receive,
    scope: dict[str, Any],
) -> tuple[int, bytes, Headers]:
    """One inference request; returns ``(status, body, headers)`` and never raises."""
    record = RequestRecord(scope["path"])

    async def decode() -> InferRequest:
        body = await read_body(receive, headers, server.config.max_body_bytes)
        return decode_request(body, header_length(headers))

    try:
        payload, extra = _encode(*await server.infer(name, version, decode, record))
    except Exception as err:  # noqa: BLE001 - error_answer logs what it cannot name
        (record.status, payload), extra = error_answer(err, record.path), _JSON
    client = scope.get("client")
    server.account(record, client and client[0])
    return record.status, payload, extra


def _encode(
    scheduler: ModelScheduler, request: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, Headers]:
    """The response body and its content headers (binary tensors after a JSON header, or JSON)."""
    payload, json_length = encode_response(
        scheduler.name, scheduler.version, request.id, outputs, request.binary_outputs
    )
    if json_length is None:
        return payload, _JSON
    return payload, [(b"content-type", _BINARY), (HEADER_LENGTH, str(json_length).encode())]
