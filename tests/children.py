"""Child processes in tests: every wait is bounded, and a child that fails or hangs fails the test
with its own output (a hang shows where it stood, not only that the timeout ran out)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class ChildFailed(AssertionError):
    """A child process exited with an unexpected status or outlived its timeout."""


def _tail(text: str | bytes | None, chars: int) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-chars:]


def run(
    command: Sequence[str],
    timeout: float,
    *,
    check: bool = True,
    chars: int = 6000,
    **kwargs,
) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)``.

    Raises :class:`ChildFailed` with the command and the tail of its stdout and stderr when it
    runs past ``timeout`` seconds (it is killed first) or, with ``check``, exits non-zero.
    """
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    shown = " ".join(str(part) for part in command)
    try:
        done = subprocess.run(list(command), timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as err:
        raise ChildFailed(
            f"{shown} did not finish within {timeout:g} s (killed).\n"
            f"stdout:\n{_tail(err.stdout, chars)}\nstderr:\n{_tail(err.stderr, chars)}"
        ) from None
    if check and done.returncode != 0:
        raise ChildFailed(
            f"{shown} failed ({done.returncode}).\n"
            f"stdout:\n{_tail(done.stdout, chars)}\nstderr:\n{_tail(done.stderr, chars)}"
        )
    return done
