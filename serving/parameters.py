"""The protocol's request parameters the server acts on: the sequence extension's
``sequence_id``, ``sequence_start`` and ``sequence_end`` (the same on both transports)."""

from __future__ import annotations

from typing import Any

from .errors import BadRequest
from .scheduler import SequenceControl


def sequence_control(parameters: dict[str, Any]) -> SequenceControl | None:
    """The sequence a request belongs to, or ``None`` for a stateless request.

    A missing, zero or empty ``sequence_id`` means no sequence, as in Triton; ``sequence_start``
    and ``sequence_end`` then must not be set.
    """
    seq_id = parameters.get("sequence_id")
    start = parameters.get("sequence_start", False)
    end = parameters.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise BadRequest(
            f"Parameters sequence_start and sequence_end must be true or false, got {start!r} "
            f"and {end!r}."
        )
    if seq_id is None or (seq_id == 0 and not isinstance(seq_id, bool)) or seq_id == "":
        if start or end:
            raise BadRequest("sequence_start/sequence_end need a non-zero sequence_id.")
        return None
    if isinstance(seq_id, bool) or not isinstance(seq_id, int | str):
        raise BadRequest(f"Parameter sequence_id must be an integer or a string, got {seq_id!r}.")
    return SequenceControl(seq_id, start, end)
