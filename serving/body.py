"""The body of an HTTP request, read straight from ASGI: size-limited (413), decompressed
(``Content-Encoding: gzip``/``deflate``), and the binary tensor extension's
``Inference-Header-Content-Length`` that says where its JSON header ends."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import BadRequest, PayloadTooLarge

HEADER_LENGTH = b"inference-header-content-length"


async def read_body(
    receive: Callable[[], Awaitable[dict[str, Any]]], headers: dict[bytes, bytes], limit: int
) -> bytes:
    """The request body from ASGI ``receive``, decompressed; more than ``limit`` bytes (sent or
    decompressed) is refused with 413."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"Request body of {declared.decode()} bytes exceeds the limit of {limit} bytes "
            "(--max-body-mb); send smaller batches."
        )
    body = await _receive_all(receive, limit)
    encoding = headers.get(b"content-encoding")
    if encoding and encoding != b"identity":
        body = _decompress(body, encoding.decode("latin-1"), limit)
    return body


async def _receive_all(receive: Callable[[], Awaitable[dict[str, Any]]], limit: int) -> bytes:
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
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


def header_length(headers: dict[bytes, bytes]) -> int | None:
    """``Inference-Header-Content-Length`` (binary tensors follow that many bytes of JSON), or
    ``None`` for a JSON-only body."""
    value = headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(
            f"Inference-Header-Content-Length must be an integer, got {value.decode()!r}."
        ) from None
