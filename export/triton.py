"""A Triton Inference Server model repository for an exported model.

``DIR/NAME/config.pbtxt`` + ``DIR/NAME/VERSION/model.onnx``, in one of two flavours:

* ``backend="onnxruntime"`` (default): Triton's onnxruntime backend runs the file. A plain export
  gets ``dynamic_batching``; a streaming export gets a ``sequence_batcher`` whose implicit state
  carries each layer's ``h``/``c`` between requests of one sequence, and START/END/READY/CORRID
  control inputs (added to the repository's copy of the model as optional inputs: START zeroes the
  incoming state, the others are accepted and unused).
* ``backend="python"``: for a Triton without the onnxruntime backend. ``VERSION/model.py`` runs
  the unchanged ``model.onnx`` with onnxruntime inside Triton's Python backend (see
  ``triton_python_model.py``), with the feed defaults and checks of ``Predictor`` and
  ``keras-gates serve`` (from ``VERSION/keras_gates_signature.py``, a copy of ``signature.py``)
  and its batch layout (``VERSION/keras_gates_batching.py``, a copy of ``batching.py``); a
  streaming export keeps its state per correlation id there. Where the export can pad rows
  exactly (``Signature.pads_batches``, the rule ``keras-gates serve`` pads by), the sequence
  inputs and their lengths inputs get ``allow_ragged_batch: true``, so requests of different
  lengths reach one ``execute()`` and share one padded onnxruntime call (the onnxruntime backend
  cannot take ragged inputs).

The tensor contract is the one ``keras-gates serve`` advertises: every tensor with the batch axis
only (such as each ``lengths`` input) is ``dims: [1]`` with ``reshape: { shape: [] }``, i.e.
``[B, 1]`` on the wire and ``[B]`` inside the model. The config is built as Triton's
``ModelConfig`` message and checked against the model before anything is written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import keras_gates.batching as batching_module
import keras_gates.signature as signature_module
from keras_gates.labels import LABELS_KEY, label_file_text, labels_from_json
from keras_gates.signature import Signature, read_signature

BACKENDS = ("onnxruntime", "python")
ONNX_TO_TRITON = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 13: "TYPE_UINT64"}
CONTROLS = (
    ("START", "CONTROL_SEQUENCE_START"),
    ("END", "CONTROL_SEQUENCE_END"),
    ("READY", "CONTROL_SEQUENCE_READY"),
)
CORRID = "CORRID"
NAME_RULE = re.compile(r"^[A-Za-z0-9_.\-]+$")
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
# model.py applies the signature's checks and batches requests with copies of signature.py and
# batching.py (stdlib and numpy only), the code keras-gates serve runs
PYTHON_FILES = {
    "model.py": PYTHON_MODEL,
    "keras_gates_signature.py": Path(signature_module.__file__),
    "keras_gates_batching.py": Path(batching_module.__file__),
}


def write_triton_repo(
    onnx_path: str | os.PathLike,
    repo: str | os.PathLike,
    name: str,
    version: int = 1,
    max_batch_size: int = 64,
    idle_microseconds: int = 60_000_000,
    backend: str = "onnxruntime",
    execution_env: str | None = None,
) -> Path:
    """Write the Triton model directory for ``onnx_path``; returns ``repo/name``.

    Args:
        backend: ``"onnxruntime"`` or ``"python"`` (onnxruntime inside the Python backend).
        execution_env: for ``backend="python"``, a Python environment (a folder, or a packed
            ``.tar.gz``) with numpy and onnxruntime that the backend should run in
            (``EXECUTION_ENV_PATH``); default: the backend's own Python.
    """
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
    if backend not in BACKENDS:
        raise ValueError(
            f"Received an invalid value for argument `backend`, expected one of {BACKENDS}, "
            f"got {backend!r}."
        )
    if execution_env is not None and backend != "python":
        raise ValueError("Received `execution_env`, which only applies to backend='python'.")
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
    if signature.streaming and backend == "onnxruntime":
        add_sequence_controls(model, signature)
    config = build_config(model, signature, name, max_batch_size, idle_microseconds, backend)
    label_files = _label_files(model, config)
    if execution_env is not None:
        config.parameters["EXECUTION_ENV_PATH"].string_value = str(execution_env)
    text = config_text(config)
    check_config(text, model)
    target = repo / name / str(version)
    target.mkdir(parents=True, exist_ok=True)
    write_bytes(target / "model.onnx", model.SerializeToString())
    if backend == "python":
        for filename, source in PYTHON_FILES.items():
            write_bytes(target / filename, source.read_bytes())
    for filename, values in label_files.items():
        write_bytes(repo / name / filename, label_file_text(values).encode())
    write_bytes(repo / name / "config.pbtxt", text.encode())
    return repo / name


def _label_files(model: Any, config: Any) -> dict[str, tuple[str, ...]]:
    """The label files of the outputs the model's metadata labels (``labels.txt``, or
    ``labels_<output>.txt`` for several), named by each output's ``label_filename``: Triton's
    classification extension reads them."""
    props = {p.key: p.value for p in model.metadata_props}
    labels = labels_from_json(props.get(LABELS_KEY, "{}"))
    labelled = [t for t in config.output if t.name in labels]
    files = {}
    for tensor in labelled:
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", tensor.name)
        tensor.label_filename = "labels.txt" if len(labelled) == 1 else f"labels_{safe}.txt"
        files[tensor.label_filename] = labels[tensor.name]
    return files


def _triton_dims(value_info: Any) -> list[int]:
    """Triton dims (batch axis dropped): -1 for dynamic axes."""
    dims = value_info.type.tensor_type.shape.dim[1:]
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]


def _add_tensor(field: Any, value_info: Any, optional: bool = False) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    tensor = field.add(name=value_info.name)
    tensor.data_type = mc.DataType.Value(ONNX_TO_TRITON[value_info.type.tensor_type.elem_type])
    dims = _triton_dims(value_info)
    if not dims:  # a [batch] tensor such as lengths: [B, 1] on the wire, [B] in the model
        tensor.dims.append(1)
        tensor.reshape.SetInParent()
    else:
        tensor.dims.extend(dims)
    if optional:
        tensor.optional = True


def build_config(
    model: Any, signature: Signature, name: str, max_batch_size: int, idle_us: int, backend: str
) -> Any:
    """Triton's ``ModelConfig``: state and control tensors go to the sequence batcher.

    The Python flavour makes every ``lengths`` input optional (filled with the full length, as
    ``keras-gates serve`` does); the onnxruntime backend cannot, the ONNX graph needs them.
    """
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    hidden = {n for pair in signature.state_pairs for n in pair} | {c for c, _ in CONTROLS}
    hidden.add(CORRID)
    lengths = {t.name for t in signature.inputs_with("lengths")}
    for value in model.graph.input:
        if value.name not in hidden:
            _add_tensor(config.input, value, backend == "python" and value.name in lengths)
    for value in model.graph.output:
        if value.name not in hidden:
            _add_tensor(config.output, value)
    if signature.streaming:
        _sequence_batcher(config.sequence_batching, signature, idle_us, backend)
        if backend == "python":
            config.parameters["idle_seconds"].string_value = f"{idle_us / 1e6:g}"
    else:
        config.dynamic_batching.SetInParent()
        if backend == "python":
            _allow_ragged_batch(config, signature)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    return config


def _allow_ragged_batch(config: Any, signature: Signature) -> None:
    """Let Triton's dynamic batcher hand requests of different time lengths to one ``execute()``
    of model.py (each request still its own tensors), which pads them into one onnxruntime call:
    only where the export can pad them exactly (``Signature.padded_inputs``, the rule of model.py
    and ``keras-gates serve``): those inputs and the lengths inputs measuring them."""
    padded = signature.padded_inputs
    if not padded:
        return
    ragged = padded | {t.name for t in signature.inputs_with("lengths")}
    for tensor in config.input:
        if tensor.name in ragged:
            tensor.allow_ragged_batch = True


def _sequence_batcher(batcher: Any, signature: Signature, idle_us: int, backend: str) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    control = mc.ModelSequenceBatching.Control
    batcher.max_sequence_idle_microseconds = idle_us
    for name, kind in CONTROLS:
        entry = batcher.control_input.add(name=name).control.add(kind=control.Kind.Value(kind))
        entry.fp32_false_true.extend([0, 1])
    corrid = batcher.control_input.add(name=CORRID).control.add()
    corrid.kind, corrid.data_type = control.CONTROL_SEQUENCE_CORRID, mc.TYPE_UINT64
    if backend == "python":  # model.py keeps the state per correlation id itself
        return
    specs = {t.name: t for t in signature.inputs}
    for inp, out in signature.state_pairs:
        units = specs[inp].shape[1]
        state = batcher.state.add(input_name=inp, output_name=out, data_type=mc.TYPE_FP32)
        state.dims.append(units)
        state.initial_state.add(data_type=mc.TYPE_FP32, dims=[units], zero_data=True, name="zeros")


def config_text(config: Any) -> str:
    """``config.pbtxt`` text of a ``ModelConfig``."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


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
    if config.backend != "python":  # the Python flavour's model.py takes the controls
        named += [(c.name, inputs) for c in config.sequence_batching.control_input]
    missing = [n for n, pool in named if n not in pool]
    if missing:
        raise ValueError(f"Triton config names tensors missing from the ONNX model: {missing}.")
    return config
