"""The JSON documents of the protocol's read-only endpoints: server and model metadata, Triton's
model configuration and statistics. Built from a scheduler's public description of its model.
"""

from __future__ import annotations

from typing import Any

from .metrics import ModelMetrics
from .scheduler import ModelScheduler

EXTENSIONS = [
    "binary_tensor_data",
    "sequence",
    "model_configuration",
    "statistics",
    "parameters",
    "model_repository",
]


def _tensor(t) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": t.protocol_shape}


def model_metadata(scheduler: ModelScheduler, versions: list[str]) -> dict[str, Any]:
    """KServe v2 model metadata."""
    return {
        "name": scheduler.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [_tensor(t) for t in scheduler.inputs],
        "outputs": [_tensor(t) for t in scheduler.outputs],
    }


def _config_tensor(t, batched: bool, optional: bool = False) -> dict[str, Any]:
    dims = t.protocol_shape[1:] if batched else t.protocol_shape
    entry = {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": dims}
    if optional:
        entry["optional"] = True
    if t.role != "other":
        entry["keras_gates_role"] = t.role
    if t.per_step:
        entry["keras_gates_per_step"] = True
    return entry


def model_config(scheduler: ModelScheduler, num_versions: int) -> dict[str, Any]:
    """Triton-style model configuration (``max_batch_size`` 0 means no batch dim)."""
    batched = scheduler.batchable
    config = scheduler.config
    doc: dict[str, Any] = {
        "name": scheduler.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": num_versions}},
        "max_batch_size": scheduler.max_batch_size if batched else 0,
        "input": [
            _config_tensor(t, batched, t.role in ("lengths", "state")) for t in scheduler.inputs
        ],
        "output": [_config_tensor(t, batched) for t in scheduler.outputs],
    }
    if batched and scheduler.max_batch_size > 1:
        doc["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(config.max_queue_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": config.max_queue_size},
            "pads_variable_lengths": scheduler.can_pad,
        }
    if scheduler.streaming:
        doc["sequence_batching"] = {
            "max_sequence_idle_microseconds": int(config.session_idle_timeout_s * 1e6),
            "max_sequences": config.max_sessions,
            "state": [
                {
                    "input_name": t.name,
                    "output_name": t.state_pair,
                    "data_type": f"TYPE_{t.datatype}",
                    "dims": t.protocol_shape[1:],
                }
                for t in scheduler.inputs
                if t.role == "state"
            ],
        }
    return doc


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
        },
        "batch_stats": [
            {"batch_size": rows, "compute_infer": _duration(pair)}
            for rows, pair in sorted(metrics.batch_counts.items())
        ],
    }
