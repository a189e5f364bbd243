"""Open Inference Protocol tensors, whatever the transport: the decoded request and the checks on
one input's header, values and the requested outputs, with the same messages over HTTP
(:mod:`.codec`) and gRPC (:mod:`.grpc_codec`).
"""

from __future__ import annotations

import array as pyarray
import math
import struct
from typing import Any

import numpy as np

from .classification import requested_count
from .datatypes import V2_TO_NUMPY
from .errors import BadRequest

_DATATYPES = ", ".join(V2_TO_NUMPY)
_ARRAY_CODES = {np.dtype(np.float32): "f", np.dtype(np.float64): "d"}


class InferRequest:
    """A decoded inference request."""

    __slots__ = ("id", "inputs", "parameters", "outputs", "binary_outputs", "classification")

    def __init__(self, id, inputs, parameters, outputs, binary_outputs, classification=None):
        self.id: str | None = id
        self.inputs: dict[str, np.ndarray] = inputs
        self.parameters: dict[str, Any] = parameters
        self.outputs: list[str] | None = outputs  # None: every output
        self.binary_outputs: set[str] | bool = binary_outputs  # True: all outputs in binary
        # {output: K} of the outputs asked for as their top-K classes (.classification)
        self.classification: dict[str, int] = classification or {}


def tensor_header(item: Any) -> tuple[str, np.dtype, list[int]]:
    """The name, numpy dtype and shape of one input's ``{"name", "datatype", "shape"}`` header,
    checked: a string name, a known datatype, a list of non-negative integer dims."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise BadRequest(f'Each input must be an object with a string "name", got {item!r:.80}.')
    name = item["name"]
    datatype = item.get("datatype")
    dtype = V2_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise BadRequest(f"Input {name!r} has datatype {datatype!r}, expected one of {_DATATYPES}.")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0
        for d in shape  # noqa: E721 - bool is not a dim
    ):
        raise BadRequest(
            f"Input {name!r} has shape {shape!r}, expected a list of non-negative integers."
        )
    return name, dtype, shape


def array_from_values(
    name: str, datatype: str, dtype: np.dtype, shape: list[int], data: Any
) -> np.ndarray:
    """One input's values given as a (nested) list (JSON ``data``, gRPC typed ``contents``) as an
    array of ``shape``; the count and the kind of values are checked."""
    count = math.prod(shape)
    if not isinstance(data, list):
        raise BadRequest(f'Input {name!r}: "data" must be a list, got {type(data).__name__}.')
    code = _ARRAY_CODES.get(dtype)
    if code is not None and len(data) == count and data and type(data[0]) is not list:
        try:  # flat numbers: the array module converts them twice as fast as numpy
            return np.frombuffer(pyarray.array(code, data), dtype).reshape(shape)
        except (TypeError, OverflowError):
            pass  # not plain numbers: numpy below names the problem
    try:
        if dtype.kind in "iub":
            kind = np.asarray(data).dtype.kind
            if count and kind not in ("b" if dtype.kind == "b" else "iub"):
                raise ValueError(f"got values of kind {kind!r}")
        array = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as err:
        raise BadRequest(
            f"Input {name!r}: data is not a (nested) list of {datatype} values ({err})."
        ) from None
    if array.size != count:
        raise BadRequest(
            f"Input {name!r} has shape {shape}, which needs {count} values, but data holds "
            f"{array.size}."
        )
    return array.reshape(shape)


def requested_outputs(
    items: Any, parameters: dict
) -> tuple[list[str] | None, set[str] | bool, dict[str, int]]:
    """The outputs a request names (``None``: every output), which of them go out in binary
    (``True``: all), from its ``outputs`` list and ``binary_data_output`` parameter, and the
    top-K asked for by their ``classification`` parameters (:mod:`.classification`)."""
    binary_all = parameters.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise BadRequest(f"Parameter binary_data_output must be true or false, got {binary_all!r}.")
    if items is None:
        return None, binary_all, {}
    if not isinstance(items, list):
        raise BadRequest('"outputs" must be a list of {"name": ...} objects.')
    names, binary, classes = [], set(), {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f'Each requested output must have a string "name", got {item!r:.80}.')
        params = item.get("parameters") or {}
        if "classification" in params and requested_count(item["name"], params["classification"]):
            classes[item["name"]] = params["classification"]
        if params.get("binary_data", binary_all):
            binary.add(item["name"])
        names.append(item["name"])
    return names, binary, classes


__all__ = ["InferRequest", "array_from_values", "requested_outputs", "tensor_header"]


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor on the wire (binary HTTP data, gRPC raw contents): each element's length
    as a little-endian uint32, then its bytes, in row-major order."""
    return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))
