"""Triton's classification extension, on both transports: a requested output with
``"parameters": {"classification": K}`` comes back as the top-K ``"score:index[:label]"`` strings
(BYTES) instead of its values, as Triton 2.51 answers:

* per batch row, over the row's values flattened (a per-step output ``[B, T, N]`` ranks its
  ``T * N`` values: index ``t * N + n``), highest first; shape ``[B, K]`` (``[K]`` for a model
  without a batch axis);
* K larger than the values of a row gives them all; K 0 asks for no classification;
* the score as C's ``%f`` (six decimals) for floating outputs, the integer for integer ones; the
  label of class ``index`` follows when the output has labels and one for that index.

Labels (:func:`model_labels`): the file named by the output's ``label_filename`` in the
repository's ``config.pbtxt`` (Triton's way, written by ``write_triton_repo``), else the model's
metadata (``to_onnx(..., labels=...)``), else a ``labels.txt`` in the model's folder when the
model has one output. A post-processing step of the server (:meth:`InferenceServer.infer`): the
transports only encode BYTES tensors (:func:`.tensors.serialize_bytes`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from keras_gates.labels import LABELS_KEY, labels_from_json, read_label_file

from .errors import BadRequest

log = logging.getLogger("keras_gates.serving")
LABEL_FILE = "labels.txt"


def requested_count(name: str, value) -> int:
    """A request's ``classification`` parameter of output ``name``, checked (0: none)."""
    if type(value) is not int or value < 0:  # noqa: E721 - bool is not a count
        raise BadRequest(
            f"Output {name!r} has parameter classification {value!r}, expected a non-negative "
            "integer: the number of top classes to return (0: the output's values)."
        )
    return value


def check(scheduler, counts: Mapping[str, int]) -> None:
    """Refuse, before anything runs, classification of an output that has no numeric values."""
    datatypes = {t.name: t.datatype for t in scheduler.outputs}
    for name in counts:
        if datatypes.get(name) in ("BOOL", "BYTES"):
            raise BadRequest(
                f"Output {name!r} is {datatypes[name]}, which has no scores to rank; the "
                "classification extension needs a numeric output."
            )


def classify(scheduler, outputs: dict[str, np.ndarray], counts: Mapping[str, int]) -> dict:
    """``outputs`` with each output of ``counts`` replaced by its top-K classes."""
    labels = {t.name: t.labels for t in scheduler.outputs}
    batched = scheduler.batchable
    return {
        name: top_k(value, counts[name], labels.get(name, ()), batched) if name in counts else value
        for name, value in outputs.items()
    }


def top_k(array: np.ndarray, k: int, labels: Sequence[str], batched: bool) -> np.ndarray:
    """The top-``k`` ``b"score:index[:label]"`` of each row of ``array`` (the whole array when
    not ``batched``), highest first (ties: lower index first), as an object array."""
    rows = array.reshape(len(array), -1) if batched else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    floating = array.dtype.kind == "f"
    found = np.empty(order.shape, dtype=object)
    for r, row in enumerate(order):
        for c, index in enumerate(row):
            value = rows[r, index]
            text = f"{float(value):f}:{index}" if floating else f"{int(value)}:{index}"
            if index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            found[r, c] = text.encode()
    return found if batched else found[0]


def model_labels(
    path: Path, names: Sequence[str], metadata: Mapping[str, str]
) -> dict[str, tuple[tuple[str, ...], str]]:
    """``{output: (labels, label_filename)}`` of the model at ``path`` (``REPO/NAME/VERSION/
    model.onnx`` or a bare file), for the outputs ``names`` (see the module's docstring)."""
    folder = path.parent.parent if path.name == "model.onnx" else None
    files = _config_label_files(folder / "config.pbtxt") if folder is not None else {}
    recorded = labels_from_json(metadata.get(LABELS_KEY, "{}"))
    found = {}
    for name in names:
        if files.get(name):
            label_path = folder / files[name]
            if not label_path.is_file():
                raise ValueError(
                    f"The label_filename {files[name]!r} of output {name!r} in "
                    f"{folder / 'config.pbtxt'} is not a file beside it; Triton would not load "
                    "this model either."
                )
            found[name] = (read_label_file(label_path), files[name])
        elif name in recorded:
            found[name] = (recorded[name], "")
    if not found and folder is not None and len(names) == 1 and (folder / LABEL_FILE).is_file():
        found[names[0]] = (read_label_file(folder / LABEL_FILE), LABEL_FILE)
    return found


def _config_label_files(config: Path) -> dict[str, str]:
    """``{output: label_filename}`` of a Triton ``config.pbtxt`` (``{}`` without one)."""
    if not config.is_file():
        return {}
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as err:
        log.warning("%s not read for label files (not a Triton model config: %s)", config, err)
        return {}
    return {t.name: t.label_filename for t in parsed.output if t.label_filename}
