"""Tiny ONNX models for the serving tests and benchmark, built with ``onnx.helper``.

They stand in for what the exporter writes: batch-major ``x [batch, time, features]`` plus an int32
``lengths [batch]`` input, transposed around a native ONNX LSTM/GRU node that takes
``sequence_lens``, then a dense layer, with the keras-gates signature in ``metadata_props``. The
streaming variant adds ``<layer>.h_in``/``.c_in`` inputs and ``.h_out``/``.c_out`` outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from keras_gates.signature import METADATA_KEY, Signature, TensorSpec

OPSET = 17
IR_VERSION = 10
LAYER = "rnn"


def _save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Check and write a model atomically."""
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(model.SerializeToString())
    os.replace(tmp, path)
    return path


def _weights(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _rnn_node(cell: str, units: int, features: int, rng, streaming: bool):
    """Initializers and the RNN node reading ``xt`` (time-major) and ``lengths``."""
    gates = 4 if cell == "lstm" else 3
    inits = [
        numpy_helper.from_array(_weights(rng, (1, gates * units, features), features), "W"),
        numpy_helper.from_array(_weights(rng, (1, gates * units, units), units), "R"),
        numpy_helper.from_array(_weights(rng, (1, 2 * gates * units), units), "B"),
    ]
    node_inputs = ["xt", "W", "R", "B", "lengths"]
    extra = {"linear_before_reset": 1} if cell == "gru" else {}
    if streaming:
        node_inputs.append("h0")
        if cell == "lstm":
            node_inputs.append("c0")
    node_outputs = ["Y", "Y_h"] + (["Y_c"] if cell == "lstm" else [])
    op = "LSTM" if cell == "lstm" else "GRU"
    node = helper.make_node(op, node_inputs, node_outputs, hidden_size=units, **extra)
    return inits, node


def make_rnn_model(
    path: str | Path,
    *,
    cell: str = "lstm",
    units: int = 8,
    features: int = 3,
    outputs: int = 2,
    streaming: bool = False,
    per_step: bool = True,
    seed: int = 0,
    metadata: bool = True,
) -> Path:
    """An RNN model ``x, lengths[, rnn.h_in, rnn.c_in] -> y[, y_steps][, rnn.h_out, rnn.c_out]``.

    ``y`` is a dense layer on the last valid hidden state, ``y_steps`` the same dense layer on
    every step (``per_step``, zeros past each length come out of the RNN as zeros before the dense
    layer, so the bias shows there; the server cuts per-step outputs back to the request length).
    """
    rng = np.random.default_rng(seed)
    inits, rnn = _rnn_node(cell, units, features, rng, streaming)
    inits += [
        numpy_helper.from_array(_weights(rng, (units, outputs), units), "Wd"),
        numpy_helper.from_array(_weights(rng, (outputs,), 1), "bd"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])]
    in_specs = [("x", "sequence", TensorProto.FLOAT, [None, None, features])]
    in_specs.append(("lengths", "lengths", TensorProto.INT32, [None]))
    out_specs = [("y", "output", TensorProto.FLOAT, [None, outputs], False)]
    states = ["h"] + (["c"] if cell == "lstm" else [])
    if streaming:
        for s in states:
            nodes.append(helper.make_node("Unsqueeze", [f"{LAYER}.{s}_in", "axis0"], [f"{s}0"]))
            in_specs.append((f"{LAYER}.{s}_in", "state", TensorProto.FLOAT, [None, units]))
    nodes.append(rnn)
    nodes += [
        helper.make_node("Squeeze", ["Y_h", "axis0"], ["h_last"]),
        helper.make_node("MatMul", ["h_last", "Wd"], ["y_mm"]),
        helper.make_node("Add", ["y_mm", "bd"], ["y"]),
    ]
    if per_step:
        nodes += [
            helper.make_node("Squeeze", ["Y", "axis1"], ["Y3"]),
            helper.make_node("Transpose", ["Y3"], ["Yb"], perm=[1, 0, 2]),
            helper.make_node("MatMul", ["Yb", "Wd"], ["ys_mm"]),
            helper.make_node("Add", ["ys_mm", "bd"], ["y_steps"]),
        ]
        out_specs.append(("y_steps", "output", TensorProto.FLOAT, [None, None, outputs], True))
    if streaming:
        for s in states:
            src = "h_last" if s == "h" else "c_last"
            if s == "c":
                nodes.append(helper.make_node("Squeeze", ["Y_c", "axis0"], ["c_last"]))
            nodes.append(helper.make_node("Identity", [src], [f"{LAYER}.{s}_out"]))
            out_specs.append((f"{LAYER}.{s}_out", "state", TensorProto.FLOAT, [None, units], False))
    return _finish(path, nodes, inits, in_specs, out_specs, streaming, metadata)


