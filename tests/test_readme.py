"""The README, run as a reader runs it: every ``python`` and ``bash`` block, in order, each in its
own process, in one folder, after ``make demo``.

``make demo`` runs for real (``DEMO_ARGS=--quick`` trains 2 epochs; its artefacts go to the
folder's ``artifacts/``); ``make test`` is the command running this. A ``keras-gates serve``
line starts the server in the background on a free port, which replaces the README's port in
every later block; the servers stop at the end. What a block prints is checked where the README
says what it prints. The ``pip install`` lines are exercised by ``tests/test_install.py``.
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests import children, torch_cache
from tests.serving_models import serve_process
from tests.test_examples import DEMO, check_run

pytestmark = pytest.mark.slow  # child processes or real servers: make test, not make check

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README, flags=re.S)
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "MPLBACKEND": "Agg",
}

# Blocks that need PyTorch (it lives outside the venv, in tests/torch_cache.py's folder); they
# run with that folder on PYTHONPATH.
TORCH_PIECES = ("import torch",)
TORCH_ENV = torch_cache.pythonpath(ENV)

# What a block prints, where the README says it (a piece of the block -> a piece of its output).
PRINTS = {
    'trace["forget"].shape': "(16,) (2, 20, 16)",
    'get_gate_weights()["reset"]': "['bias', 'kernel', 'recurrent_bias', 'recurrent_kernel']",
    'print("open", paths["html"])': "index.html",
    "print(result.table(k=2))": "first_feature_high  auc      gated_lstm",
    'to_onnx(model, "model.onnx")': "'GRU': 1",
    'client.infer("model", inputs)': "(2, 2)",
    "keras-gates inspect": "forget",
    "-o sunspots.onnx --triton-repo": "wrote Triton model repo/sunspots",
    "--quantize int8": "int8_error",
    "curl -s": '"outputs"',
    "--triton-backend python": "wrote Triton model repo/sunspots_py (version 1, python)",
    "grpcclient.InferenceServerClient": "True",
    'from_onnx("lstm.onnx")': "['/LSTM', '/LSTM_1']",
}
SERVE = re.compile(r"^keras-gates serve (?P<args>.*?)(\s+#.*)?$", re.M)


class Reader:
    """The reader's folder, the servers they started and the ports those replaced."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ports: dict[str, int] = {}
        self.servers = ExitStack()

    def localize(self, text: str) -> str:
        for port, actual in self.ports.items():
            text = re.sub(rf"\blocalhost:{port}\b", f"127.0.0.1:{actual}", text)
        return text

    def run(self, *command: str) -> str:
        """``command`` in the reader's folder, its README ports localized; its stdout."""
        *program, code = command
        env = TORCH_ENV if any(piece in code for piece in TORCH_PIECES) else ENV
        done = children.run([*program, self.localize(code)], 300, cwd=self.folder, env=env)
        return done.stdout

    def python(self, code: str) -> str:
        return self.run(sys.executable, "-c", code)

    def bash(self, code: str) -> str:
        for match in SERVE.finditer(code):
            self.serve(match["args"].split())
        code = SERVE.sub("", code)
        code = re.sub(
            r"^make demo\b.*$",
            f"make -C {ROOT} demo ARTIFACTS={self.folder}/artifacts DEMO_ARGS=--quick",
            code,
            flags=re.M,
        )
        code = re.sub(r"^make test\b.*$", "", code, flags=re.M)  # the command running this
        return self.run("bash", "-euo", "pipefail", "-c", code)

    def serve(self, args: list[str]) -> None:
        """Start the README's ``keras-gates serve`` on ports it picks itself (0), and map the
        README's port numbers to them for the blocks that follow."""
        path, rest = args[0], args[1:]
        readme_port = "8000"
        if "--port" in rest:
            index = rest.index("--port")
            readme_port = rest[index + 1]
            del rest[index : index + 2]
        readme_grpc = None
        if "--grpc-port" in rest:
            index = rest.index("--grpc-port")
            readme_grpc, rest[index + 1] = rest[index + 1], "0"
        server = self.servers.enter_context(
            serve_process(
                self.folder / path, *rest, cwd=self.folder, env=ENV, program=["keras-gates"]
            )
        )
        self.ports[readme_port] = int(server.url.rsplit(":", 1)[1])
        if readme_grpc is not None:
            self.ports[readme_grpc] = int(server.grpc_address.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    reader = Reader(tmp_path_factory.mktemp("reader"))
    with reader.servers:
        yield reader


def test_readme_has_blocks_of_both_kinds():
    kinds = [kind for kind, _ in BLOCKS]
    assert kinds.count("python") >= 4 and kinds.count("bash") >= 4
    assert "make demo" in BLOCKS[0][1], "the README starts with make demo"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block(index, reader):
    kind, code = BLOCKS[index]
    if any(piece in code for piece in TORCH_PIECES) and not torch_cache.importable():
        pytest.skip(torch_cache.absent_reason())
    printed = reader.python(code) if kind == "python" else reader.bash(code)
    if index == 0:  # make demo: what test_examples checks of a demo.py run (it runs it only here)
        check_run(DEMO, printed, reader.folder / "artifacts")
    for piece, expected in PRINTS.items():
        if piece in code:
            assert expected in printed, f"block {index} printed:\n{printed}"
