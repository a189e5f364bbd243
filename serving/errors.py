"""Errors the service answers with: each carries its HTTP status and a message for the client.

Every layer raises these for problems it can name (bad input, unknown model, overload); the protocol
layer turns them into ``{"error": "..."}`` with their status. Any other exception is a bug: the
protocol layer logs it with its traceback and answers a 500 that leaks nothing.
"""

from __future__ import annotations


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
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def grpc_code(status: int) -> str:
    """The name of the ``grpc.StatusCode`` for an HTTP ``status`` (``UNKNOWN`` when unmapped)."""
    return GRPC_CODES.get(status, "UNKNOWN")
