"""Triton Python-backend model for a keras-gates ONNX export (copied as ``NAME/V/model.py``).

Runs ``model.onnx`` (beside this file) with onnxruntime inside Triton's Python backend, for a
Triton without the onnxruntime backend. Self-contained: it needs only numpy and onnxruntime in the
backend's Python environment. The tensor roles and the checks come from the keras-gates signature
stored in the model's metadata, read by ``keras_gates_signature.py``; requests are batched by
``keras_gates_batching.py``, the layout ``keras-gates serve`` batches by. Both are copies of
``keras_gates/signature.py`` and ``keras_gates/batching.py`` that the repository writer puts beside
this file, loaded from this folder by path, so the folder still works when copied to a machine
without keras-gates.

* Every request gets the defaults and checks ``Predictor`` and ``keras-gates serve`` apply
  (``Signature.complete_feeds``/``check_feeds``): a missing ``lengths`` input is its sequence's
  full length; lengths out of ``[1, time]``, shorter than the time axis of an input whose padding
  the export refused, shorter than a row needs (``min_length``), masked steps before unmasked ones
  and step-by-step merged inputs of different lengths are refused with INVALID_ARG (HTTP 400) and
  the same message, as are non-finite float inputs.
* Plain exports (``dynamic_batching``): the requests of one ``execute`` call that can share an
  onnxruntime call run as one batch; sequences of different lengths are right-padded (each
  request's ``lengths`` keeps the padding out of the result, per-step outputs are cut back) only
  where the export can pad (``signature.pads_batches``, the rule of ``keras-gates serve``: every
  sequence input padded, measured by a lengths input, its own or that of the input it is merged
  with step by step). Elsewhere requests share a call only with requests of the same lengths, each
  group runs on its own. Where it can pad, the exporter's config.pbtxt sets
  ``allow_ragged_batch`` so that Triton hands requests of different lengths (each with its own
  tensors) to one ``execute()``.
* Streaming exports (``sequence_batching``): the recurrent state is kept here per correlation id
  (CORRID); START zeroes it, END drops it after the request, a sequence idle longer than the
  ``idle_seconds`` parameter is dropped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import numpy as np

SIGNATURE_KEY = "keras_gates.signature"
# written beside this file by export/triton.py: copies of keras_gates/signature.py and batching.py
SIGNATURE_MODULE = "keras_gates_signature.py"
BATCHING_MODULE = "keras_gates_batching.py"
CONTROLS = ("START", "END", "READY", "CORRID")


class TritonPythonModel:
    """The entry point Triton's Python backend looks for."""

    def initialize(self, args: dict) -> None:
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            os.path.join(folder, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        if SIGNATURE_KEY not in meta:
            raise ValueError(f"{folder}/model.onnx has no keras-gates signature in its metadata.")
        signature = _load_module(folder, SIGNATURE_MODULE)
        self.batching = _load_module(folder, BATCHING_MODULE)
        self.signature = signature.Signature.from_json(meta[SIGNATURE_KEY])
        inputs = self.signature.inputs
        self.state_pairs = self.signature.state_pairs
        sequences = [t.name for t in inputs if t.role == "sequence"]
        self.time_input = sequences[0] if sequences else None  # per-step outputs follow its time
        self.lengths = {t.name for t in inputs if t.role == "lengths"}
        self.per_step = {t.name for t in self.signature.outputs if t.per_step}
        # The rule keras-gates serve pads by (Signature.padded_inputs, signature.pads_batches):
        # none where a padded step could reach an answer; requests then share a call only with
        # requests of the same lengths.
        self.padded = self.signature.padded_inputs
        self.inputs = [i["name"] for i in config["input"]]
        self.required = [i["name"] for i in config["input"] if not i.get("optional")]
        self.outputs = [o["name"] for o in config["output"]]
        self.idle_s = float(_parameter(config, "idle_seconds", "60"))
        self.states: dict[int, tuple[dict[str, np.ndarray], float]] = {}

    def execute(self, requests: list) -> list:
        if self.state_pairs:
            return [self._respond(lambda r=r: self._sequence_step(r)) for r in requests]
        answers, feeds = [None] * len(requests), {}
        for i, request in enumerate(requests):
            try:
                feeds[i] = self._feeds(request)
            except ValueError as err:  # a bad request is answered alone; the others still batch
                answers[i] = self._error(err)
        if feeds:
            try:
                ran = [self._response(outputs) for outputs in self._run(list(feeds.values()))]
            except Exception as err:  # noqa: BLE001 - every request must get an answer
                ran = [self._error(err, internal=True) for _ in feeds]
            for i, answer in zip(feeds, ran):
                answers[i] = answer
        return answers

    def finalize(self) -> None:
        self.states.clear()

    # ---- requests --------------------------------------------------------------------------
    def _feeds(self, request) -> dict[str, np.ndarray]:
        """The request's tensors, completed and checked as ``Predictor`` and the server do;
        ``ValueError`` (the signature's ``FeedError`` among them) for a bad request."""
        given = {}
        for name in self.inputs:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                array = tensor.as_numpy()
                if name in self.lengths and array.ndim == 2 and array.shape[1] == 1:
                    array = array.reshape(-1)  # [B, 1] on the wire, [B] in the model
                given[name] = array
        missing = [name for name in self.required if name not in given]
        if missing:
            raise ValueError(f"Missing input {missing[0]!r}; expected inputs {self.inputs}.")
        for name, array in given.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ValueError(f"Input {name!r} contains NaN or Inf; expected finite values.")
        feeds = self.signature.complete_feeds(given)
        self.signature.check_feeds(feeds)
        return feeds

    def _sequence_step(self, request) -> dict[str, np.ndarray]:
        controls = {}
        for name in CONTROLS:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            controls[name] = tensor.as_numpy().reshape(-1)[0] if tensor is not None else 0
        corrid, now = int(controls["CORRID"]), time.monotonic()
        self._drop_idle(now)
        feeds = self._feeds(request)  # the state inputs start as zeros (complete_feeds)
        if not controls["START"] and corrid in self.states:
            feeds.update(self.states[corrid][0])
        outputs = self.outputs + [out for _, out in self.state_pairs]
        values = dict(zip(outputs, self.session.run(outputs, feeds)))
        if controls["END"]:
            self.states.pop(corrid, None)
        else:
            self.states[corrid] = ({name: values[out] for name, out in self.state_pairs}, now)
        return {name: values[name] for name in self.outputs}

    def _drop_idle(self, now: float) -> None:
        for corrid in [c for c, (_, used) in self.states.items() if now - used > self.idle_s]:
            del self.states[corrid]

    # ---- batching --------------------------------------------------------------------------
    def _run(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """One onnxruntime call per group of requests that can share it (equal batch keys: the
        layout of ``keras_gates_batching.py``, the one ``keras-gates serve`` batches by); where
        the export can pad, the sequence inputs are right-padded to the group's longest and the
        per-step outputs cut back to each request's length."""
        batching, results = self.batching, [None] * len(feeds)
        for members in batching.group_by_key(feeds, self.padded):
            parts = [feeds[i] for i in members]
            values = self.session.run(self.outputs, batching.concat_feeds(parts, self.padded))
            rows = [batching.rows_of(p) for p in parts]
            steps = [batching.steps_of(p, self.time_input) for p in parts]
            outputs = dict(zip(self.outputs, values))
            for i, result in zip(members, batching.split_rows(outputs, rows, steps, self.per_step)):
                results[i] = result
        return results

    # ---- answers ---------------------------------------------------------------------------
    def _respond(self, compute):
        try:
            return self._response(compute())
        except ValueError as err:
            return self._error(err)
        except Exception as err:  # noqa: BLE001 - every request must get an answer
            return self._error(err, internal=True)

    def _response(self, outputs: dict[str, np.ndarray]):
        tensors = [self.pb.Tensor(n, np.ascontiguousarray(v)) for n, v in outputs.items()]
        return self.pb.InferenceResponse(output_tensors=tensors)

    def _error(self, err: Exception, internal: bool = False):
        error = self.pb.TritonError
        code = error.INTERNAL if internal else error.INVALID_ARG
        return self.pb.InferenceResponse(error=error(str(err), code))


def _load_module(folder: str, filename: str):
    """A helper module of this model's folder (``keras_gates_signature.py``,
    ``keras_gates_batching.py``), by path: not through ``sys.path``, where another model's copy or
    an installed keras-gates could answer instead."""
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing; expected the copy of keras-gates' {filename.split('_')[-1]} that "
            "write_triton_repo puts beside model.py. Rewrite the repository with keras-gates."
        )
    name = f"{filename.removesuffix('.py')}_{abs(hash(os.path.abspath(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while building the classes
    spec.loader.exec_module(module)
    return module


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)
