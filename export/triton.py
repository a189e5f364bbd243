"""A Triton Inference Server model repository for an exported model (onnxruntime backend).

``DIR/NAME/config.pbtxt`` + ``DIR/NAME/VERSION/model.onnx``. A plain export gets
``dynamic_batching``; a streaming export gets a ``sequence_batcher`` whose implicit state carries
each layer's ``h``/``c`` between requests of one sequence, and START/END/READY/CORRID control
inputs (added to the repository's copy of the model as optional inputs: START zeroes the
incoming state, the others are accepted and unused). The config is checked by parsing it as
Triton's ``ModelConfig``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .signature import Signature, read_signature

DTYPES = {"float32": "TYPE_FP32", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
ONNX_TO_TRITON = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 13: "TYPE_UINT64"}
CONTROLS = (
    ("START", "CONTROL_SEQUENCE_START"),
    ("END", "CONTROL_SEQUENCE_END"),
    ("READY", "CONTROL_SEQUENCE_READY"),
)
CORRID = "CORRID"
NAME_RULE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def write_triton_repo(
    onnx_path: str | os.PathLike,
    repo: str | os.PathLike,
    name: str,
    version: int = 1,
    max_batch_size: int = 64,
    idle_microseconds: int = 60_000_000,
) -> Path:
    """Write the Triton model directory for ``onnx_path``; returns ``repo/name``."""
    import onnx

    from keras_gates.atomic import write_bytes

    if not NAME_RULE.match(name or ""):
        raise ValueError(
            "Received an invalid value for argument `name`, expected letters, digits, '_', '.' "
            f"or '-', got {name!r}."
        )
    if not isinstance(version, int) or version < 1:
        raise ValueError(
            f"Received an invalid value for argument `version`, expected a positive integer, "
            f"got {version!r}."
        )
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise ValueError(
            f"Received a Triton repository {str(repo)!r} that is a file, expected a directory "
            "(it is created when missing)."
        )
    model = onnx.load(str(onnx_path))
    signature = read_signature(model)
    if signature is None:
        raise ValueError(f"{str(onnx_path)!r} was not exported by keras-gates (no signature).")
    if signature.streaming:
        add_sequence_controls(model, signature)
    text = config_text(model, signature, name, max_batch_size, idle_microseconds)
    check_config(text, model)
    target = repo / name / str(version)
    target.mkdir(parents=True, exist_ok=True)
    write_bytes(target / "model.onnx", model.SerializeToString())
    write_bytes(repo / name / "config.pbtxt", text.encode())
    return repo / name


def _dims(value_info: Any) -> list[int]:
    """Triton dims (batch axis dropped): -1 for dynamic axes."""
    dims = value_info.type.tensor_type.shape.dim[1:]
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]


def _tensor(kind: str, value_info: Any) -> str:
    dtype = ONNX_TO_TRITON[value_info.type.tensor_type.elem_type]
    dims = _dims(value_info)
    reshape = ""
    if not dims:  # a [batch] tensor such as lengths: Triton wants at least one dim
        dims, reshape = [1], " reshape: { shape: [ ] }"
    return f'  {{ name: "{value_info.name}" data_type: {dtype} dims: {dims}{reshape} }}'


def config_text(
    model: Any, signature: Signature, name: str, max_batch_size: int, idle_us: int
) -> str:
    """``config.pbtxt`` text: state and control tensors go to the sequence batcher."""
    hidden = {n for pair in signature.state_pairs for n in pair} | {c for c, _ in CONTROLS}
    hidden.add(CORRID)
    inputs = [_tensor("input", v) for v in model.graph.input if v.name not in hidden]
    outputs = [_tensor("output", v) for v in model.graph.output if v.name not in hidden]
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(inputs) + "\n]",
        "output [\n" + ",\n".join(outputs) + "\n]",
    ]
    if signature.streaming:
        lines.append(_sequence_batcher(signature, idle_us))
    else:
        lines.append("dynamic_batching { }")
    lines.append("instance_group [ { kind: KIND_CPU count: 1 } ]")
    return "\n".join(lines) + "\n"


def _sequence_batcher(signature: Signature, idle_us: int) -> str:
    specs = {t.name: t for t in signature.inputs}
    states = []
    for inp, out in signature.state_pairs:
        units = specs[inp].shape[1]
        states.append(
            f'    {{ input_name: "{inp}" output_name: "{out}" data_type: TYPE_FP32 '
            f"dims: [ {units} ] initial_state: {{ data_type: TYPE_FP32 dims: [ {units} ] "
            'zero_data: true name: "zeros" } }'
        )
    controls = [
        f'    {{ name: "{n}" control [ {{ kind: {k} fp32_false_true: [ 0, 1 ] }} ] }}'
        for n, k in CONTROLS
    ]
    controls.append(
        f'    {{ name: "{CORRID}" control [ {{ kind: CONTROL_SEQUENCE_CORRID '
        "data_type: TYPE_UINT64 } ] }"
    )
    return (
        "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {idle_us}\n"
        "  control_input [\n" + ",\n".join(controls) + "\n  ]\n"
        "  state [\n" + ",\n".join(states) + "\n  ]\n}"
    )


def add_sequence_controls(model: Any, signature: Signature) -> None:
    """Add START/END/READY (fp32 ``[batch, 1]``) and CORRID (uint64) inputs; START resets state.

    Each has a zero initializer, so onnxruntime treats it as optional: the same file still runs
    without them (keras-gates' own server, :class:`Predictor`), while Triton feeds them.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    for control, _ in CONTROLS:
        graph.input.append(helper.make_tensor_value_info(control, TensorProto.FLOAT, ["batch", 1]))
        graph.initializer.append(numpy_helper.from_array(np.zeros((1, 1), np.float32), control))
    graph.input.append(helper.make_tensor_value_info(CORRID, TensorProto.UINT64, ["batch", 1]))
    graph.initializer.append(numpy_helper.from_array(np.zeros((1, 1), np.uint64), CORRID))
    graph.initializer.append(numpy_helper.from_array(np.ones((), np.float32), "kg_one"))
    keep = helper.make_node("Sub", ["kg_one", "START"], ["kg_keep_state"], name="kg_keep_state")
    nodes = [keep]
    for inp, _ in signature.state_pairs:
        gated = f"{inp}.kept"
        for node in graph.node:
            node.input[:] = [gated if n == inp else n for n in node.input]
        nodes.append(helper.make_node("Mul", [inp, "kg_keep_state"], [gated], name=gated))
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)


def check_config(text: str, model: Any) -> Any:
    """Parse ``text`` as Triton's ``ModelConfig`` and check every name exists in ``model``."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    inputs = {v.name for v in model.graph.input}
    outputs = {v.name for v in model.graph.output}
    named = [(t.name, inputs) for t in config.input] + [(t.name, outputs) for t in config.output]
    for state in config.sequence_batching.state:
        named += [(state.input_name, inputs), (state.output_name, outputs)]
    named += [(c.name, inputs) for c in config.sequence_batching.control_input]
    missing = [n for n, pool in named if n not in pool]
    if missing:
        raise ValueError(f"Triton config names tensors missing from the ONNX model: {missing}.")
    return config
