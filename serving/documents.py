"""The JSON documents of the protocol's read-only endpoints: server and model metadata, Triton's
model configuration and statistics. Built from a scheduler's public description of its model.
"""

from __future__ import annotations

from typing import Any

from .datatypes import protocol_shape
from .metrics import ModelMetrics
from .scheduler import ModelScheduler

EXTENSIONS = [
    "classification",
    "binary_tensor_data",
    "sequence",
    "model_configuration",
    "statistics",
    "parameters",
    "model_repository",
]


def _metadata_tensor(t) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": protocol_shape(t.shape)}


def model_metadata(scheduler: ModelScheduler, versions: list[str]) -> dict[str, Any]:
    """KServe v2 model metadata."""
    return {
        "name": scheduler.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [_metadata_tensor(t) for t in scheduler.inputs],
        "outputs": [_metadata_tensor(t) for t in scheduler.outputs],
    }


def _config_tensor(t, batched: bool, is_input: bool, optional: bool = False) -> dict[str, Any]:
    """One ``input``/``output`` entry with the fields Triton's ``/config`` carries."""
    dims = protocol_shape(t.shape)
    if batched:
        dims = dims[1:]
    entry: dict[str, Any] = {"name": t.name, "data_type": f"TYPE_{t.datatype}"}
    if is_input:
        entry["format"] = "FORMAT_NONE"
    entry["dims"] = dims
    if t.batch_only:  # [B, 1] on the wire, [B] in the model (Triton's reshape)
        entry["reshape"] = {"shape": []}
    entry["is_shape_tensor"] = False
    if is_input:
        entry["allow_ragged_batch"] = False
        entry["optional"] = optional
    else:
        entry["label_filename"] = t.label_filename
    entry["is_non_linear_format_io"] = False
    if t.role != "other":
        entry["keras_gates_role"] = t.role
    if t.per_step:
        entry["keras_gates_per_step"] = True
    return entry


_OPTIMIZATION = {
    "priority": "PRIORITY_DEFAULT",
    "input_pinned_memory": {"enable": False},
    "output_pinned_memory": {"enable": False},
    "gather_kernel_buffer_threshold": 0,
    "eager_batching": False,
}


def model_config(scheduler: ModelScheduler, num_versions: int) -> dict[str, Any]:
    """Triton-style model configuration (``max_batch_size`` 0 means no batch dim).

    The fields of Triton's ``/config``; as in the repository ``--triton-repo`` writes, the
    recurrent state of a streaming model is the sequence batcher's ``state``, not an input.
    """
    batched = scheduler.batchable
    config = scheduler.config
    streaming = scheduler.streaming
    hidden = {"state"} if streaming else set()
    doc: dict[str, Any] = {
        "name": scheduler.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "runtime": "",
        "version_policy": {"latest": {"num_versions": num_versions}},
        "max_batch_size": scheduler.max_batch_size if batched else 0,
        "input": [
            _config_tensor(t, batched, True, t.role in ("lengths", "state"))
            for t in scheduler.inputs
            if t.role not in hidden
        ],
        "output": [
            _config_tensor(t, batched, False) for t in scheduler.outputs if t.role not in hidden
        ],
        "batch_input": [],
        "batch_output": [],
        "optimization": dict(_OPTIMIZATION),
    }
    if batched and scheduler.max_batch_size > 1 and not streaming:
        doc["dynamic_batching"] = {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": int(config.max_queue_delay_ms * 1000),
            "preserve_ordering": False,
            "priority_levels": 0,
            "default_priority_level": 0,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": False,
                "max_queue_size": config.max_queue_size,
            },
            "priority_queue_policy": {},
            "keras_gates_pads_variable_lengths": scheduler.can_pad,
        }
    if streaming:
        doc["sequence_batching"] = _sequence_batching(scheduler)
    doc.update(
        {
            "instance_group": [
                {
                    "name": f"{scheduler.name}_0",
                    "kind": "KIND_CPU",
                    "count": 1,
                    "gpus": [],
                    "secondary_devices": [],
                    "profile": [],
                    "passive": False,
                    "host_policy": "",
                }
            ],
            "default_model_filename": "model.onnx",
            "cc_model_filenames": {},
            "metric_tags": {},
            "parameters": {},
            "model_warmup": [],
        }
    )
    return doc


def _sequence_batching(scheduler: ModelScheduler) -> dict[str, Any]:
    """Sequences ride on request parameters here (no control tensors); the state per sequence."""
    config = scheduler.config
    states = []
    for t in scheduler.inputs:
        if t.role != "state":
            continue
        dims = protocol_shape(t.shape)[1:]
        zeros = {"data_type": f"TYPE_{t.datatype}", "dims": dims, "zero_data": True}
        states.append(
            {
                "input_name": t.name,
                "output_name": t.state_pair,
                "data_type": f"TYPE_{t.datatype}",
                "dims": dims,
                "initial_state": [{**zeros, "name": "zeros"}],
            }
        )
    return {
        "max_sequence_idle_microseconds": int(config.session_idle_timeout_s * 1e6),
        "max_sequences": config.max_sessions,
        "control_input": [],
        "state": states,
        "iterative_sequence": False,
        "keras_gates_pads_variable_lengths": scheduler.can_pad,
    }


def _duration(pair: list[int]) -> dict[str, int]:
    return {"count": pair[0], "ns": pair[1]}


def model_stats(scheduler: ModelScheduler, metrics: ModelMetrics) -> dict[str, Any]:
    """One entry of Triton's ``model_stats`` list."""
    totals = metrics.totals
    zero = [0, 0]
    return {
        "name": scheduler.name,
        "version": scheduler.version,
        "last_inference": metrics.last_inference_ms,
        "inference_count": metrics.inference_count,
        "execution_count": metrics.execution_count,
        "inference_stats": {
            "success": _duration(totals["success"]),
            "fail": _duration(totals["fail"]),
            "queue": _duration(totals["queue"]),
            "compute_input": _duration(zero),
            "compute_infer": _duration(totals["compute_infer"]),
            "compute_output": _duration(zero),
            "cache_hit": _duration(zero),
            "cache_miss": _duration(zero),
        },
        "response_stats": {},
        "batch_stats": [
            {
                "batch_size": rows,
                "compute_input": _duration([pair[0], 0]),
                "compute_infer": _duration(pair),
                "compute_output": _duration([pair[0], 0]),
            }
            for rows, pair in sorted(metrics.batch_counts.items())
        ],
        "memory_usage": [],
    }
