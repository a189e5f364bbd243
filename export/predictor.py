"""Run an exported model with onnxruntime: :class:`Predictor` and its streaming :class:`Stream`."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_gates.signature import Signature, read_signature

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Predictor:
    """An onnxruntime session around an exported model, honest about where it runs.

    Args:
        path: The ``.onnx`` file written by :func:`keras_gates.export.to_onnx`.
        device: ``"auto"`` (CUDA when onnxruntime has it, else CPU), ``"cpu"`` or ``"cuda"``
            (raises when CUDA is not available or the session did not start on it).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).

    ``provider`` is the execution provider the session actually runs on. ``predict`` may be
    called from several threads at once; each :meth:`stream` keeps its own state.

    Example:

    >>> predictor = Predictor("model.onnx", device="cpu")  # doctest: +SKIP
    >>> predictor.predict(x)["dense"].shape  # doctest: +SKIP
    (2, 1)
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        if device not in DEVICES:
            raise ValueError(
                f"Received an invalid value for argument `device`, expected one of {DEVICES}, "
                f"got {device!r}."
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(
                "Received an invalid value for argument `threads`, expected a positive integer "
                f"or None, got {threads!r}."
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Received a model path that does not exist: {str(path)!r}.")
        available = ort.get_available_providers()
        if device == "cuda" and CUDA not in available:
            raise RuntimeError(
                f"Received `device='cuda'` but this onnxruntime has no {CUDA} (available: "
                f"{available}). Install onnxruntime-gpu, or pass device='cpu' or 'auto'."
            )
        wanted = [CUDA, CPU] if device != "cpu" and CUDA in available else [CPU]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        self.path = str(path)
        self.device = device
        self.session = ort.InferenceSession(self.path, options, providers=wanted)
        self.provider = self.session.get_providers()[0]
        if CUDA in wanted and self.provider != CUDA:
            message = (
                f"onnxruntime could not start {CUDA} for {self.path!r}; running on {self.provider}."
            )
            if device == "cuda":
                raise RuntimeError(
                    message + " Check the CUDA/cuDNN installation or use device='cpu'."
                )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        self.signature = _signature(self)
        self.output_names = [t.name for t in self.signature.outputs if t.role == "output"]

    def __repr__(self) -> str:
        return f"Predictor({self.path!r}, provider={self.provider!r})"

    @property
    def data_inputs(self) -> list[str]:
        """Names of the inputs a caller provides (everything but lengths and states)."""
        return [t.name for t in self.signature.inputs if t.role in ("sequence", "other")]

    def predict(self, x: Any, lengths: Any = None) -> dict[str, np.ndarray]:
        """Run a batch from zero state.

        Args:
            x: An array (single-input models), a list of arrays in input order, or a dict by
                input name. Sequences are ``[batch, time, ...]``, right-padded.
            lengths: Valid length of each row (int, ``[batch]``) when the model has one lengths
                input; with several (one per sequence input, ``<input>_lengths``), a dict keyed
                by lengths input or sequence input name. Default, for each: its sequence's full
                time dimension. An input whose export refused padding
                (``signature.padding_refusals``) only accepts its full time dimension.

        Returns:
            ``{output_name: array}`` (state outputs of streaming models left out). Per-step
            outputs of gated layers are zero past each length.
        """
        names = self.output_names
        return dict(zip(names, self.session.run(names, self.feeds(x, lengths))))

    def stream(self) -> Stream:
        """A :class:`Stream` carrying the recurrent state across chunks (streaming exports)."""
        if not self.signature.streaming:
            raise ValueError(
                f"Model {self.path!r} was exported without `streaming=True`; it has no state "
                "inputs. Re-export with streaming=True (CLI: --streaming) to stream it."
            )
        return Stream(self)

    def feeds(
        self, x: Any, lengths: Any = None, states: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The onnxruntime feeds :meth:`predict` runs: ``x`` and ``lengths`` as in
        :meth:`predict`, ``states`` by state input name (default: zeros), checked.

        Raises:
            ValueError: inputs missing or of the wrong count; lengths outside ``[1, time]``,
                shorter than a time axis the export cannot pad or than a row needs; masked
                steps before unmasked ones (:class:`~keras_gates.signature.FeedError`).
        """
        given = self._data(x)
        for name, value in _lengths_by_input(self.signature, lengths).items():
            given[name] = np.asarray(value)
        given.update(states or {})
        feeds = self.signature.complete_feeds(given)
        self.signature.check_feeds(feeds)
        for spec in self.signature.inputs_with("lengths"):
            feeds[spec.name] = feeds[spec.name].astype(spec.dtype, copy=False)
        return feeds

    def _data(self, x: Any) -> dict[str, np.ndarray]:
        """The data inputs by name, in their dtypes."""
        names = self.data_inputs
        if isinstance(x, Mapping):
            missing = [n for n in names if n not in x]
            if missing:
                raise ValueError(f"Missing model inputs {missing}; expected {names}.")
            arrays = [x[n] for n in names]
        elif isinstance(x, Sequence) and not isinstance(x, np.ndarray) and len(names) > 1:
            arrays = list(x)
        else:
            arrays = [x]
        if len(arrays) != len(names):
            raise ValueError(f"Received {len(arrays)} inputs, expected {len(names)}: {names}.")
        specs = {t.name: t for t in self.signature.inputs}
        return {n: np.asarray(a, dtype=specs[n].dtype) for n, a in zip(names, arrays)}


class Stream:
    """Chunked inference: ``step(chunk)`` continues from the state the previous chunk left."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self._lock = threading.Lock()
        self._states: dict[str, np.ndarray] | None = None

    def reset(self) -> None:
        """Forget the carried state; the next chunk starts from zeros."""
        with self._lock:
            self._states = None

    @property
    def states(self) -> dict[str, np.ndarray] | None:
        """The carried state by input name (``<layer>.h_in``...), ``None`` before the first step."""
        return None if self._states is None else dict(self._states)

    def step(self, chunk: Any, lengths: Any = None) -> dict[str, np.ndarray]:
        """Run the next chunk ``[batch, time, ...]``; same outputs as :meth:`Predictor.predict`."""
        p = self.predictor
        pairs = p.signature.state_pairs
        outputs = p.output_names
        with self._lock:
            feeds = p.feeds(chunk, lengths, self._states)
            values = p.session.run(outputs + [out for _, out in pairs], feeds)
            self._states = {inp: v for (inp, _), v in zip(pairs, values[len(outputs) :])}
        return dict(zip(outputs, values[: len(outputs)]))


def _signature(predictor: Predictor) -> Signature:
    signature = read_signature(predictor.path)
    if signature is None:
        raise ValueError(
            f"{predictor.path!r} has no keras-gates signature in its metadata; export it with "
            "keras_gates.export.to_onnx (or `keras-gates export`)."
        )
    return signature


def _lengths_by_input(signature: Signature, lengths: Any) -> dict[str, Any]:
    """``lengths`` as ``{lengths input: value}`` (a dict may name the sequence inputs)."""
    specs = signature.inputs_with("lengths")
    if lengths is None:
        return {}
    names = [t.name for t in specs]
    if not isinstance(lengths, Mapping):
        if len(specs) != 1:
            raise ValueError(
                "Received an invalid value for argument `lengths`, expected a dict keyed by "
                f"lengths input ({names}) for a model with {len(specs)} lengths inputs, got "
                f"{type(lengths).__name__}."
            )
        return {names[0]: lengths}
    by_sequence = {t.sequence_input: t.name for t in specs if t.sequence_input}
    result = {}
    for key, value in lengths.items():
        name = key if key in names else by_sequence.get(key)
        if name is None:
            raise ValueError(
                f"Received lengths for {key!r}, which names no lengths input; expected keys from "
                f"{names} (or their sequence inputs {sorted(by_sequence)})."
            )
        result[name] = value
    return result
