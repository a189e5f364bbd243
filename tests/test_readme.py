"""Every Python block of the README runs, in order, in one folder (as a reader would run them).

A block that talks to a server (``InferenceServerClient``) gets a real ``keras-gates serve`` of
the ``model.onnx`` an earlier block exported (``stream.onnx`` for a gRPC block, ``localhost:8001``),
on free ports.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.serving_models import free_port, serve_process

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
    grpc_port = free_port()  # a gRPC block talks to the streaming export over gRPC
    served = "stream.onnx" if "localhost:8001" in code else "model.onnx"
    with serve_process(served, "--grpc-port", str(grpc_port)) as (url, _):
        code = code.replace("localhost:8000", url.removeprefix("http://"))
        code = code.replace("localhost:8001", f"127.0.0.1:{grpc_port}")
        exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "readme"})
