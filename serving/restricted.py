"""Triton's restricted APIs: groups of endpoints that answer only requests carrying a header.

``--restricted-api model-repository,statistics:admin-key=SECRET`` (Triton's
``--http-restricted-api`` / ``--grpc-restricted-protocol`` syntax; repeatable, each group in at
most one) restricts those groups on both transports. Over HTTP a request without the header (name
case-insensitive, value exact) gets 403 ``{"error": "This API is restricted, expecting header
'admin-key'"}``, Triton's answer; over gRPC it needs the metadata key
``triton-grpc-protocol-admin-key`` (Triton's prefix; the bare key is accepted too) and gets
``PERMISSION_DENIED`` (Triton answers ``UNAVAILABLE``, which retrying clients retry).

:func:`http_group` and :data:`GRPC_GROUPS` say which group a route or an RPC belongs to;
:meth:`RestrictedApi.refuse_http` answers a refused HTTP request at the ASGI level (before the
inference fast path and routing) and :func:`grpc_interceptor` refuses an RPC before its handler.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
from collections.abc import Iterable, Mapping

from .errors import Forbidden, grpc_code

# Triton 2.51's groups (``tritonserver --help``); this server has no shared-memory, trace or
# logging endpoints, so those restrict what would answer 404 anyway.
GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
GRPC_PREFIX = "triton-grpc-protocol-"
_SPEC = re.compile(r"^([^:]+):([^=]+)=(.+)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


@dataclasses.dataclass(frozen=True)
class Restriction:
    """One ``GROUPS:HEADER=VALUE``: the groups answer only requests with ``header: value``."""

    groups: frozenset[str]
    header: str  # lower case
    value: str


@dataclasses.dataclass(frozen=True)
class RestrictedApi:
    """The restrictions of one server (a group is in at most one); empty: nothing restricted."""

    restrictions: tuple[Restriction, ...] = ()
    _by_group: dict[str, Restriction] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self):
        for restriction in self.restrictions:
            for group in sorted(restriction.groups):
                if group in self._by_group:
                    raise ValueError(
                        f"Received --restricted-api with group {group!r} in two settings, "
                        "expected each group in at most one (as Triton does)."
                    )
                self._by_group[group] = restriction

    @classmethod
    def parse(cls, specs: Iterable[str]) -> RestrictedApi:
        """The restrictions of ``--restricted-api`` values (``GROUP[,GROUP...]:HEADER=VALUE``)."""
        return cls(tuple(_parse_one(spec) for spec in specs))

    def __bool__(self) -> bool:
        return bool(self._by_group)

    def restricts(self, group: str) -> bool:
        return group in self._by_group

    def check(self, group: str | None, headers: Mapping[str, str], grpc: bool = False) -> None:
        """Raise :class:`Forbidden` unless ``headers`` (lower-case names) satisfy ``group``."""
        restriction = self._by_group.get(group) if group is not None else None
        if restriction is None:
            return
        if grpc:
            key = GRPC_PREFIX + restriction.header
            got = headers.get(key, headers.get(restriction.header))
            if got is None or not _same(got, restriction.value):
                raise Forbidden(f"This protocol is restricted, expecting header '{key}'")
            return
        got = headers.get(restriction.header)
        if got is None or not _same(got, restriction.value):
            raise Forbidden(f"This API is restricted, expecting header '{restriction.header}'")

    async def refuse_http(self, scope: dict, send) -> bool:
        """Answer a refused HTTP request (403); returns whether it did."""
        if scope["type"] != "http":
            return False
        group = http_group(scope["method"], scope["path"])
        if group is None or group not in self._by_group:
            return False
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self.check(group, headers)
        except Forbidden as err:
            from .responses import error_answer

            status, body = error_answer(err, scope["path"])
            start = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": status, "headers": start})
            await send({"type": "http.response.body", "body": body})
            return True
        return False


def _same(got: str, want: str) -> bool:
    return hmac.compare_digest(got.encode(), want.encode())


def _parse_one(spec: str) -> Restriction:
    expected = (
        "expected GROUP[,GROUP...]:HEADER=VALUE (Triton's syntax), e.g. "
        "'model-repository,statistics:admin-key=SECRET'"
    )
    match = _SPEC.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(
            f"Received an invalid value for --restricted-api, {expected}; got {spec!r}."
        )
    names, header, value = match.groups()
    groups = [g.strip() for g in names.split(",")]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(
            f"Received --restricted-api {spec!r} with unknown group(s) "
            f"{', '.join(map(repr, unknown))}; expected groups among {', '.join(GROUPS)}."
        )
    if not _HEADER_NAME.match(header):
        raise ValueError(
            f"Received --restricted-api {spec!r} whose header {header!r} is not a valid header "
            f"name; {expected}."
        )
    return Restriction(frozenset(groups), header.lower(), value)


# ---- which group an endpoint belongs to ----------------------------------------------------------
_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
_HTTP_GROUPS = [  # (pattern of the path, group); the first match wins
    (re.compile(r"^/v2/health/(?:live|ready)$"), "health"),
    (re.compile(r"^/v2/models/stats$"), "statistics"),
    (re.compile(rf"^{_MODEL}/ready$"), "health"),
    (re.compile(rf"^{_MODEL}/(?:infer|generate|generate_stream)$"), "inference"),
    (re.compile(rf"^{_MODEL}/config$"), "model-config"),
    (re.compile(rf"^{_MODEL}/stats$"), "statistics"),
    (re.compile(rf"^{_MODEL}/trace/setting$"), "trace"),
    (re.compile(rf"^(?:/v2|{_MODEL})$"), "metadata"),
    (re.compile(r"^/v2/repository(?:/.*)?$"), "model-repository"),
    (re.compile(r"^/v2/(?:systemsharedmemory|cudasharedmemory)(?:/.*)?$"), "shared-memory"),
    (re.compile(r"^/v2/trace/setting$"), "trace"),
    (re.compile(r"^/v2/logging$"), "logging"),
]

# Each RPC of ``inference.GRPCInferenceService`` and its group.
GRPC_GROUPS = {
    "ServerLive": "health",
    "ServerReady": "health",
    "ModelReady": "health",
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository",
    "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory",
    "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory",
    "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory",
    "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}


def http_group(method: str, path: str) -> str | None:
    """The group of an HTTP route (``None``: never restricted, such as ``/metrics`` and
    ``/docs``, which Triton serves on no restricted port either)."""
    for pattern, group in _HTTP_GROUPS:
        if pattern.match(path):
            return group
    return None


def grpc_interceptor(restricted: RestrictedApi):
    """A ``grpc.aio`` server interceptor refusing restricted RPCs without their header."""
    import grpc

    class Interceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            rpc = details.method.rsplit("/", 1)[-1]
            group = GRPC_GROUPS.get(rpc)
            if group is None or not restricted.restricts(group):
                return await continuation(details)
            metadata = {k.lower(): v for k, v in details.invocation_metadata or ()}
            try:
                restricted.check(group, metadata, grpc=True)
            except Forbidden as err:
                return _refusal(rpc, err.message)
            return await continuation(details)

    def _refusal(rpc: str, message: str):
        async def refuse(request, context):
            await context.abort(grpc.StatusCode[grpc_code(Forbidden.status)], message)

        if rpc == "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)

    return Interceptor()
