"""Waiting on conditions, never on the clock: the suite's one polling helper.

A test that needs some state to exist (a server up, a request queued, a model unloaded) waits
for that state with :func:`wait_until`; the timeout only bounds a hang, it never decides a
verdict. A test must not sleep "long enough" for something to happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold within the timeout (a hang or a real failure, never luck)."""


def wait_until(
    condition: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    Raises :class:`WaitTimeout` (an ``AssertionError``) naming ``message`` (or the result of
    calling it, for a description of the state at the time) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = message() if callable(message) else message
            raise WaitTimeout(f"not true within {timeout:g} s: {detail or condition!r}")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.01,
    message: str = "",
):
    """:func:`wait_until` for a coroutine ``condition`` inside an event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeout(f"not true within {timeout:g} s: {message or condition!r}")
        await asyncio.sleep(interval)


def refuses_connections(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port`` any more (a server that began shutting down)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=5):
            return False
    except OSError:
        return True
