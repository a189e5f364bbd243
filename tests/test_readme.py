"""Every Python block of the README runs, in order, in one folder (as a reader would run them).

A block that talks to a server (``InferenceServerClient``) gets a real ``keras-gates serve`` of
the ``model.onnx`` an earlier block exported, on a free port.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    code = BLOCKS[index]
    if "InferenceServerClient" not in code:
        exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "readme"})
        return
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "keras_gates.cli", "serve", "model.onnx", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(port, server)
        code = code.replace("localhost:8000", f"127.0.0.1:{port}")
        exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "readme"})
    finally:
        server.terminate()
        server.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(port: int, server: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"server on port {port} not ready after {timeout} s")
