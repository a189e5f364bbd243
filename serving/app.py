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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from keras_gates.version import __version__

from . import control, documents
from .errors import BadRequest, ServingError
from .protocol import (
    InferFastPath,
    Served,
    ServerConfig,
    answer_error,
    boundary,
    infer,
    json_response,
)
from .repository import ModelRepository

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
    """A FastAPI app that hands inference requests to :class:`InferFastPath` before routing."""

    fast_path: InferFastPath | None = None

    async def __call__(self, scope, receive, send) -> None:
        if self.fast_path is not None and await self.fast_path.handle(scope, receive, send):
            return
        await super().__call__(scope, receive, send)


def create_app(
    repository: ModelRepository | str | Path,
    config: ServerConfig | None = None,
    grpc: GrpcConfig | None = None,
) -> FastAPI:
    """The ASGI app serving every model of ``repository`` (a path is loaded first).

    Worker threads start here; the app's lifespan (run by uvicorn) evicts idle sessions and, on
    shutdown, finishes queued requests and stops the threads. With ``grpc``, the lifespan also
    serves the protocol's gRPC transport on the same event loop and models (:mod:`.grpc_server`).
    """
    config = config or ServerConfig()
    if not isinstance(repository, ModelRepository):
        repository = ModelRepository.load(repository)
    served = Served(repository, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        grpc_server = await _start_grpc(served, grpc) if grpc is not None else None
        tasks = [asyncio.create_task(_sweep_forever(served))]
        if served.config.model_control_mode == "poll":
            tasks.append(asyncio.create_task(control.poll_forever(served)))
        served.ready = True
        try:
            yield
        finally:
            served.ready = False
            for task in tasks:
                task.cancel()
            if grpc_server is not None:
                await grpc_server.stop()
            await asyncio.to_thread(served.close)

    app = ServingApp(
        title="keras-gates inference server",
        version=__version__,
        description="Open Inference Protocol (KServe v2) with dynamic batching of variable-length "
        "sequences and stateful streaming sessions.",
        lifespan=lifespan,
    )
    app.state.served = served
    _add_error_handlers(app)
    _add_server_routes(app, served)
    _add_model_routes(app, served)
    control.add_routes(app, served)
    app.fast_path = InferFastPath(served)
    return app


async def _start_grpc(served: Served, config: GrpcConfig):
    from .grpc_server import GrpcServer  # grpcio is imported only when gRPC is served

    server = GrpcServer(served, config)
    await server.start()
    return server


async def _sweep_forever(served: Served) -> None:
    timeout = served.config.scheduler.session_idle_timeout_s
    interval = served.config.sweep_interval_s or max(min(timeout / 4, 5.0), 0.05)
    while True:
        await asyncio.sleep(interval)
        for scheduler in served.schedulers.values():
            scheduler.sweep()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see /docs for the API."
        return answer_error(ServingError(message, exc.status_code), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return answer_error(BadRequest(f"Invalid request: {exc.errors()}"), request.url.path)


def _add_server_routes(app: FastAPI, served: Served) -> None:
    @app.get("/v2/health/live", tags=["health"])
    async def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        return json_response({"ready": served.ready}, 200 if served.ready else 503)

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
                    documents.model_stats(s, served.model_metrics[key])
                    for key, s in served.schedulers.items()
                ]
            }
        )

    @app.get("/metrics", tags=["metrics"])
    async def metrics() -> Response:
        for key, scheduler in served.schedulers.items():
            served.model_metrics[key].queued.set(scheduler.queued)
        return Response(generate_latest(served.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_model_routes(app: FastAPI, served: Served) -> None:
    def versioned(path: str) -> list[str]:
        return [
            f"/v2/models/{{model_name}}{path}",
            f"/v2/models/{{model_name}}/versions/{{version}}{path}",
        ]

    async def metadata(model_name: str, version: str | None = None) -> Response:
        scheduler, _ = served.get(model_name, version)
        versions = [version] if version else served.repository.versions(model_name)
        return json_response(documents.model_metadata(scheduler, versions))

    async def model_ready(model_name: str, version: str | None = None) -> Response:
        scheduler, _ = served.get(model_name, version)
        ok = served.ready
        doc = {"name": scheduler.name, "version": scheduler.version, "ready": ok}
        return json_response(doc, 200 if ok else 503)

    async def config(model_name: str, version: str | None = None) -> Response:
        scheduler, _ = served.get(model_name, version)
        count = len(served.repository.versions(model_name))
        return json_response(documents.model_config(scheduler, count))

    async def stats(model_name: str, version: str | None = None) -> Response:
        if version is None:  # every version of the model, as Triton does
            entries = [
                documents.model_stats(*served.get(model_name, v))
                for v in served.repository.versions(model_name)
            ]
        else:
            entries = [documents.model_stats(*served.get(model_name, version))]
        return json_response({"model_stats": entries})

    async def infer_route(request: Request) -> Response:
        """Documented here; InferFastPath answers it before routing (same handler)."""
        params = request.path_params
        headers = {k: v for k, v in request.headers.raw}
        status, payload, extra = await infer(
            served,
            params["model_name"],
            params.get("version"),
            headers,
            request.receive,
            request.scope,
        )
        return Response(
            payload, status_code=status, headers={k.decode(): v.decode() for k, v in extra}
        )

    for path in versioned(""):
        app.get(path, tags=["metadata"])(boundary(metadata))
    for path in versioned("/ready"):
        app.get(path, tags=["health"])(boundary(model_ready))
    for path in versioned("/config"):
        app.get(path, tags=["metadata"])(boundary(config))
    for path in versioned("/stats"):
        app.get(path, tags=["statistics"])(boundary(stats))
    for path in versioned("/infer"):
        app.post(path, tags=["inference"], openapi_extra=_INFER_DOC)(infer_route)
