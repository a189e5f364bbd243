"""The scheduler layer: validate a request, fill the inputs the server owns, queue it, and keep
streaming sessions' state between requests.

It sees decoded numpy tensors and the model's :class:`~keras_gates.serving.runtime.TensorInfo`
descriptions; it knows nothing of HTTP or JSON, and reaches onnxruntime only through the
``run`` callable it hands to its :class:`~keras_gates.serving.batcher.Batcher`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from keras_gates.signature import complete_feeds, padded_inputs

from . import validation
from .batcher import Batcher, BatchLayout, BatchObserver
from .errors import BadRequest
from .runtime import ModelRuntime, TensorInfo, specs_of
from .sessions import SequenceId, SessionManager


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """Batching and session settings of one model (the CLI flags of the same names).

    Args:
        max_batch_size: rows per onnxruntime call; 1 turns dynamic batching off.
        max_queue_delay_ms: how long a batch may wait for more while other requests are active
            or, the model busy, still arriving (:class:`~keras_gates.serving.batcher.Batcher`).
        max_queue_size: queued requests per model beyond which requests get 503.
        max_sessions: open streaming sequences per model beyond which a new one gets 503.
        session_idle_timeout_s: idle time after which a sequence is evicted.
    """

    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 1024
    max_sessions: int = 1024
    session_idle_timeout_s: float = 60.0

    def __post_init__(self):
        for field in ("max_batch_size", "max_queue_size", "max_sessions"):
            if getattr(self, field) < 1:
                raise ValueError(
                    f"Received an invalid value for argument `{field}`, expected a positive "
                    f"integer, got {getattr(self, field)!r}."
                )
        for field in ("max_queue_delay_ms", "session_idle_timeout_s"):
            if getattr(self, field) < 0:
                raise ValueError(
                    f"Received an invalid value for argument `{field}`, expected a number >= 0, "
                    f"got {getattr(self, field)!r}."
                )


@dataclasses.dataclass(frozen=True)
class SequenceControl:
    """Triton's sequence parameters of one request."""

    id: SequenceId
    start: bool = False
    end: bool = False


def _batchable(tensors: Sequence[TensorInfo]) -> bool:
    return all(t.shape and t.shape[0] is None for t in tensors)


