"""The runtime layer: one onnxruntime ``InferenceSession`` per model version.

It knows ONNX and onnxruntime and nothing about HTTP, queues or sessions. It describes the model's
tensors (:class:`TensorInfo`, merged from onnxruntime and the keras-gates signature when the model
carries one) and runs a batch of feeds with :meth:`ModelRuntime.run`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_gates.signature import Signature, TensorSpec, read_signature

from .classification import model_labels
from .datatypes import ORT_TO_V2, V2_TO_NUMPY


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the server sees it: its keras-gates :class:`TensorSpec` (a
    plain one, role ``"other"`` or ``"output"``, for a tensor the signature does not name) with
    the shape the session runs (``None`` for a free dim), and its protocol datatype."""

    spec: TensorSpec
    datatype: str
    labels: tuple[str, ...] = ()  # an output's class labels (the classification extension)
    label_filename: str = ""  # the file they came from, in the model's folder ("": metadata)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def shape(self) -> tuple[int | None, ...]:
        return self.spec.shape

    @property
    def per_step(self) -> bool:
        return self.spec.per_step

    @property
    def state_pair(self) -> str | None:
        return self.spec.state_pair

    @property
    def aligned_with(self) -> str | None:
        return self.spec.aligned_with

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    @property
    def batch_only(self) -> bool:
        """A ``[batch]`` tensor (such as ``lengths``; the protocol advertises it as ``[-1, 1]``:
        :func:`~keras_gates.serving.datatypes.protocol_shape`)."""
        return self.shape == (None,)


def specs_of(tensors: Sequence[TensorInfo]) -> tuple[TensorSpec, ...]:
    """The keras-gates specs of ``tensors``, for the signature's feed and batching rules."""
    return tuple(t.spec for t in tensors)


def _ort_shape(shape) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


def _tensor_info(ort_arg, specs: dict[str, TensorSpec], default_role: str) -> TensorInfo:
    """onnxruntime's description of one tensor, completed from the keras-gates signature."""
    datatype = ORT_TO_V2.get(ort_arg.type)
    if datatype is None:
        raise ValueError(
            f"Tensor {ort_arg.name!r} has type {ort_arg.type}, which the server cannot carry; "
            "expected a numeric tensor type."
        )
    shape = _ort_shape(ort_arg.shape)
    dtype = V2_TO_NUMPY.get(datatype)
    dtype_name = dtype.name if dtype is not None else datatype.lower()
    spec = specs.get(ort_arg.name)
    if spec is None:
        return TensorInfo(TensorSpec(ort_arg.name, default_role, dtype_name, shape), datatype)
    if len(spec.shape) == len(shape):  # the signature may free dims onnxruntime pinned, never pin
        shape = tuple(o if s is not None else None for o, s in zip(shape, spec.shape, strict=True))
    return TensorInfo(dataclasses.replace(spec, shape=shape, dtype=dtype_name), datatype)


class ModelRuntime:
    """An ONNX model loaded into onnxruntime, with its tensors described.

    Args:
        path: the ``.onnx`` file.
        name: the model name clients use.
        version: the version string (``"1"`` for a bare file).
        threads: onnxruntime intra-op threads (1 leaves the other core to the HTTP loop).
    """

    def __init__(self, path: str | Path, name: str, version: str = "1", threads: int = 1):
        import onnxruntime as ort

        self.path = Path(path)
        self.name = name
        self.version = version
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"Cannot load model {name!r} from {self.path}: {err}") from err
        stat = self.path.stat()
        self.file_stamp = (stat.st_mtime_ns, stat.st_size)  # what was loaded (repository polls)
        self.signature: Signature | None = read_signature(self.path)
        specs = {}
        if self.signature is not None:
            specs = {t.name: t for t in (*self.signature.inputs, *self.signature.outputs)}
        # Inputs with a default (e.g. the Triton sequence controls START/END/READY/CORRID that the
        # exporter adds to a repository's streaming model) are left to their defaults: this server
        # runs the sequence protocol itself.
        defaulted = {a.name for a in self._session.get_overridable_initializers()}
        self.inputs = tuple(
            _tensor_info(a, specs, "other")
            for a in self._session.get_inputs()
            if a.name not in defaulted
        )
        outputs = [_tensor_info(a, specs, "output") for a in self._session.get_outputs()]
        metadata = self._session.get_modelmeta().custom_metadata_map
        labelled = model_labels(self.path, [t.name for t in outputs if t.role != "state"], metadata)
        self.outputs = tuple(
            dataclasses.replace(t, labels=labelled[t.name][0], label_filename=labelled[t.name][1])
            if t.name in labelled
            else t
            for t in outputs
        )
        self._output_names = [t.name for t in self.outputs]

    @property
    def streaming(self) -> bool:
        """True when the model carries recurrent state between calls (state inputs present)."""
        return any(t.role == "state" for t in self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by name."""
        values = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values, strict=True))
