"""The ASGI app: :func:`create_app` wires the protocol's routes to the models of a repository.

Endpoints (KServe v2 / Triton): health, server and model metadata, readiness, ``/infer`` (JSON and
binary tensors, sequence parameters), Triton's model ``/config`` and ``/stats``, the repository
extension (index, load, unload; :mod:`.control`) and Prometheus ``/metrics``. OpenAPI docs are
served at ``/docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from keras_gates.version import __version__

from . import control, documents
from .http_infer import InferFastPath, infer
from .repository import ModelRepository
from .responses import add_error_handlers, boundary, json_response
from .restricted import RestrictedApi
from .server import InferenceServer, ServerConfig

if TYPE_CHECKING:
    from .grpc_server import GrpcConfig

_INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {
                    "id": "42",
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6}
                    ],
                    "parameters": {"sequence_id": 7, "sequence_start": True},
                }
            },
            "application/octet-stream": {
                "schema": {
                    "description": "JSON header of Inference-Header-Content-Length bytes, then "
                    "the binary tensors in input order."
                }
            },
        },
    }
}


class ServingApp(FastAPI):
    """A FastAPI app that hands inference requests to :class:`InferFastPath` before routing
    (after refusing the requests a restricted group lacks the header of: :mod:`.restricted`)."""

    fast_path: InferFastPath | None = None
    restricted: RestrictedApi | None = None

    async def __call__(self, scope, receive, send) -> None:
        if self.restricted and await self.restricted.refuse_http(scope, send):
            return
        if self.fast_path is not None and await self.fast_path.handle(scope, receive, send):
            return
        await super().__call__(scope, receive, send)


def create_app(
    repository: ModelRepository | str | Path,
    config: ServerConfig | None = None,
    grpc: GrpcConfig | None = None,
) -> FastAPI:
    """The ASGI app serving every model of ``repository`` (a path is loaded first).

    Worker threads start here; the app's lifespan (run by uvicorn) makes the server ready, evicts
    idle sessions and, on shutdown, finishes queued requests and stops the threads. With ``grpc``,
    the lifespan also serves the protocol's gRPC transport on the same event loop and models
    (:mod:`.grpc_server`).
    """
    config = config or ServerConfig()
    if not isinstance(repository, ModelRepository):
        repository = ModelRepository.load(repository)
    server = InferenceServer(repository, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        grpc_server = await _start_grpc(server, grpc) if grpc is not None else None
        app.state.grpc = grpc_server  # its port, where ``grpc.port`` was 0
        tasks = [asyncio.create_task(_sweep_forever(server))]
        if server.config.model_control_mode == "poll":
            tasks.append(asyncio.create_task(control.poll_forever(server)))
        server.phase = "ready"
        try:
            yield
        finally:
            server.phase = "stopping"
            for task in tasks:
                task.cancel()
            if grpc_server is not None:
                await grpc_server.stop()
            await asyncio.to_thread(server.close)

    app = ServingApp(
        title="keras-gates inference server",
        version=__version__,
        description="Open Inference Protocol (KServe v2) with dynamic batching of variable-length "
        "sequences and stateful streaming sessions.",
        lifespan=lifespan,
    )
    app.state.server = server
    add_error_handlers(app)
    _add_server_routes(app, server)
    _add_model_routes(app, ModelRoutes(server))
    control.add_routes(app, server)
    app.fast_path = InferFastPath(server)
    app.restricted = config.restricted_api
    return app


async def _start_grpc(server: InferenceServer, config: GrpcConfig):
    from .grpc_server import GrpcServer  # grpcio is imported only when gRPC is served

    transport = GrpcServer(server, config)
    await transport.start()
    return transport


async def _sweep_forever(server: InferenceServer) -> None:
    timeout = server.config.scheduler.session_idle_timeout_s
    interval = server.config.sweep_interval_s or max(min(timeout / 4, 5.0), 0.05)
    while True:
        await asyncio.sleep(interval)
        for scheduler in server.schedulers.values():
            scheduler.sweep()


def _add_server_routes(app: FastAPI, server: InferenceServer) -> None:
    @app.get("/v2/health/live", tags=["health"])
    async def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        return json_response({"ready": server.ready}, 200 if server.ready else 503)

    @app.get("/v2", tags=["metadata"])
    async def server_metadata() -> Response:
        return json_response(
            {"name": "keras-gates", "version": __version__, "extensions": documents.EXTENSIONS}
        )

    @app.get("/v2/models/stats", tags=["statistics"])
    @boundary
    async def all_stats() -> Response:
        return json_response(
            {
                "model_stats": [
                    documents.model_stats(s, server.model_metrics[key])
                    for key, s in server.schedulers.items()
                ]
            }
        )

    @app.get("/metrics", tags=["metrics"])
    async def metrics() -> Response:
        for key, scheduler in server.schedulers.items():
            server.model_metrics[key].queued.set(scheduler.queued)
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class ModelRoutes:
    """The endpoints under ``/v2/models/{model_name}[/versions/{version}]``."""

    def __init__(self, server: InferenceServer):
        self.server = server

    async def metadata(self, model_name: str, version: str | None = None) -> Response:
        scheduler, _ = self.server.get(model_name, version)
        versions = [version] if version else self.server.repository.versions(model_name)
        return json_response(documents.model_metadata(scheduler, versions))

    async def model_ready(self, model_name: str, version: str | None = None) -> Response:
        scheduler, _ = self.server.get(model_name, version)
        ok = self.server.ready
        doc = {"name": scheduler.name, "version": scheduler.version, "ready": ok}
        return json_response(doc, 200 if ok else 503)

    async def config(self, model_name: str, version: str | None = None) -> Response:
        scheduler, _ = self.server.get(model_name, version)
        count = len(self.server.repository.versions(model_name))
        return json_response(documents.model_config(scheduler, count))

    async def stats(self, model_name: str, version: str | None = None) -> Response:
        # one version's statistics, or every version's (as Triton does)
        versions = [version] if version else self.server.repository.versions(model_name)
        entries = [documents.model_stats(*self.server.get(model_name, v)) for v in versions]
        return json_response({"model_stats": entries})

    async def infer_for_openapi(self, request: Request) -> Response:
        """The ``/infer`` route as the OpenAPI document lists it. InferFastPath answers every
        ``/infer`` request before routing, with the same handler, so this runs only if that
        middleware is bypassed."""
        status, payload, extra = await infer(
            self.server,
            request.path_params["model_name"],
            request.path_params.get("version"),
            dict(request.headers.raw),
            request.receive,
            request.scope,
        )
        headers = {k.decode(): v.decode() for k, v in extra}
        return Response(payload, status_code=status, headers=headers)


def _add_model_routes(app: FastAPI, routes: ModelRoutes) -> None:
    table = [  # (path suffix, method, tag, endpoint)
        ("", "GET", "metadata", boundary(routes.metadata)),
        ("/ready", "GET", "health", boundary(routes.model_ready)),
        ("/config", "GET", "metadata", boundary(routes.config)),
        ("/stats", "GET", "statistics", boundary(routes.stats)),
        ("/infer", "POST", "inference", routes.infer_for_openapi),  # answers its own errors
    ]
    for suffix, method, tag, endpoint in table:
        extra = {"openapi_extra": _INFER_DOC} if suffix == "/infer" else {}
        for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{version}"):
            app.add_api_route(prefix + suffix, endpoint, methods=[method], tags=[tag], **extra)
