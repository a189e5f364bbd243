"""Stateful streaming sessions (Triton's sequence extension): recurrent state kept per sequence id.

Lives on the event loop (no locking beyond an ``asyncio.Lock`` per session that keeps the chunks of
one sequence in order). The scheduler opens a session with :meth:`SessionManager.acquire`, feeds
``session.state`` to the model, stores the new state with :meth:`SessionManager.release`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import numpy as np

from .errors import BadRequest, Unavailable

SequenceId = int | str
_REMEMBER_GONE = 4096  # recently ended/evicted ids, for a precise 400 message


class Session:
    """One open sequence: its recurrent state (``{state_input: [1, units]}``) and order lock."""

    __slots__ = ("id", "state", "lock", "last_used", "busy", "closed")

    def __init__(self, seq_id: SequenceId, state: dict[str, np.ndarray]):
        self.id = seq_id
        self.state = state
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self.busy = 0
        self.closed = False


class SessionManager:
    """Open sequences of one model, capped in number and evicted after an idle timeout.

    Args:
        zero_state: the state a new sequence starts from, ``{state_input: [1, units]}``.
        max_sessions: open sequences beyond which a new ``sequence_start`` answers 503.
        idle_timeout_s: a sequence untouched this long is evicted.
        on_change: called with the number of open sessions whenever it changes (metrics).
    """

    def __init__(
        self,
        zero_state: dict[str, np.ndarray],
        *,
        max_sessions: int = 1024,
        idle_timeout_s: float = 60.0,
        on_change: Callable[[int], None] | None = None,
    ):
        self._zero = zero_state
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self._open: dict[SequenceId, Session] = {}
        self._gone: collections.OrderedDict[SequenceId, str] = collections.OrderedDict()
        self._on_change = on_change or (lambda n: None)

    def __len__(self) -> int:
        return len(self._open)

    def acquire(self, seq_id: SequenceId, start: bool) -> Session:
        """The session for ``seq_id`` (created when ``start``), marked busy until released."""
        session = self._open.get(seq_id)
        if session is None:
            if not start:
                raise BadRequest(self._unknown_message(seq_id))
            session = self._create(seq_id)
        session.busy += 1
        return session

    def begin(self, session: Session, start: bool) -> None:
        """Called with ``session.lock`` held: check it is still open, reset it on a new start."""
        if session.closed and not start:
            raise BadRequest(self._unknown_message(session.id))
        if session.closed:  # restarted while waiting behind the request that ended it
            if session.id in self._open:
                raise BadRequest(f"Sequence {session.id!r} was restarted by another request.")
            session.closed = False
            self._open[session.id] = session
            self._on_change(len(self._open))
        if start:
            session.state = self._zero

    def release(self, session: Session, state: dict[str, np.ndarray] | None, end: bool) -> None:
        """Store the new state (``None`` on failure keeps the old one); close it on ``end``."""
        session.busy -= 1
        session.last_used = time.monotonic()
        if state is not None:
            session.state = state
        if end and not session.closed:
            self._close(session, "has ended (a request carried sequence_end=true)")

    def sweep(self, now: float | None = None) -> int:
        """Evict idle sessions; returns how many."""
        now = time.monotonic() if now is None else now
        idle = [
            s
            for s in self._open.values()
            if not s.busy and now - s.last_used >= self.idle_timeout_s
        ]
        for session in idle:
            self._close(session, f"was evicted after {self.idle_timeout_s:g} s idle")
        return len(idle)

    def _create(self, seq_id: SequenceId) -> Session:
        if len(self._open) >= self.max_sessions:
            self.sweep()
        if len(self._open) >= self.max_sessions:
            raise Unavailable(
                f"Too many open sequences: {len(self._open)} (the limit, --max-sessions "
                f"{self.max_sessions}); end finished sequences with sequence_end=true or retry "
                "later."
            )
        session = Session(seq_id, self._zero)
        self._open[seq_id] = session
        self._gone.pop(seq_id, None)
        self._on_change(len(self._open))
        return session

    def _close(self, session: Session, reason: str) -> None:
        session.closed = True
        self._open.pop(session.id, None)
        self._gone[session.id] = reason
        self._gone.move_to_end(session.id)
        while len(self._gone) > _REMEMBER_GONE:
            self._gone.popitem(last=False)
        self._on_change(len(self._open))

    def _unknown_message(self, seq_id: SequenceId) -> str:
        reason = self._gone.get(seq_id, "was never started")
        return (
            f"Sequence {seq_id!r} is not open: it {reason}. Start it with sequence_start=true "
            "before sending further chunks."
        )
