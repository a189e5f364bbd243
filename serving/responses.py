"""The HTTP transport's answers: JSON documents, and errors through the one error mapping.

Every HTTP error answer is ``{"error": message}`` with the status
:func:`~keras_gates.serving.errors.error_payload` gives: a
:class:`~keras_gates.serving.errors.ServingError` answers with its own status and message,
anything else is logged with its traceback and answers an opaque 500. :func:`boundary` applies it
to a route, :func:`add_error_handlers` to FastAPI's own errors (unknown route, bad parameters),
and the inference handler calls :func:`error_answer` itself.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .codec import encode_error
from .errors import BadRequest, ServingError, error_payload


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def error_answer(err: BaseException, where: str) -> tuple[int, bytes]:
    """``(status, JSON body)`` answering ``err``; ``where`` names the endpoint in the log line of
    an unexpected error."""
    status, message = error_payload(err, where)
    return status, encode_error(message)


def answer_error(err: BaseException, where: str) -> Response:
    """The HTTP response answering ``err`` (see :func:`error_answer`)."""
    status, body = error_answer(err, where)
    return Response(body, status_code=status, media_type="application/json")


def boundary(endpoint: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """``endpoint`` with every exception it raises answered by :func:`answer_error`."""

    @functools.wraps(endpoint)
    async def guarded(*args, **kwargs):
        try:
            return await endpoint(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - error_payload logs what it cannot name
            return answer_error(err, endpoint.__name__)

    return guarded


def add_error_handlers(app: FastAPI) -> None:
    """Answer FastAPI's own errors (no such route, invalid path or query) like any other."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see /docs for the API."
        return answer_error(ServingError(message, exc.status_code), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return answer_error(BadRequest(f"Invalid request: {exc.errors()}"), request.url.path)
