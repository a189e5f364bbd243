"""Open Inference Protocol tensors over gRPC: ``ModelInferRequest`` in, ``ModelInferResponse`` out.

The messages are the protocol's own generated stubs (``tritonclient.grpc.service_pb2``). Inputs
arrive as ``raw_input_contents`` (little-endian bytes, one entry per input, as the stock clients
send them) or as typed ``contents``; outputs always leave as ``raw_output_contents``. The checks
and messages are those of the HTTP codec (:mod:`.tensors`, which both codecs share): an input
named twice, an unknown datatype, a shape that is not a list of non-negative integers, a value
count that does not match the shape all read the same on both transports.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from .datatypes import NUMPY_TO_V2
from .errors import BadRequest
from .tensors import (
    InferRequest,
    array_from_values,
    requested_outputs,
    serialize_bytes,
    tensor_header,
)

# The typed ``contents`` field each datatype's values travel in (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_ALL_FIELDS = (*sorted(set(CONTENTS_FIELD.values())), "bytes_contents")
_UNSUPPORTED_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size")


def parameters_of(parameters) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as a plain dict of Python values."""
    found = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        found[key] = getattr(value, choice) if choice is not None else None
    return found


def decode_infer_request(request: service_pb2.ModelInferRequest) -> InferRequest:
    """The inputs, requested outputs and parameters of a ``ModelInferRequest``."""
    if not request.inputs:
        raise BadRequest(
            "The request has no inputs; expected at least one InferInputTensor with a name, "
            "datatype, shape and its values in raw_input_contents or contents."
        )
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"The request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents "
            "entries; expected one entry per input, in input order (or none, with every input's "
            "values in its contents)."
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        header = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        name, dtype, shape = tensor_header(header)
        if name in inputs:
            raise BadRequest(f"Input {name!r} appears twice in the request; expected once.")
        for key in _UNSUPPORTED_PARAMETERS:
            if key in tensor.parameters:
                raise BadRequest(
                    f"Input {name!r} names a shared-memory region; the shared-memory extensions "
                    "are not supported, send the values in raw_input_contents."
                )
        if raw:
            inputs[name] = _from_raw(name, tensor, dtype, shape, raw[index])
        else:
            inputs[name] = _from_contents(name, tensor, dtype, shape)
    parameters = parameters_of(request.parameters)
    requested = [
        {"name": o.name, "parameters": parameters_of(o.parameters)} for o in request.outputs
    ]
    outputs, _, classes = requested_outputs(requested or None, {})
    return InferRequest(request.id or None, inputs, parameters, outputs, True, classes)


def _from_raw(name: str, tensor, dtype: np.dtype, shape: list[int], data: bytes) -> np.ndarray:
    if tensor.HasField("contents") and any(getattr(tensor.contents, f) for f in _ALL_FIELDS):
        raise BadRequest(
            f"Input {name!r} has values both in contents and in raw_input_contents; expected "
            "raw_input_contents for every input, or contents for every input."
        )
    count = math.prod(shape)
    if len(data) != count * dtype.itemsize:
        raise BadRequest(
            f"Input {name!r} has {len(data)} bytes in raw_input_contents, expected "
            f"{count * dtype.itemsize} bytes ({tensor.datatype} of shape {shape})."
        )
    array = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=count)
    if not array.flags.aligned or array.dtype != dtype:
        array = array.astype(dtype)
    return array.reshape(shape)


def _from_contents(name: str, tensor, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    field = CONTENTS_FIELD.get(tensor.datatype)
    others = [f for f in _ALL_FIELDS if f != field and getattr(tensor.contents, f)]
    if field is None or others:
        where = f"contents.{field} or raw_input_contents" if field else "raw_input_contents"
        got = f"values in contents.{others[0]}" if others else "no raw_input_contents"
        raise BadRequest(
            f"Input {name!r} has datatype {tensor.datatype}, so its values go in {where}; "
            f"got {got}."
        )
    values = list(getattr(tensor.contents, field))
    return array_from_values(name, tensor.datatype, dtype, shape, values)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    response: service_pb2.ModelInferResponse | None = None,
) -> service_pb2.ModelInferResponse:
    """A ``ModelInferResponse`` with every output's bytes in ``raw_output_contents``, written into
    ``response`` when given (a stream message's ``infer_response``: no copy)."""
    if response is None:
        response = service_pb2.ModelInferResponse()
    response.model_name, response.model_version = model_name, model_version
    response.id = request_id or ""
    raw = response.raw_output_contents
    for name, value in outputs.items():
        array = np.ascontiguousarray(value)
        if array.dtype == object:  # BYTES: the classification extension's top-K strings
            response.outputs.add(name=name, datatype="BYTES", shape=array.shape)
            raw.append(serialize_bytes(array))
            continue
        response.outputs.add(name=name, datatype=NUMPY_TO_V2[array.dtype], shape=array.shape)
        raw.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return response


def model_metadata(doc: dict) -> service_pb2.ModelMetadataResponse:
    """:func:`~keras_gates.serving.documents.model_metadata` as its protobuf message."""
    return json_format.ParseDict(
        doc, service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True
    )


def model_config(doc: dict, max_queue_delay_ms: float) -> service_pb2.ModelConfigResponse:
    """:func:`~keras_gates.serving.documents.model_config` as Triton's ``ModelConfig`` message.

    Fields the message has no place for (the ``keras_gates_*`` roles of the HTTP document) are
    left out. A batched streaming model's ``sequence_batching`` gets the strategy ``oldest``
    (sequences batched together, waiting up to the model's ``max_queue_delay_ms``).
    """
    if "sequence_batching" in doc and doc.get("max_batch_size", 0) > 1:
        doc = dict(doc)
        oldest = {
            "max_candidate_sequences": doc["max_batch_size"],
            "max_queue_delay_microseconds": int(max_queue_delay_ms * 1000),
        }
        doc["sequence_batching"] = {"oldest": oldest, **doc["sequence_batching"]}
    config = json_format.ParseDict(doc, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
    return service_pb2.ModelConfigResponse(config=config)


def model_statistics(entries: list[dict]) -> service_pb2.ModelStatisticsResponse:
    """:func:`~keras_gates.serving.documents.model_stats` entries as their protobuf message."""
    return json_format.ParseDict(
        {"model_stats": entries}, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True
    )
