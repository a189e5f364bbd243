"""Open Inference Protocol (v2) tensors: the JSON format and the binary tensor data extension.

:func:`decode_request` turns a request body into numpy inputs plus the request's options;
:func:`encode_response` turns output arrays into a JSON body, or a JSON header followed by raw
tensor bytes (``Inference-Header-Content-Length``) for outputs asked for in binary. Pure
functions of bytes and arrays: no model, no HTTP framework.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from .datatypes import NUMPY_TO_V2
from .errors import BadRequest
from .tensors import (
    InferRequest,
    array_from_values,
    requested_outputs,
    serialize_bytes,
    tensor_header,
)

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode a v2 ``/infer`` body; ``header_length`` is ``Inference-Header-Content-Length``."""
    if header_length is None:
        header, binary = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(body)} bytes; expected the length of the JSON header at the body's start."
            )
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"Malformed JSON in the request body: {err}.") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest(
            'The request body must be a JSON object with a non-empty "inputs" list, '
            'e.g. {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0, 1]}]}.'
        )
    inputs, used = _decode_inputs(doc["inputs"], binary)
    if used != len(binary):
        raise BadRequest(
            f"Binary tensor sizes do not add up: the inputs declare {used} bytes of "
            f"binary_data_size but {len(binary)} bytes follow the JSON header."
        )
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest('"parameters" must be a JSON object.')
    outputs, binary_outputs, classes = requested_outputs(doc.get("outputs"), parameters)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f'"id" must be a string, got {request_id!r}.')
    return InferRequest(request_id, inputs, parameters, outputs, binary_outputs, classes)


def _decode_inputs(items: list, binary) -> tuple[dict[str, np.ndarray], int]:
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        name, dtype, shape = tensor_header(item)
        if name in inputs:
            raise BadRequest(f"Input {name!r} appears twice in the request; expected once.")
        params = item.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            inputs[name] = _from_binary(name, item["datatype"], dtype, shape, binary, offset, size)
            offset += size
        elif "data" in item:
            inputs[name] = array_from_values(name, item["datatype"], dtype, shape, item["data"])
        else:
            raise BadRequest(
                f'Input {name!r} has neither "data" nor parameters.binary_data_size; expected one.'
            )
    return inputs, offset


def _from_binary(name, datatype, dtype, shape, binary, offset: int, size) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    if type(size) is not int or size != expected:  # noqa: E721
        raise BadRequest(
            f"Input {name!r} declares binary_data_size {size!r}, expected {expected} bytes "
            f"({datatype} of shape {shape})."
        )
    if offset + size > len(binary):
        raise BadRequest(
            f"Binary tensor sizes do not add up: input {name!r} needs bytes {offset}..."
            f"{offset + size} but only {len(binary)} bytes follow the JSON header."
        )
    array = np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset)
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    binary_outputs: set[str] | bool = False,
    parameters: dict | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the JSON header's length."""
    tensors, blobs = [], []
    for name, value in outputs.items():
        array = np.ascontiguousarray(value)
        strings = array.dtype == object  # BYTES: the classification extension's top-K strings
        entry: dict[str, Any] = {
            "name": name,
            "datatype": "BYTES" if strings else NUMPY_TO_V2[array.dtype],
            "shape": list(array.shape),
        }
        if binary_outputs is True or (binary_outputs and name in binary_outputs):
            blob = serialize_bytes(array) if strings else array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif strings:
            entry["data"] = [item.decode() for item in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1)
        tensors.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    doc["outputs"] = tensors
    header = orjson.dumps(doc, option=_DUMPS_OPTIONS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})
