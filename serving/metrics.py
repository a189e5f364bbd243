"""Prometheus metrics and Triton-style statistics, per model and version.

Each app owns its own ``CollectorRegistry`` (several apps can live in one process, as in tests).
:class:`ModelMetrics` is the batcher's observer and the protocol layer's request counter; it keeps
plain totals for ``/v2/models/{m}/stats`` next to the Prometheus series.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .batcher import BatchObserver

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN_MODEL = "_unknown"  # label for requests that named no served model (bounded cardinality)


class ServingMetrics:
    """The metric families of one app."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels = ("model", "version")
        r = self.registry
        self.success = Counter(
            "keras_gates_request_success", "Inference requests answered 200.", labels, registry=r
        )
        self.failure = Counter(
            "keras_gates_request_failure",
            "Inference requests answered with an error, by HTTP status.",
            (*labels, "code"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "keras_gates_request_duration_seconds",
            "Time from receiving an inference request to its response.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "keras_gates_queue_duration_seconds",
            "Time a request waited in the batching queue.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "keras_gates_compute_duration_seconds",
            "Time of one onnxruntime call (one batch).",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "keras_gates_batch_size",
            "Rows per onnxruntime call.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge(
            "keras_gates_active_sessions", "Open streaming sequences.", labels, registry=r
        )
        self.queued = Gauge(
            "keras_gates_queue_size", "Requests waiting in the batching queue.", labels, registry=r
        )

    def for_model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, name, version)

    def failure_unknown(self, code: int) -> None:
        self.failure.labels(UNKNOWN_MODEL, "", str(code)).inc()


class ModelMetrics(BatchObserver):
    """Bound metric children of one model version plus the totals behind ``/stats``."""

    def __init__(self, parent: ServingMetrics, name: str, version: str):
        self._parent = parent
        self._labels = (name, version)
        self._success = parent.success.labels(name, version)
        self._request = parent.request_seconds.labels(name, version)
        self._queue = parent.queue_seconds.labels(name, version)
        self._compute = parent.compute_seconds.labels(name, version)
        self._batch = parent.batch_size.labels(name, version)
        self._sessions = parent.sessions.labels(name, version)
        self.queued = parent.queued.labels(name, version)
        self.totals = {
            "success": [0, 0],  # [count, ns]
            "fail": [0, 0],
            "queue": [0, 0],
            "compute_infer": [0, 0],
        }
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batch_counts: dict[int, list[int]] = {}  # rows -> [count, compute ns]

    def request_done(self, seconds: float) -> None:
        self._success.inc()
        self._request.observe(seconds)
        total = self.totals["success"]
        total[0] += 1
        total[1] += int(seconds * 1e9)
        self.last_inference_ms = int(time.time() * 1000)

    def request_failed(self, code: int, seconds: float) -> None:
        self._parent.failure.labels(*self._labels, str(code)).inc()
        total = self.totals["fail"]
        total[0] += 1
        total[1] += int(seconds * 1e9)

    def sessions_changed(self, count: int) -> None:
        self._sessions.set(count)

    def batch_done(self, rows: int, queued_s: list[float], compute_s: float) -> None:
        self._batch.observe(rows)
        self._compute.observe(compute_s)
        queue_total = self.totals["queue"]
        for seconds in queued_s:
            self._queue.observe(seconds)
            queue_total[0] += 1
            queue_total[1] += int(seconds * 1e9)
        compute = self.totals["compute_infer"]
        compute[0] += len(queued_s)
        compute[1] += int(compute_s * 1e9)
        self.inference_count += rows
        self.execution_count += 1
        entry = self.batch_counts.setdefault(rows, [0, 0])
        entry[0] += 1
        entry[1] += int(compute_s * 1e9)
