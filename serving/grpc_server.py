"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on grpcio's asyncio
server, in the HTTP server's process and event loop.

Both transports serve from the same :class:`~keras_gates.serving.server.InferenceServer`, so one
scheduler batches HTTP and gRPC requests together and a sequence started on one transport
goes on over the other. ``ModelStreamInfer`` serves every message of a stream as it arrives
(messages of different sequences batch together; those of one sequence run in order, behind its
session's lock) and answers each with a ``ModelStreamInferResponse``: the result, or
``error_message`` for a bad message, after which the stream goes on.

Errors are the HTTP transport's :class:`~keras_gates.serving.errors.ServingError` s with the same
messages, their status mapped by :func:`~keras_gates.serving.errors.grpc_code`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from keras_gates.version import __version__

from . import control, documents, grpc_codec
from .codec import InferRequest
from .errors import ServingError, error_payload, grpc_code
from .restricted import grpc_interceptor
from .server import InferenceServer, RequestRecord, listening_log, request_log

log = logging.getLogger("keras_gates.serving")
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
STREAM_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
MAX_PENDING = 1024  # messages of one stream in flight before the server stops reading it
SHUTDOWN_MESSAGE = (
    "The server is shutting down: the requests this stream had sent were answered; open a new "
    "stream on another instance for the rest."
)


@dataclasses.dataclass(frozen=True)
class GrpcConfig:
    """Where and how the gRPC transport listens.

    Args:
        port: TCP port (Triton's convention is 8001).
        host: bind address (default: loopback).
        grace_s: on shutdown, how long in-flight calls may take to finish.
        reuse_port: share the port with other processes (``--workers``).
    """

    port: int
    host: str = "127.0.0.1"
    grace_s: float = 30.0
    reuse_port: bool = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _grpc_error(err: BaseException, where: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC answer to ``err``: :func:`~keras_gates.serving.errors.error_payload`'s status as a
    gRPC code, and its message."""
    status, message = error_payload(err, where)
    return grpc.StatusCode[grpc_code(status)], message


def _rpc(method):
    """The error boundary of one RPC: ServingErrors abort with their code and message, anything
    else is logged with its traceback and aborts INTERNAL without details."""

    @functools.wraps(method)
    async def guarded(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as err:  # noqa: BLE001 - error_payload logs what it cannot name
            code, message = _grpc_error(err, f"gRPC {method.__name__}")
        await context.abort(code, message)

    return guarded


class GrpcService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs answered from the models of ``server``."""

    def __init__(self, server: InferenceServer):
        self.server = server
        self.streams: set[_Stream] = set()
        self.closing = False

    # ---- health and metadata -------------------------------------------------------------
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.server.ready)

    @_rpc
    async def ModelReady(self, request, context):
        self.server.get(request.name, request.version or None)
        return service_pb2.ModelReadyResponse(ready=self.server.ready)

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(
            name="keras-gates", version=__version__, extensions=documents.EXTENSIONS
        )

    @_rpc
    async def ModelMetadata(self, request, context):
        scheduler, _ = self.server.get(request.name, request.version or None)
        versions = [request.version] if request.version else self.versions(request.name)
        return grpc_codec.model_metadata(documents.model_metadata(scheduler, versions))

    @_rpc
    async def ModelConfig(self, request, context):
        scheduler, _ = self.server.get(request.name, request.version or None)
        doc = documents.model_config(scheduler, len(self.versions(request.name)))
        return grpc_codec.model_config(doc, scheduler.config.max_queue_delay_ms)

    @_rpc
    async def ModelStatistics(self, request, context):
        if not request.name:  # every model, as Triton does
            keys = list(self.server.schedulers)
        elif request.version:
            keys = [(request.name, request.version)]
        else:
            keys = [(request.name, v) for v in self.versions(request.name)]
        entries = [documents.model_stats(*self.server.get(*key)) for key in keys]
        return grpc_codec.model_statistics(entries)

    @_rpc
    async def RepositoryIndex(self, request, context):
        state = "READY" if self.server.ready else "UNAVAILABLE"
        if request.ready and state != "READY":
            return service_pb2.RepositoryIndexResponse()
        response = service_pb2.RepositoryIndexResponse()
        for name, version in self.server.schedulers:
            response.models.add(name=name, version=version, state=state)
        return response

    @_rpc
    async def RepositoryModelLoad(self, request, context):
        await control.explicit(self.server, "load", request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        await control.explicit(self.server, "unload", request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    def versions(self, name: str) -> list[str]:
        return self.server.repository.versions(name)

    # ---- inference -----------------------------------------------------------------------
    async def ModelInfer(self, request, context):
        try:
            return await self.infer(request, context, INFER_PATH)
        except ServingError as err:  # infer() mapped (and logged) every error already
            await context.abort(grpc.StatusCode[grpc_code(err.status)], err.message)

    async def ModelStreamInfer(self, request_iterator, context):
        stream = _Stream(self, request_iterator, context)
        self.streams.add(stream)
        try:
            if self.closing:
                stream.shutdown()
            while (response := await stream.queue.get()) is not None:
                yield response
        finally:
            self.streams.discard(stream)
            stream.reader.cancel()
        if stream.shut_down:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(SHUTDOWN_MESSAGE)

    async def infer(
        self, request, context, path: str, admitted: bool = False, response=None
    ) -> service_pb2.ModelInferResponse:
        """One inference request; raises a ServingError (an unexpected error becomes a logged
        INTERNAL one). Counted in the metrics and the request log like an HTTP request.
        ``admitted``: read while the server was ready (see :meth:`InferenceServer.infer`);
        ``response``: the message to write the answer into (default: a new one)."""
        record = RequestRecord(path)

        async def decode() -> InferRequest:
            return grpc_codec.decode_infer_request(request)

        try:
            scheduler, decoded, outputs = await self.server.infer(
                request.model_name, request.model_version or None, decode, record, admitted
            )
            return grpc_codec.encode_infer_response(
                scheduler.name, scheduler.version, decoded.id, outputs, response
            )
        except asyncio.CancelledError:
            record.status = 499  # the client went away
            raise
        except Exception as err:  # noqa: BLE001 - error_payload logs what it cannot name
            record.status, message = error_payload(err, f"gRPC {path}")
            if isinstance(err, ServingError):
                raise
            raise ServingError(message, record.status) from None
        finally:
            peer = context.peer() if request_log.isEnabledFor(logging.INFO) else None
            self.server.account(record, peer)


class _Stream:
    """One ``ModelStreamInfer`` call: a reader task starts a task per message; each puts its
    response on ``queue``, which the call's generator writes out. ``None`` ends it, once the
    reader has stopped and every message it read is answered: put there by done callbacks,
    which run however a task ends (a reader cancelled before it ever ran included)."""

    def __init__(self, service: GrpcService, requests, context):
        self.service = service
        self.context = context
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending: set[asyncio.Task] = set()
        self.shut_down = False
        self.ended = False
        self.reader = asyncio.create_task(self._read(requests))
        self.reader.add_done_callback(self._maybe_end)

    def shutdown(self) -> None:
        """Stop reading; the messages already read are answered, then the stream ends
        (``UNAVAILABLE``, unless the client had already half-closed it)."""
        if not self.reader.done():
            self.shut_down = True
            self.reader.cancel()

    async def _read(self, requests) -> None:
        try:
            async for request in requests:
                if len(self.pending) >= MAX_PENDING:
                    await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(self._answer(request, self.service.server.ready))
                self.pending.add(task)
                task.add_done_callback(self._answered)
        except asyncio.CancelledError:
            pass  # shutdown, or the call ended
        except Exception as err:  # noqa: BLE001 - the client reset the stream
            log.debug("gRPC stream read ended: %r", err)

    def _answered(self, task: asyncio.Task) -> None:
        self.pending.discard(task)
        self._maybe_end()

    def _maybe_end(self, _: asyncio.Task | None = None) -> None:
        if self.reader.done() and not self.pending and not self.ended:
            self.ended = True
            self.queue.put_nowait(None)

    async def _answer(self, request, admitted: bool) -> None:
        """Answer one message; one read while the server was ready is served even if the server
        has begun shutting down since (the stream's messages already read are answered)."""
        response = service_pb2.ModelStreamInferResponse()
        try:
            await self.service.infer(
                request, self.context, STREAM_PATH, admitted, response.infer_response
            )
        except ServingError as err:
            echo = service_pb2.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            response = service_pb2.ModelStreamInferResponse(
                error_message=err.message, infer_response=echo
            )
        self.queue.put_nowait(response)


class GrpcServer:
    """The gRPC transport of one app: started and stopped by the app's lifespan."""

    def __init__(self, server: InferenceServer, config: GrpcConfig):
        self.config = config
        self.service = GrpcService(server)
        options = [
            ("grpc.max_receive_message_length", server.config.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(config.reuse_port)),
        ]
        restricted = server.config.restricted_api
        interceptors = [grpc_interceptor(restricted)] if restricted else []
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, self.server)

    async def start(self) -> None:
        address = self.config.address
        try:
            self.port = self.server.add_insecure_port(address)  # the port it took, for port 0
        except RuntimeError as err:
            raise RuntimeError(
                f"Cannot listen for gRPC on {address} ({err}); the port may be in use: pick "
                "another --grpc-port."
            ) from None
        await self.server.start()
        address = dataclasses.replace(self.config, port=self.port).address
        listening_log.info("gRPC listening on %s", address)

    async def stop(self) -> None:
        """Refuse new calls, answer what open streams had sent and end them (UNAVAILABLE), let
        in-flight unary calls finish within ``grace_s``."""
        self.service.closing = True
        stopping = asyncio.create_task(self.server.stop(self.config.grace_s))
        for stream in list(self.service.streams):
            stream.shutdown()
        await stopping