def make_aligned_model(path: str | Path, *, units: int = 8, seed: int = 0) -> Path:
    """Two sequence inputs merged step by step and one lengths input:
    ``a [B, T, 3], b [B, T, 2], lengths -> y, y_steps``, an LSTM over ``concat(a, b)`` on the
    feature axis. The signature says what the exporter writes for such a model: ``lengths``
    measures ``a`` and ``b`` is ``aligned_with`` it, so both servers pad the two alike.
    """
    rng = np.random.default_rng(seed)
    inits, rnn = _rnn_node("lstm", units, 5, rng, streaming=False)
    inits += [
        numpy_helper.from_array(_weights(rng, (units, 2), units), "Wd"),
        numpy_helper.from_array(_weights(rng, (2,), 1), "bd"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["x"], axis=2),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        rnn,
        helper.make_node("Squeeze", ["Y_h", "axis0"], ["h_last"]),
        helper.make_node("MatMul", ["h_last", "Wd"], ["y_mm"]),
        helper.make_node("Add", ["y_mm", "bd"], ["y"]),
        helper.make_node("Squeeze", ["Y", "axis1"], ["Y3"]),
        helper.make_node("Transpose", ["Y3"], ["Yb"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["Yb", "Wd"], ["ys_mm"]),
        helper.make_node("Add", ["ys_mm", "bd"], ["y_steps"]),
    ]
    in_specs = [
        ("a", "sequence", TensorProto.FLOAT, [None, None, 3]),
        ("b", "sequence", TensorProto.FLOAT, [None, None, 2]),
        ("lengths", "lengths", TensorProto.INT32, [None]),
    ]
    out_specs = [
        ("y", "output", TensorProto.FLOAT, [None, 2], False),
        ("y_steps", "output", TensorProto.FLOAT, [None, None, 2], True),
    ]
    facts = {"b": {"aligned_with": "a"}, "lengths": {"sequence_input": "a"}}
    return _finish(path, nodes, inits, in_specs, out_specs, False, True, facts)


def _finish(path, nodes, inits, in_specs, out_specs, streaming, metadata, facts=None) -> Path:
    def value_info(name, elem, shape):
        dims = [d if d is not None else f"d{name}{i}" for i, d in enumerate(shape)]
        return helper.make_tensor_value_info(name, elem, dims)

    graph = helper.make_graph(
        nodes,
        "serving_test",
        [value_info(n, e, s) for n, _, e, s in in_specs],
        [value_info(n, e, s) for n, _, e, s, _ in out_specs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    if metadata:
        signature = _signature(in_specs, out_specs, streaming, facts or {})
        helper.set_model_props(model, {METADATA_KEY: signature.to_json()})
    return _save(model, path)


def _signature(in_specs, out_specs, streaming, facts: dict[str, dict]) -> Signature:
    """The signature of a test model; ``facts`` adds fields by tensor name (``aligned_with``...)."""
    dtypes = {TensorProto.FLOAT: "float32", TensorProto.INT32: "int32"}

    def pair(name: str) -> str | None:
        if name.endswith("_in"):
            return name[:-3] + "_out"
        if name.endswith("_out"):
            return name[:-4] + "_in"
        return None

    inputs = tuple(
        TensorSpec(
            n,
            r,
            dtypes[e],
            tuple(s),
            state_pair=pair(n) if r == "state" else None,
            **facts.get(n, {}),
        )
        for n, r, e, s in in_specs
    )
    outputs = tuple(
        TensorSpec(
            n, r, dtypes[e], tuple(s), per_step=p, state_pair=pair(n) if r == "state" else None
        )
        for n, r, e, s, p in out_specs
    )
    return Signature(inputs=inputs, outputs=outputs, streaming=streaming, model_name="test")


def make_dense_model(
    path: str | Path,
    *,
    features: int = 4,
    outputs: int = 2,
    batch: int | None = None,
    seed: int = 1,
) -> Path:
    """A generic model without keras-gates metadata: ``y = x @ W + b`` with ``x [batch, features]``.

    ``batch=None`` leaves the batch dim free (same-shape batching possible); an int pins it.
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_weights(rng, (features, outputs), features), "W"),
        numpy_helper.from_array(_weights(rng, (outputs,), 1), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    dim = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, outputs])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return _save(model, path)


# Every numeric datatype of the protocol with its ONNX element type.
V2_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
}


def make_identity_model(path: str | Path, width: int = 3) -> Path:
    """A generic model echoing one ``[batch, width]`` input per datatype, ``in_X -> out_X``."""
    nodes = [helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]) for t in V2_TYPES]
    graph = helper.make_graph(
        nodes,
        "identity",
        [
            helper.make_tensor_value_info(f"in_{t}", e, ["batch", width])
            for t, e in V2_TYPES.items()
        ],
        [
            helper.make_tensor_value_info(f"out_{t}", e, ["batch", width])
            for t, e in V2_TYPES.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return _save(model, path)


def run_direct(path: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model with a fresh onnxruntime session (the reference the server is compared to)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a program that cannot bind port 0 itself and
    say which port it took (``tritonserver``); another process may take it before that program
    binds it, so its caller retries on "address in use" (:class:`tests.triton_server.
    TritonServer` does). ``keras-gates serve`` and :class:`ServerThread` bind port 0 instead."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChildOutput:
    """The merged stdout/stderr of a child process, read by a thread as it comes (so the child
    never blocks on a full pipe), kept for assertions and for failure messages."""

    def __init__(self, proc):
        import threading

        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, name="child-output", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in iter(self._proc.stdout.readline, b""):
            self.lines.append(raw.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.lines)

    def tail(self, chars: int = 4000) -> str:
        return self.text()[-chars:]

    def find(self, pattern: str):
        """The first match of regex ``pattern`` in the output so far (``None``: not yet)."""
        import re

        return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)

    def finish(self, timeout: float = 30) -> str:
        """All the output, once the child closed its end (after it exited)."""
        self._thread.join(timeout)
        return self.text()


@dataclasses.dataclass
class Served:
    """A ``keras-gates serve`` child: ``url`` (HTTP), ``grpc_address`` (``HOST:PORT`` with
    ``--grpc-port``), the process and its output. Unpacks as ``(url, proc)``."""

    url: str
    proc: Any
    output: ChildOutput
    grpc_address: str | None = None

    def __iter__(self):
        return iter((self.url, self.proc))


def grpc_port(served: Served) -> int:
    """The gRPC port a ``keras-gates serve --grpc-port 0`` took."""
    return int(served.grpc_address.rsplit(":", 1)[1])


@contextlib.contextmanager
def serve_process(
    path, *args: str, cwd=None, env=None, timeout: float = 90.0, program=None, port: int = 0
):
    """``keras-gates serve PATH ARGS`` in a subprocess; yields a :class:`Served` once
    ``/v2/health/ready`` answers, and stops it (SIGTERM, then SIGKILL) afterwards.

    The server binds ``--port 0`` (and ``--grpc-port 0`` where ARGS ask for that) itself and the
    harness reads the ports it took from its log (``HTTP listening on URL``): no port is picked
    here and then raced for. ``program`` is the command that stands for ``keras-gates``
    (default: ``python -m keras_gates.cli``; the tests of what users type pass the installed
    console script). A server that exits or is not ready within ``timeout`` fails the test with
    its output."""
    import sys
    import urllib.request

    from tests.waiting import wait_until

    program = list(program or [sys.executable, "-m", "keras_gates.cli"])
    command = [*program, "serve", str(path), "--port", str(port), *args]
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = ChildOutput(proc)

    def failed(what: str) -> str:
        return f"{' '.join(command)}: {what}; its output:\n{output.tail()}"

    def listening(pattern: str):
        return wait_until(
            lambda: output.find(pattern) or proc.poll() is not None,
            timeout,
            message=lambda: failed(f"no line matching {pattern!r}"),
        )

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(failed(f"exited with {proc.returncode} before it was ready"))
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5):
                return True
        except OSError:
            return False

    try:
        http = listening(r"HTTP listening on (http://\S+)")
        if http is True:
            raise AssertionError(failed(f"exited with {proc.returncode} before it listened"))
        url = http[1]
        served = Served(url, proc, output)
        if "--grpc-port" in args:
            grpc = listening(r"gRPC listening on (\S+)")
            if grpc is True:
                raise AssertionError(failed(f"exited with {proc.returncode} before gRPC listened"))
            served.grpc_address = grpc[1]
        wait_until(ready, timeout, interval=0.05, message=lambda: failed("not ready"))
        yield served
    finally:
        stop_process(proc, output)


def stop_process(proc: subprocess.Popen, output: ChildOutput) -> None:
    """Stop a server started by a test (SIGTERM, then SIGKILL after 30 s) and close its output."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    output.finish()
    if proc.stdout is not None:
        proc.stdout.close()


class ServerThread:
    """A real uvicorn server on 127.0.0.1 running an app in a background thread.

    Use as a context manager; ``url`` is its base address. Leaving the block asks uvicorn to shut
    down gracefully (in-flight requests finish) and joins the thread. ``options`` go to
    ``uvicorn.Config``.
    """

    def __init__(self, app, **options):
        import socket

        import uvicorn

        # Bound here, on port 0, and handed to uvicorn: the port is this server's from the start.
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, **options)
        self.server = uvicorn.Server(config)
        self._thread = None

    def __enter__(self) -> ServerThread:
        import threading

        from tests.waiting import wait_until

        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="uvicorn", daemon=True
        )
        self._thread.start()
        wait_until(
            lambda: self.server.started or not self._thread.is_alive(),
            message=f"uvicorn did not start on port {self.port}",
        )
        if not self.server.started:
            raise RuntimeError(f"uvicorn did not start on port {self.port}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        self.socket.close()

    def __exit__(self, *exc) -> None:
        self.stop()


def binary_body(tensors: list[tuple[str, np.ndarray, str]], **extra) -> tuple[bytes, int]:
    """A v2 body with binary tensors ``(name, array, datatype)``; returns it and its JSON length."""
    import json

    header = {
        "inputs": [
            {
                "name": n,
                "datatype": t,
                "shape": list(a.shape),
                "parameters": {"binary_data_size": a.nbytes},
            }
            for n, a, t in tensors
        ],
        **extra,
    }
    head = json.dumps(header).encode()
    return head + b"".join(a.tobytes() for _, a, _ in tensors), len(head)


def add_labels(path: str | Path, labels: dict[str, list[str]]) -> Path:
    """Record class labels in a model's metadata, as ``to_onnx(..., labels=...)`` does."""
    from keras_gates.labels import LABELS_KEY, labels_to_json

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = LABELS_KEY, labels_to_json({k: tuple(v) for k, v in labels.items()})
    return _save(model, path)
