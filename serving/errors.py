"""Errors the service answers with: each carries its HTTP status and a message for the client.

Every layer raises these for problems it can name (bad input, unknown model, overload). Every
transport answers an exception through :func:`error_payload`, the one mapping: a
:class:`ServingError` gives its status and message (HTTP writes ``{"error": "..."}``, gRPC aborts
with :func:`grpc_code` of the status); any other exception is a bug, logged with its traceback and
answered 500 with a message that leaks nothing.
"""

from __future__ import annotations

import logging

log = logging.getLogger("keras_gates.serving")

INTERNAL_ERROR = "Internal server error; the server log has the details."


class ServingError(Exception):
    """A problem the client can act on; ``status`` is the HTTP status to answer with."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadRequest(ServingError):
    """The request is malformed or does not match the model (HTTP 400)."""

    status = 400


class Forbidden(ServingError):
    """The endpoint's group is restricted (``--restricted-api``) and the request lacks its header
    (HTTP 403)."""

    status = 403


class NotFound(ServingError):
    """Unknown model or version (HTTP 404)."""

    status = 404


class PayloadTooLarge(ServingError):
    """The request body is larger than the configured limit (HTTP 413)."""

    status = 413


class Unavailable(ServingError):
    """Overloaded (queue or session cap reached) or not ready (HTTP 503)."""

    status = 503


# The gRPC status code answering each HTTP status (the gRPC transport's only error mapping).
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def grpc_code(status: int) -> str:
    """The name of the ``grpc.StatusCode`` for an HTTP ``status`` (``UNKNOWN`` when unmapped)."""
    return GRPC_CODES.get(status, "UNKNOWN")


def error_payload(err: BaseException, where: str) -> tuple[int, str]:
    """The answer to ``err``: ``(HTTP status, message for the client)``.

    Args:
        err: the exception a handler raised.
        where: what was being served (an endpoint or path), for the log line of an unexpected
            error; it is never sent to the client.
    """
    if isinstance(err, ServingError):
        return err.status, err.message
    log.error("Unhandled error in %s", where, exc_info=err)
    return 500, INTERNAL_ERROR
