"""Quiet TensorFlow's C++ log for ``keras-gates export`` and ``keras-gates inspect``.

Without it every run starts with a dozen lines such as ``I0000 ... cudart_stub.cc:31] Could not
find cuda drivers`` and ``E0000 ... failed call to cuInit`` on any machine without a GPU.
:func:`quiet_native_logs` sets ``TF_CPP_MIN_LOG_LEVEL=3`` before TensorFlow is imported and
imports it with the process's stderr filtered, because TensorFlow 2.21 prints its first lines
(through absl, before it reads the variable) at import time. A ``TF_CPP_MIN_LOG_LEVEL`` the user
set is kept, and is then honoured for those first lines too; ``--verbose`` leaves everything as
TensorFlow has it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = 3  # also hides ERROR: the cuInit failure of every CPU-only machine is one
_SEVERITY = "IWEF"  # TF_CPP_MIN_LOG_LEVEL n hides the severities before index n
# One log record's first line, in absl's format (TensorFlow >= 2.16) or TensorFlow's older one.
_RECORD = re.compile(
    r"^(?:(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tf>[IWEF]) \S+:\d+\])"
)
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"
_CONTINUATION = "To enable the following instructions:"  # second line of cpu_feature_guard's


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--verbose`` flag of the commands that load TensorFlow."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"show TensorFlow's C++ log (hidden unless {LEVEL_ENV} is set)",
    )


def quiet_native_logs(verbose: bool, modules: Sequence[str] = ("tensorflow", "keras")) -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL`` (unless set) and import ``modules`` with the log filtered.

    Call it before anything imports TensorFlow. Modules that are not installed are skipped (the
    command says what is missing when it needs them); import errors propagate unchanged.
    """
    if verbose:
        return
    os.environ.setdefault(LEVEL_ENV, str(QUIET_LEVEL))
    level = min_log_level()
    if level == 0:
        return
    with _stderr_filtered(level):
        for name in modules:
            if name not in sys.modules and importlib.util.find_spec(name) is not None:
                importlib.import_module(name)


def min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it: 0 (everything) to 3 (FATAL only)."""
    try:
        return max(0, min(3, int(os.environ.get(LEVEL_ENV, "0"))))
    except ValueError:
        return 0


def filter_log(text: str, level: int) -> str:
    """``text`` without the native log records below ``level`` (and absl's pre-init banner)."""
    kept = []
    dropping = False
    for line in text.splitlines(keepends=True):
        record = _RECORD.match(line)
        if record:
            severity = record["absl"] or record["tf"]
            dropping = _SEVERITY.index(severity) < level
        elif line.startswith(_ABSL_BANNER):
            dropping = level > 0
        elif not (dropping and line.startswith(_CONTINUATION)):
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _stderr_filtered(level: int) -> Iterator[None]:
    """What is written to file descriptor 2 in the block, written back through filter_log."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = filter_log(captured.read().decode(errors="replace"), level)
            if text and sys.stderr is not None:
                sys.stderr.write(text)
                sys.stderr.flush()
