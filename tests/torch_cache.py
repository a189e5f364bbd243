"""PyTorch for the tests, installed once into a cache folder outside the venv.

PyPI's torch build (the only one reachable from PyPI; the CPU-only wheels live on
download.pytorch.org) pulls CUDA libraries: measured here, 27 distributions, 5.3 GiB installed,
1 min 47 s for the pip install from a cold pip cache on an idle machine, 3 min 36 s for the whole
step on a busy one. So torch is not part of any extra that ``make test`` installs into the
venv; ``python -m tests.torch_cache`` (run by ``make test``) installs it into
``$KERAS_GATES_CACHE/torch-<version>`` (default ``~/.cache/keras-gates``), and the tests that need
torch run in child processes with that folder on ``PYTHONPATH`` (torch and TensorFlow are
not loaded into one process).

The folder holds only what the venv lacks: pip resolves ``torch==<pinned>`` against the venv
with ``-c constraints.txt`` (``--dry-run --report``), and exactly the distributions it would add
are installed with ``--no-deps --target``, so nothing in the folder shadows a venv package. A
requirement the venv holds at another version than torch asks for (setuptools, which torch
needs only to build C++ extensions) is kept at the venv's version, and said so. The install goes
to a temporary folder renamed into place at the end: a half-finished install is never used.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from tests.caches import CACHE

ROOT = Path(__file__).resolve().parent.parent


def pinned_version() -> str:
    """torch's version in constraints.txt."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith("torch=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError("constraints.txt pins no torch version (expected a line torch==X.Y.Z)")


def folder() -> Path:
    """Where the pinned torch is (or would be) installed."""
    return CACHE / f"torch-{pinned_version()}"


def ready() -> Path | None:
    """The cache folder when its install is complete, else None."""
    target = folder()
    return target if (target / "torch" / "__init__.py").is_file() else None


ABSENT = (
    "torch is neither installed nor in the cache folder {folder}: `make test` (or "
    "`python -m tests.torch_cache`) installs PyPI's build there (5.4 GB with its CUDA "
    "libraries, 2-4 min); its output says why it could not"
)


def importable() -> bool:
    """Whether a child process can import torch: from the venv, or from the cache folder."""
    return importlib.util.find_spec("torch") is not None or ready() is not None


def absent_reason() -> str:
    return ABSENT.format(folder=folder())


def pythonpath(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the cache folder first on ``PYTHONPATH`` (unchanged if torch is not there)."""
    target = ready()
    if target is None:
        return env
    parts = [str(target), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(parts)}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _plan() -> tuple[list[str], list[str]]:
    """(``name==version`` to install, requirements the venv keeps at its own version)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        _pip(
            "install", "-q", "--dry-run", "--report", str(report),
            "-c", str(ROOT / "constraints.txt"), f"torch=={pinned_version()}",
        )  # fmt: skip
        planned = json.loads(report.read_text())["install"]
    install, kept = [], []
    for item in planned:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        try:
            kept.append(f"{name} {metadata.version(name)} (torch's resolution: {version})")
        except metadata.PackageNotFoundError:
            install.append(f"{name}=={version}")
    return install, kept


def ensure() -> Path:
    """Install the pinned torch into the cache folder unless it is there; return the folder."""
    target = ready()
    if target is not None:
        return target
    target = folder()
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    install, kept = _plan()
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=CACHE))
    try:
        _pip("install", "-q", "--no-deps", "--target", str(partial), *install)
        if target.exists():  # an earlier, unfinished or stale folder
            shutil.rmtree(target)
        partial.rename(target)  # atomic: a half-finished install is never taken for the cache
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**30
    print(
        f"torch {pinned_version()} installed into {target}: {len(install)} distributions, "
        f"{size:.1f} GiB, {time.monotonic() - started:.0f} s"
    )
    for line in kept:
        print(f"  kept the venv's {line}")
    return target


def _check(target: Path) -> None:
    """torch imports from the folder with the venv's packages and runs a CPU op."""
    env = pythonpath({**os.environ, "PYTHONPATH": ""})
    code = "import torch; print(torch.__version__, float(torch.ones(3).sum()))"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


if __name__ == "__main__":
    _check(ensure())