class ModelScheduler:
    """Everything between a decoded request and the model for one model version."""

    def __init__(
        self,
        runtime: ModelRuntime,
        config: SchedulerConfig | None = None,
        observer: BatchObserver | None = None,
        on_sessions=None,
    ):
        self.config = config or SchedulerConfig()
        self.name, self.version = runtime.name, runtime.version
        self.inputs, self.outputs = runtime.inputs, runtime.outputs
        self._specs = {t.name: t for t in self.inputs}
        self._specs_in = specs_of(self.inputs)
        self._sequences = tuple(t for t in self.inputs if t.role == "sequence")
        self._lengths_inputs = tuple(t for t in self.inputs if t.role == "lengths")
        self._states = tuple(t for t in self.inputs if t.role == "state")
        self._state_pairs = tuple((t.name, t.state_pair) for t in self._states)
        self._optional = validation.optional_inputs(self.inputs) if self._sequences else frozenset()
        self._known = frozenset(self._specs)
        self._required = self._known - self._optional
        # Lengths the server fills from the time axis pass check_feeds, unless a sequence input
        # is masked, merged step by step with another or needs rows of more than one step.
        self._check_filled = any(
            t.spec.mask_value is not None or t.aligned_with or t.spec.min_length > 1
            for t in self._sequences
        )
        self._output_names = tuple(t.name for t in self.outputs)
        self._stateless_outputs = tuple(t.name for t in self.outputs if t.role != "state")
        self._batch_only_outputs = frozenset(t.name for t in self.outputs if t.batch_only)
        self.batchable = _batchable(self.inputs) and _batchable(self.outputs)
        self.max_batch_size = self.config.max_batch_size if self.batchable else 1
        self.padded_inputs = padded_inputs(self._specs_in, specs_of(self.outputs))
        layout = BatchLayout(
            sequence_inputs=frozenset(t.name for t in self._sequences),
            per_step_outputs=frozenset(t.name for t in self.outputs if t.per_step),
            can_pad=bool(self.padded_inputs),
            max_batch_size=self.max_batch_size,
        )
        self._batcher = Batcher(
            runtime.run,
            layout,
            max_queue_delay_s=self.config.max_queue_delay_ms / 1000.0,
            max_queue_size=self.config.max_queue_size,
            observer=observer,
            name=f"{self.name}/{self.version}",
        )
        self.sessions = self._make_sessions(on_sessions)

    def _make_sessions(self, on_sessions) -> SessionManager | None:
        if not self._states or any(len(t.shape) != 2 or t.shape[1] is None for t in self._states):
            return None
        zero = {t.name: np.zeros((1, t.shape[1]), t.dtype) for t in self._states}
        return SessionManager(
            zero,
            max_sessions=self.config.max_sessions,
            idle_timeout_s=self.config.session_idle_timeout_s,
            on_change=on_sessions,
        )

    @property
    def streaming(self) -> bool:
        return self.sessions is not None

    @property
    def can_pad(self) -> bool:
        """Whether requests of different time lengths share a call, right-padded to the longest
        (:func:`keras_gates.signature.pads_batches`, the rule Triton's model.py applies too)."""
        return bool(self.padded_inputs)

    @property
    def in_flight(self) -> int:
        """Requests of this model between arrival and response."""
        return self._batcher.active

    @property
    def queued(self) -> int:
        return self._batcher.queued

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Wrap a whole request (receive, decode, infer): a forming batch may wait for it."""
        with self._batcher.tracking():
            yield

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        sequence: SequenceControl | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request; returns the requested outputs (all but the state ones by default)."""
        wanted = self._wanted(outputs, sequence is not None)
        feeds, rows, steps = self._prepare(inputs, sequence is not None)
        if sequence is None:
            result = await self._batcher.submit(feeds, rows, steps)
        else:
            result = await self._infer_sequence(feeds, rows, steps, sequence)
        return {name: self._wire(name, result[name]) for name in wanted}

    def _wire(self, name: str, value: np.ndarray) -> np.ndarray:
        """A ``[batch]`` output goes out as ``[B, 1]``, the shape both servers advertise."""
        return value.reshape(-1, 1) if name in self._batch_only_outputs else value

    def sweep(self) -> int:
        """Evict idle sessions; returns how many."""
        return self.sessions.sweep() if self.sessions is not None else 0

    def close(self) -> None:
        """Finish queued work and stop the worker thread."""
        self._batcher.close()

    # ---- internals -----------------------------------------------------------------------
    def _wanted(self, outputs: Sequence[str] | None, in_session: bool) -> Sequence[str]:
        if outputs is None:
            return self._stateless_outputs if in_session else self._output_names
        for name in outputs:
            if name not in self._output_names:
                raise BadRequest(
                    f"Model {self.name!r} has no output {name!r}; expected outputs: "
                    f"{validation.describe(self.outputs)}."
                )
        return outputs

    def _prepare(self, inputs: dict[str, np.ndarray], in_session: bool):
        if not self._required <= inputs.keys() <= self._known:  # check_names says what is wrong
            validation.check_names(self.name, self.inputs, inputs, self._optional)
        if in_session:
            for t in self._states:
                if t.name in inputs:
                    raise BadRequest(
                        f"Input {t.name!r} is the recurrent state the server keeps for the "
                        "sequence; do not send it with sequence_id (or drop sequence_id to pass "
                        "the state yourself)."
                    )
        for name, array in inputs.items():
            inputs[name] = array = validation.model_form(self._specs[name], array)
            validation.check_tensor(self.name, self._specs[name], array)
        rows = validation.check_batch(self.name, inputs)
        independent = len(self._lengths_inputs) > 1
        steps = validation.check_sequences(self.name, self._sequences, inputs, independent)
        feeds = complete_feeds(self._specs_in, inputs)
        if self._check_filled or any(t.name in inputs for t in self._lengths_inputs):
            validation.check_feeds(self.name, self.inputs, feeds)
        return feeds, rows, steps

    async def _infer_sequence(self, feeds, rows: int, steps, sequence: SequenceControl):
        if self.sessions is None:
            raise BadRequest(
                f"Model {self.name!r} keeps no state between requests (no state inputs with a "
                "fixed size), so sequence_id is not accepted; drop it or serve a streaming export."
            )
        if rows != 1:
            raise BadRequest(
                f"A request in sequence {sequence.id!r} carries a batch of {rows}, expected 1: a "
                "sequence is one stream; send other streams under their own sequence_id."
            )
        session = self.sessions.acquire(sequence.id, sequence.start)
        released = False
        try:
            async with session.lock:
                new_state = None
                try:
                    self.sessions.begin(session, sequence.start)
                    feeds.update(session.state)
                    result = await self._batcher.submit(feeds, rows, steps)
                    new_state = self._state_of(result)
                    return result
                finally:
                    released = True
                    self.sessions.release(session, new_state, sequence.end and bool(new_state))
        finally:
            if not released:  # cancelled while waiting for the lock
                self.sessions.release(session, None, False)

    def _state_of(self, result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.array(result[twin]) for name, twin in self._state_pairs}


__all__ = ["ModelScheduler", "SchedulerConfig", "SequenceControl"]
