"""The composition root of the service: :class:`InferenceServer`, which both transports serve.

It builds a scheduler and metrics for every model of a repository, holds the server's readiness,
and runs the part of an inference request that no transport owns (resolve the model, refuse when
not ready, decode inside the model's in-flight count, run, count and log). The HTTP app
(:mod:`.app`) and the gRPC transport (:mod:`.grpc_server`) each take the same one and only read
and write their wire format around it, so one scheduler batches requests from both.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np
import orjson

from . import classification
from .errors import Unavailable
from .metrics import ModelMetrics, ServingMetrics
from .parameters import sequence_control
from .repository import ModelRepository
from .restricted import RestrictedApi
from .runtime import ModelRuntime
from .scheduler import ModelScheduler, SchedulerConfig, SequenceControl
from .tensors import InferRequest

request_log = logging.getLogger("keras_gates.serving.requests")
# Where each transport listens ("HTTP listening on URL", "gRPC listening on HOST:PORT"): written
# whatever --log-level says, so that a server started on port 0 always tells its port.
listening_log = logging.getLogger("keras_gates.serving.listening")

# Why a server that is not ready refuses inference (HTTP 503, gRPC UNAVAILABLE).
_NOT_READY = {
    "starting": "The server is not ready: it becomes ready when the ASGI server runs the app's "
    "lifespan (uvicorn does unless started with --lifespan off); retry in a moment.",
    "stopping": "The server is shutting down; retry on another instance.",
}


MODEL_CONTROL_MODES = ("explicit", "poll")  # see serving/control.py


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Server settings.

    Args:
        scheduler: batching and session settings applied to every model.
        max_body_bytes: larger request bodies (after decompression) get 413.
        sweep_interval_s: how often idle sessions are evicted (default: a quarter of the timeout).
        model_control_mode: ``"explicit"`` (load/unload through the repository API) or
            ``"poll"`` (rescan the repository every ``repository_poll_s`` seconds).
        restricted_api: endpoint groups that answer only requests carrying a header, on both
            transports (:mod:`.restricted`; ``--restricted-api``).
    """

    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    max_body_bytes: int = 64 * 1024 * 1024
    sweep_interval_s: float | None = None
    model_control_mode: str = "explicit"  # or "poll" (see serving/control.py)
    repository_poll_s: float = 15.0
    restricted_api: RestrictedApi = dataclasses.field(default_factory=RestrictedApi)

    def __post_init__(self):
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(
                "Received an invalid value for argument `model_control_mode`, expected one of "
                f"{MODEL_CONTROL_MODES}, got {self.model_control_mode!r}."
            )
        if not self.repository_poll_s > 0:
            raise ValueError(
                "Received an invalid value for argument `repository_poll_s`, expected a number "
                f"> 0, got {self.repository_poll_s!r}."
            )


@dataclasses.dataclass(slots=True)
class RequestRecord:
    """What the metrics and the request log keep of one inference request, filled in as the
    request is served (a request that fails early leaves the later fields ``None``)."""

    path: str
    start: float = dataclasses.field(default_factory=time.perf_counter)
    status: int = 200
    metrics: ModelMetrics | None = None
    request_id: str | None = None
    sequence: SequenceControl | None = None


class InferenceServer:
    """The models one server serves, by ``(name, version)``: their schedulers and metrics, and
    whether the server is ready.

    It is not ready until the app's lifespan starts it (``phase = "ready"``) and stops being
    ready when the lifespan ends (``"stopping"``); meanwhile inference answers 503.

    Args:
        repository: the models to serve; a scheduler (and worker thread) starts for each.
        config: the server settings.
    """

    def __init__(self, repository: ModelRepository, config: ServerConfig):
        self.repository = repository
        self.config = config
        self.metrics = ServingMetrics()
        self.schedulers: dict[tuple[str, str], ModelScheduler] = {}
        self.model_metrics: dict[tuple[str, str], ModelMetrics] = {}
        self.phase = "starting"  # then "ready" and "stopping", set by the app's lifespan
        for runtime in repository.runtimes():
            self.attach(runtime)

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

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

    def detach(self, key: tuple[str, str], reason: str | None = None) -> ModelScheduler:
        """Stop routing requests to ``key`` (``reason``: why it was unloaded, for the index and
        the requests that still name it); returns its scheduler (to be drained and closed)."""
        self.repository.drop(*key, reason)
        self.model_metrics.pop(key)
        return self.schedulers.pop(key)

    def get(self, name: str, version: str | None = None) -> tuple[ModelScheduler, ModelMetrics]:
        """The scheduler and metrics of a served model (the newest version by default); raises
        :class:`~keras_gates.serving.errors.NotFound` naming the served models."""
        key = self.repository.resolve(name, version)
        return self.schedulers[key], self.model_metrics[key]

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[], Awaitable[InferRequest]],
        record: RequestRecord,
        admitted: bool = False,
    ) -> tuple[ModelScheduler, InferRequest, dict[str, np.ndarray]]:
        """Serve one inference request whose transport decodes it with ``decode``.

        The request counts as in flight from before its body is decoded (a model being unloaded
        waits for it); ``record`` learns the model, id and sequence as they are known. Raises a
        :class:`~keras_gates.serving.errors.ServingError` for what the client can fix.
        ``admitted``: the transport took the request in while the server was ready (a message
        a gRPC stream had read before the shutdown), so it is served while stopping.
        """
        scheduler, record.metrics = self.get(name, version)
        if not (self.ready or admitted):
            raise Unavailable(_NOT_READY[self.phase])
        with scheduler.active():
            request = await decode()
            record.request_id = request.id
            record.sequence = sequence_control(request.parameters)
            if request.classification:
                classification.check(scheduler, request.classification)
            outputs = await scheduler.infer(request.inputs, request.outputs, record.sequence)
        if request.classification:  # the top-K classes instead of the values
            outputs = classification.classify(scheduler, outputs, request.classification)
        return scheduler, request, outputs

    def account(self, record: RequestRecord, client: str | None = None) -> None:
        """Count a finished inference request (either transport) and write its log line."""
        seconds = time.perf_counter() - record.start
        if record.metrics is None:
            self.metrics.failure_unknown(record.status)
        elif record.status == 200:
            record.metrics.request_done(seconds)
        else:
            record.metrics.request_failed(record.status, seconds)
        if request_log.isEnabledFor(logging.INFO):
            request_log.info(orjson.dumps(_log_line(record, seconds, client)).decode())

    def close(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.close()


def _log_line(record: RequestRecord, seconds: float, client: str | None) -> dict:
    line = {
        "event": "infer",
        "path": record.path,
        "status": record.status,
        "ms": round(seconds * 1000, 3),
        "client": client,
    }
    if record.request_id is not None:
        line["id"] = record.request_id
    if record.sequence is not None:
        line["sequence_id"] = record.sequence.id
    return line
