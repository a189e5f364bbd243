"""Triton Python-backend model for a keras-gates ONNX export (copied as ``NAME/V/model.py``).

Runs ``model.onnx`` (beside this file) with onnxruntime inside Triton's Python backend, for a
Triton without the onnxruntime backend. Self-contained: it needs only numpy and onnxruntime in the
backend's Python environment, and reads the tensor roles from the keras-gates signature stored in
the model's metadata.

* Plain exports (``dynamic_batching``): the requests of one ``execute`` call run as one batch;
  sequences of different lengths are right-padded and each request's ``lengths`` (filled with its
  full length when absent) keeps the padding out of the result, per-step outputs are cut back.
* Streaming exports (``sequence_batching``): the recurrent state is kept here per correlation id
  (CORRID); START zeroes it, END drops it after the request, a sequence idle longer than the
  ``idle_seconds`` parameter is dropped.
* Like ``keras-gates serve``, non-finite float inputs and lengths outside ``[1, time]`` are refused
  with INVALID_ARG (HTTP 400) instead of answering numbers.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

SIGNATURE_KEY = "keras_gates.signature"
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
        signature = json.loads(meta[SIGNATURE_KEY])
        self.specs = {t["name"]: t for t in signature["inputs"]}
        self.state_pairs = [(t["name"], t["state_pair"]) for t in signature["inputs"] if
                            t["role"] == "state"]  # fmt: skip
        self.sequences = [t["name"] for t in signature["inputs"] if t["role"] == "sequence"]
        lengths = [t["name"] for t in signature["inputs"] if t["role"] == "lengths"]
        # each lengths input belongs to a sequence input: "<input>_lengths", or the only one
        self.lengths = {
            name: name[: -len("_lengths")] if name[: -len("_lengths")] in self.sequences else
            self.sequences[0]
            for name in lengths
        }  # fmt: skip
        self.per_step = {t["name"] for t in signature["outputs"] if t.get("per_step")}
        self.inputs = [i["name"] for i in config["input"]]
        self.required = [i["name"] for i in config["input"] if not i.get("optional")]
        self.outputs = [o["name"] for o in config["output"]]
        self.dtypes = {i.name: _NUMPY.get(i.type) for i in self.session.get_inputs()}
        self.idle_s = float(_parameter(config, "idle_seconds", "60"))
        self.states: dict[int, tuple[dict[str, np.ndarray], float]] = {}

    def execute(self, requests: list) -> list:
        if self.state_pairs:
            return [self._respond(lambda r=r: self._sequence_step(r)) for r in requests]
        try:
            feeds = [self._feeds(r) for r in requests]
        except ValueError:  # some request is bad: answer each on its own
            return [self._respond(lambda r=r: self._run([self._feeds(r)])[0]) for r in requests]
        try:
            results = self._run(feeds)
        except Exception as err:  # noqa: BLE001 - every request must get an answer
            return [self._error(err, internal=True) for _ in requests]
        return [self._response(outputs) for outputs in results]

    def finalize(self) -> None:
        self.states.clear()

    # ---- requests --------------------------------------------------------------------------
    def _feeds(self, request) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.inputs:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                feeds[name] = tensor.as_numpy()
        missing = [name for name in self.required if name not in feeds]
        if missing:
            raise ValueError(f"Missing input {missing[0]!r}; expected inputs {self.inputs}.")
        for name, array in feeds.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ValueError(f"Input {name!r} contains NaN or Inf; expected finite values.")
        rows = next(iter(feeds.values())).shape[0]
        for name, sequence in self.lengths.items():
            steps = feeds[sequence].shape[1]
            given = feeds.get(name)
            if given is None:
                feeds[name] = np.full(rows, steps, self.dtypes.get(name) or np.int32)
                continue
            given = given.reshape(rows)
            if given.min() < 1 or given.max() > steps:
                raise ValueError(
                    f"Input {name!r} holds lengths {given.tolist()}, expected values between 1 "
                    f"and the time length {steps}."
                )
            feeds[name] = given
        return feeds

    def _sequence_step(self, request) -> dict[str, np.ndarray]:
        controls = {}
        for name in CONTROLS:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            controls[name] = tensor.as_numpy().reshape(-1)[0] if tensor is not None else 0
        corrid, now = int(controls["CORRID"]), time.monotonic()
        self._drop_idle(now)
        feeds = self._feeds(request)
        rows = next(iter(feeds.values())).shape[0]
        if controls["START"] or corrid not in self.states:
            state = {
                name: np.zeros((rows, self.specs[name]["shape"][1]), np.float32)
                for name, _ in self.state_pairs
            }
        else:
            state = self.states[corrid][0]
        feeds.update(state)
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
        """One onnxruntime call for every request that can share it (same trailing shapes)."""
        if len(feeds) == 1:
            return [dict(zip(self.outputs, self.session.run(self.outputs, feeds[0])))]
        steps = [f[self.sequences[0]].shape[1] if self.sequences else None for f in feeds]
        longest = max(steps) if self.sequences else None
        can_pad = bool(self.lengths) and len(self.sequences) == 1
        keys = {self._key(f, longest if can_pad else None) for f in feeds}
        if len(keys) > 1:  # shapes that cannot share a batch: one call each
            return [self._run([f]) [0] for f in feeds]  # fmt: skip
        batch = {}
        for name in feeds[0]:
            parts = [_pad(f[name], longest) if name in self.sequences else f[name] for f in feeds]
            batch[name] = np.concatenate(parts, axis=0)
        values = dict(zip(self.outputs, self.session.run(self.outputs, batch)))
        results, start = [], 0
        for f, step in zip(feeds, steps):
            rows = next(iter(f.values())).shape[0]
            results.append(
                {
                    name: value[start : start + rows, :step]
                    if name in self.per_step
                    else value[start : start + rows]
                    for name, value in values.items()
                }  # fmt: skip
            )
            start += rows
        return results

    def _key(self, feeds: dict[str, np.ndarray], longest) -> tuple:
        key = []
        for name in sorted(feeds):
            shape = feeds[name].shape[1:]
            if name in self.sequences and longest is not None:
                shape = (longest, *shape[1:])
            key.append((name, shape))
        return tuple(key)

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


_NUMPY = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32}


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _pad(array: np.ndarray, steps: int) -> np.ndarray:
    if array.shape[1] == steps:
        return array
    widths = [(0, 0)] * array.ndim
    widths[1] = (0, steps - array.shape[1])
    return np.pad(array, widths)
