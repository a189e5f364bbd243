"""A real headless browser for the explorer test: Debian's ``chromium`` driven by Playwright.

Playwright's own browser download needs the internet, so the test launches the system's
chromium (``executable_path``). ``python -m tests.browser`` (run by ``make test``) installs it with
apt-get when it is missing (as root, as CI runs); :func:`unavailable` says why the browser test
cannot run where it cannot (the test then skips with that reason).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
PACKAGES = ("chromium",)


def unavailable() -> str | None:
    """Why the browser test cannot run here (``None`` when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing: apt-get install -y chromium (or run `make test`)"
    return None


def ensure() -> Path:
    """Install Debian's chromium with apt-get when it is missing; return its path."""
    if CHROMIUM.is_file():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"The explorer test needs Debian's chromium at {CHROMIUM}: install it "
            f"(apt-get install -y {' '.join(PACKAGES)}) and rerun."
        )
    for command in (("apt-get", "update", "-q"), ("apt-get", "install", "-y", "-q", *PACKAGES)):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return CHROMIUM


if __name__ == "__main__":
    try:
        print(f"browser: {ensure()}")
    except RuntimeError as err:
        print(err, file=sys.stderr)
        sys.exit(1)
