"""Dynamic batching: a bounded queue in front of one worker thread per model.

The event loop :meth:`Batcher.submit` s complete feeds and awaits a future; the worker thread
takes the oldest request plus every queued request with the same batch key (up to
``max_batch_size`` rows), pads sequence inputs to the longest along axis 1, runs the model once,
cuts the outputs back per request (rows, and time for per-step outputs) and resolves the futures on
the loop with one callback per batch. The key, the padding and the cutting are
:mod:`keras_gates.batching`'s, the layout Triton's ``model.py`` batches by too. onnxruntime
releases the GIL, so the loop keeps decoding new requests while a batch runs; they form the next
batch.

How long a batch waits for more (:meth:`Batcher._wait_s`) adapts to the load, as Triton's dynamic
batcher does with ``max_queue_delay_microseconds`` but off when the model is idle, so that a lone
client never waits: a batch waits for requests the server has begun to receive (they count as
active), and, when the model is busy (requests arrived while it ran the previous batch), for as
long as requests keep arriving at their recent rate, at most ``max_queue_delay_s`` after the
model became free. Calls that reach the batcher one at a time (gRPC: grpcio hands the event loop
one call after another) then still meet in one batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from keras_gates import batching

from .errors import Unavailable

Feeds = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """What the batcher needs to know about a model's tensors (names only, no runtime).

    Args:
        sequence_inputs: inputs padded along axis 1 to the longest request in a batch.
        per_step_outputs: outputs cut back along axis 1 to each request's time length.
        can_pad: whether requests of different time lengths may share a batch, their sequence
            inputs right-padded (:func:`keras_gates.signature.pads_batches` decides; the caller
            fills each request's lengths inputs).
        max_batch_size: rows per model call; 1 turns batching off.
    """

    sequence_inputs: frozenset[str] = frozenset()
    per_step_outputs: frozenset[str] = frozenset()
    can_pad: bool = False
    max_batch_size: int = 1

    @property
    def padded_inputs(self) -> frozenset[str]:
        """The inputs right-padded along axis 1 when requests share a call (none: requests share
        a call only with requests of the same time lengths)."""
        return self.sequence_inputs if self.can_pad else frozenset()


class Work:
    """One queued request."""

    __slots__ = ("feeds", "rows", "steps", "key", "future", "loop", "enqueued", "started")

    def __init__(self, feeds: Feeds, rows: int, steps: int | None, key: tuple, loop, future):
        self.feeds = feeds
        self.rows = rows
        self.steps = steps
        self.key = key
        self.loop = loop
        self.future = future
        self.enqueued = 0.0  # set by Batcher.submit, on the batcher's clock
        self.started = 0.0


class BatchObserver:
    """Receives one call per finished batch (metrics); the default ignores it."""

    def batch_done(self, rows: int, queued_s: list[float], compute_s: float) -> None:
        """Called on the event loop after a batch's futures are resolved."""


class Batcher:
    """A bounded request queue served by one worker thread calling ``run(feeds) -> outputs``.

    Args:
        run: the model call (thread-safe for one caller at a time).
        layout: which inputs/outputs have a time axis and how large a batch may be.
        max_queue_delay_s: how long a batch may wait for more requests while other requests
            are active (see :meth:`_expecting`); 0 runs whatever is queued at once.
        max_queue_size: queued requests beyond which :meth:`submit` answers 503.
        observer: told about every batch (metrics).
        name: for messages and the thread name.
        clock: seconds, monotonic (tests pass their own to make the arrival rate what they say).
    """

    GAPS_TO_WAIT = 2.0  # a busy model waits while the last arrival is younger than 2 mean gaps
    GAP_WEIGHT = 0.2  # weight of the newest inter-arrival gap in the running mean

    def __init__(
        self,
        run: Callable[[Feeds], Feeds],
        layout: BatchLayout,
        *,
        max_queue_delay_s: float = 0.0,
        max_queue_size: int = 1024,
        observer: BatchObserver | None = None,
        name: str = "model",
        clock: Callable[[], float] = time.perf_counter,
    ):
        self._run = run
        self._clock = clock
        self.layout = layout
        self._delay = max_queue_delay_s
        self._max_queue = max_queue_size
        self._observer = observer or BatchObserver()
        self._name = name
        self._queue: collections.deque[Work] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._active = 0  # requests between arrival and response; under _cond (see tracking)
        self._idle = False  # the worker waits for a first request
        self._forming = 0  # requests in the batch the worker is waiting to fill (0: not waiting)
        self._running = False  # the model runs a batch whose answers are not yet handed back
        self._busy = False  # a request arrived while _running: the model is in demand
        self._last_arrival = clock()  # when the newest request was queued; under _cond
        self._gap = max_queue_delay_s  # running mean of the gaps between arrivals; under _cond
        self._thread = threading.Thread(target=self._serve, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def forming(self) -> int:
        """Requests in the batch the worker is waiting to fill (0: it is not waiting)."""
        return self._forming

    @property
    def active(self) -> int:
        """Requests of this model between arrival and response (see :meth:`tracking`)."""
        return self._active

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Count one request as active for the duration of the block.

        The count is written under the worker's lock (the event loop enters and leaves, the worker
        reads it in :meth:`_ready`); leaving wakes a forming batch that no longer needs to wait.
        """
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._forming and self._ready(self._forming + len(self._queue)):
                    self._cond.notify()

    def submit(self, feeds: Feeds, rows: int, steps: int | None) -> asyncio.Future:
        """Queue complete feeds (``rows`` on axis 0, ``steps`` on axis 1 of sequence inputs)."""
        loop = asyncio.get_running_loop()
        key = batching.batch_key(feeds, self.layout.padded_inputs)
        work = Work(feeds, rows, steps, key, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise Unavailable(
                    f"Model {self._name!r} is shutting down; retry on another server."
                )
            if len(self._queue) >= self._max_queue:
                raise Unavailable(
                    f"Model {self._name!r} is overloaded: {len(self._queue)} requests queued "
                    f"(the limit, --max-queue-size {self._max_queue}); retry later."
                )
            now = self._clock()
            gap = min(now - self._last_arrival, self._delay)  # an idle spell counts as one delay
            self._gap += self.GAP_WEIGHT * (gap - self._gap)
            self._last_arrival = work.enqueued = now
            self._queue.append(work)
            self._busy = self._busy or self._running
            if self._idle or (self._forming and self._ready(self._forming + len(self._queue))):
                self._cond.notify()  # wake the worker only when it has something to do
        return work.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued requests, then stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ---- worker thread -------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _next_batch(self) -> list[Work] | None:
        limit = self.layout.max_batch_size
        with self._cond:
            busy, self._busy = self._busy, False  # requests arrived while the model ran
            while not self._queue:
                if self._closed:
                    return None
                self._idle = True
                self._cond.wait()
                self._idle = False
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            free_since = self._clock() if busy else None
            while rows < limit:
                rows = self._take_compatible(first.key, batch, rows, limit)
                if rows >= limit or self._closed:
                    break
                wait = self._wait_s(first, len(batch), free_since)
                if wait <= 0:
                    break
                self._forming = len(batch)
                self._cond.wait(wait)
                self._forming = 0
            self._running = True
        return batch

    def _wait_s(self, first: Work, gathered: int, free_since: float | None) -> float:
        """How long a batch of ``gathered`` requests waits for more (0: run it now).

        It waits up to ``max_queue_delay_s`` after ``first`` arrived for active requests not yet
        queued (:meth:`_ready`); and, when the model is busy (``free_since``: when it became free
        with requests waiting), up to ``max_queue_delay_s`` after that while requests keep
        arriving: until the newest arrival is :attr:`GAPS_TO_WAIT` mean gaps old.
        """
        now = self._clock()  # caller holds self._cond
        wait = 0.0 if self._ready(gathered) else first.enqueued + self._delay - now
        if free_since is not None:
            lull = self._last_arrival + self.GAPS_TO_WAIT * self._gap
            wait = max(wait, min(free_since + self._delay, lull) - now)
        return wait

    def _ready(self, gathered: int) -> bool:
        """Whether a batch of ``gathered`` requests should run rather than wait for more.

        It waits while some active request is neither queued nor gathered (being received, or
        answered and about to be followed by its client's next one) and it holds less than half
        of the active requests, so that the loop decodes the other half while this batch runs.
        A lone client never waits.
        """
        active = self._active  # caller holds self._cond
        return (
            gathered >= self.layout.max_batch_size
            or active <= gathered + len(self._queue)
            or 2 * gathered >= active
        )

    def _take_compatible(self, key: tuple, batch: list[Work], rows: int, limit: int) -> int:
        queue, i = self._queue, 0
        while i < len(queue) and rows < limit:
            work = queue[i]
            if work.key == key and rows + work.rows <= limit:
                del queue[i]
                batch.append(work)
                rows += work.rows
            else:
                i += 1
        return rows

    def _execute(self, batch: list[Work]) -> None:
        start = self._clock()
        for work in batch:
            work.started = start
        try:
            outputs = self._run(self._assemble(batch))
            results: list = self._split(batch, outputs)
        except Exception as err:  # noqa: BLE001 - delivered to the requests, logged there
            if len(batch) > 1:  # one bad request must not fail its neighbours: run them alone
                for work in batch:
                    self._execute([work])
                return
            results = [err]
        compute = self._clock() - start
        with self._cond:  # before the answers: a request they prompt did not arrive while it ran
            self._running = False
        batch[0].loop.call_soon_threadsafe(self._deliver, batch, results, compute)

    def _assemble(self, batch: list[Work]) -> Feeds:
        return batching.concat_feeds([w.feeds for w in batch], self.layout.padded_inputs)

    def _split(self, batch: list[Work], outputs: Feeds) -> list[Feeds]:
        padded = bool(self.layout.padded_inputs)  # else every request has the batch's steps
        return batching.split_rows(
            outputs,
            [w.rows for w in batch],
            [w.steps if padded else None for w in batch],
            self.layout.per_step_outputs,
        )

    def _deliver(self, batch: list[Work], results: list, compute: float) -> None:
        for work, result in zip(batch, results, strict=True):
            if work.future.done():
                continue
            if isinstance(result, Exception):
                work.future.set_exception(result)
            else:
                work.future.set_result(result)
        rows = sum(w.rows for w in batch)
        self._observer.batch_done(rows, [w.started - w.enqueued for w in batch], compute)
