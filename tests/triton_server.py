"""A real NVIDIA Triton for the tests and the load benchmark: the ``tritonserver`` binary of the
``nvidia-pytriton`` wheel (Triton 2.51, HTTP + gRPC, Python backend only), set up once per venv.

:func:`ensure` installs the wheel's files (``pip install --no-deps --target``: the package's own
Python dependencies pin ``numpy<2`` and are not needed to run the binary) and a Python environment
for the backend stub, made from Debian's own ``/usr/bin/python3.11`` (the stub links the system
``libpython3.11``; a venv of another 3.11 build fails inside it) with numpy and onnxruntime. Both
live under ``<venv>/triton/`` and are reused. ``python -m tests.triton_server`` does the set-up
(``make test`` runs it first); :class:`TritonServer` starts the binary on loopback.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.serving_models import free_port

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(sys.prefix) / "triton"
WHEEL = "nvidia-pytriton"  # pinned in constraints.txt
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
# The stub's numpy C-API is numpy 1.x (numpy 2 corrupts output tensor sizes in it).
STUB_PACKAGES = ("numpy==1.26.4", "onnxruntime==1.32.0")


def unsupported() -> str | None:
    """Why the wheel cannot run here (``None`` when it can)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"nvidia-pytriton 0.7.0 ships linux x86_64 only, this is {sys.platform} "
    libc, version = platform.libc_ver()
    if libc != "glibc" or tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
        return f"nvidia-pytriton 0.7.0 needs glibc >= 2.35 (manylinux_2_35), found {libc} {version}"
    return None


def ensure() -> dict[str, Path]:
    """Install (once) and locate the binary, its libraries, a backends folder and the stub env."""
    wheel, env, backends = HOME / "wheel", HOME / "stub-env", HOME / "backends"
    if not (wheel / ".complete").is_file():
        shutil.rmtree(wheel, ignore_errors=True)
        pins = ("-c", ROOT / "constraints.txt")
        _run(
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            *pins,
            "--target",
            wheel,
            WHEEL,
        )
        (wheel / ".complete").touch()
    server = wheel / "pytriton" / "tritonserver"
    if not (backends / "python" / "triton_python_backend_stub").is_file():
        python = backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for item in (server / "backends" / "python").glob("*.*"):
            shutil.copy2(item, python / item.name)
        stub = server / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
        shutil.copy2(stub, python / stub.name)
    if not (env / ".complete").is_file():
        _make_stub_env(env)
    return {
        "binary": server / "bin" / "tritonserver",
        "libs": wheel / "nvidia_pytriton.libs",
        "backends": backends,
        "env": env,
    }


def _make_stub_env(env: Path) -> None:
    if not SYSTEM_PYTHON.is_file():
        _apt("python3.11", "libpython3.11", "python3.11-venv")
    shutil.rmtree(env, ignore_errors=True)
    made = subprocess.run([SYSTEM_PYTHON, "-m", "venv", env], capture_output=True, text=True)
    if made.returncode != 0:  # Debian ships ensurepip separately
        _apt("python3.11-venv")
        shutil.rmtree(env, ignore_errors=True)
        _run(SYSTEM_PYTHON, "-m", "venv", env)
    _run(env / "bin" / "python", "-m", "pip", "install", "-q", *STUB_PACKAGES)
    (env / ".complete").touch()


def _apt(*packages: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"Triton's Python backend needs Debian's {' '.join(packages)}; install them "
            f"(apt-get install -y {' '.join(packages)}) and rerun."
        )
    _run("apt-get", "update", "-q")
    _run("apt-get", "install", "-y", "-q", *packages)


def _run(*command) -> None:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{done.stderr[-3000:]}")


class TritonServer:
    """``tritonserver`` on loopback serving ``repository``; a context manager.

    Models load explicitly (``--model-control-mode=explicit --load-model=*``), so the
    repository extension's load/unload works as in ``keras-gates serve``. ``tritonserver``
    cannot bind port 0 and say which port it took, so free ports are picked here; when another
    process takes one first, Triton exits ("Address already in use") and is started again on
    other ports (``ATTEMPTS`` times). Ready means ``/v2`` answers with Triton's own metadata, so
    another server that took the port is never mistaken for it.
    """

    ATTEMPTS = 3
    READY_S = 120

    def __init__(self, repository: Path, log: Path, http_port: int = 0, grpc_port: int = 0):
        self.repository, self.log = Path(repository), Path(log)
        self.wanted = (http_port, grpc_port)
        self.http_port = self.grpc_port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> TritonServer:
        for _ in range(self.ATTEMPTS):
            self.http_port, self.grpc_port = (p or free_port() for p in self.wanted)
            if self._start():
                return self
            if "Address already in use" not in self.log.read_text(errors="replace"):
                break
        raise RuntimeError(f"tritonserver did not start:\n{self.log.read_text()[-4000:]}")

    def _start(self) -> bool:
        """Start it; ``True`` once ready, ``False`` if it exited (the log says why)."""
        paths = ensure()
        command = [
            str(paths["binary"]),
            f"--model-repository={self.repository}",
            f"--backend-directory={paths['backends']}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--exit-timeout-secs=2",
        ]
        env = {**os.environ, "LD_LIBRARY_PATH": str(paths["libs"])}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        from tests.waiting import WaitTimeout, wait_until

        try:
            wait_until(
                lambda: self.proc.poll() is not None or self._answers_as_triton(),
                self.READY_S,
                interval=0.2,
            )
        except WaitTimeout:
            self.stop()
            raise RuntimeError(
                f"tritonserver was not ready in {self.READY_S} s:\n{self.log.read_text()[-4000:]}"
            ) from None
        return self.proc.poll() is None

    def _answers_as_triton(self) -> bool:
        import json

        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=5) as answer:
                if answer.status != 200:
                    return False
            with urllib.request.urlopen(f"{self.url}/v2", timeout=5) as answer:
                return json.load(answer).get("name") == "triton"
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    reason = unsupported()
    if reason:
        print(f"Real Triton tests will be skipped: {reason}.")
    else:
        print("Triton ready:", ", ".join(f"{k} {v}" for k, v in ensure().items()))
