"""The suite's caches outside the repository, reused by every run on a machine (as pip's is):
``$KERAS_GATES_CACHE`` (default ``~/.cache/keras-gates``) holds PyTorch (tests/torch_cache.py),
the oldest Keras (tests/test_keras_range.py) and JAX's compiled programs."""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(os.environ.get("KERAS_GATES_CACHE", Path.home() / ".cache" / "keras-gates"))


def with_jax_cache(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a JAX child process that keeps what XLA compiled in a persistent cache: the
    JAX suites compile a loop per test case, and a later run loads it instead (JAX keys each entry
    by the program, the compile options and its own version, so a stale entry is never used)."""
    return {
        **env,
        "JAX_COMPILATION_CACHE_DIR": str(CACHE / "jax-compilation"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
