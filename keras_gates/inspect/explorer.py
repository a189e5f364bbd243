"""The interactive explorer behind ``keras-gates explore``: a FastAPI app over one traced batch.

:func:`build_exploration` traces every gated layer once (and scores the concepts once, when
labels are given); :func:`create_app` serves that over HTTP on loopback:

- ``GET /``: the page (``static/explorer.html`` and ``static/explorer.js``, package data), drawn
  with plotly.js from the ``plotly`` package's own files (``GET /static/plotly.min.js``: the
  browser needs no internet).
- ``GET /api/layers``: the batch's shape and, per gated layer, its signals and unit count.
- ``GET /api/heatmap?layer=&signal=&sample=``: one sample's (units, time) activations, the steps
  that count, the input's characters and the signal's value range over the batch.
- ``POST /api/match``: :func:`keras_gates.inspect.match` on a brushed span and a threshold.
- ``GET /api/concepts``: the :func:`keras_gates.inspect.probe` table (404 without labels).

Endpoints only read and check their parameters; every error goes through one boundary: a
:class:`ExplorerError` (or a ``ValueError`` from the inspection API) answers its status with
``{"error": message}``, anything else is logged and answers 500 without details.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from keras_gates.inspect.probes import signal_names

log = logging.getLogger("keras_gates.inspect.explorer")

STATIC = Path(__file__).with_name("static")
PAGE_FILES = {"explorer.html": "text/html", "explorer.js": "text/javascript"}
MATCH_K = 10  # matches listed per brush (the page's list)
CONCEPT_ROWS = 5  # units listed per concept
DECIMALS = 4  # activations are sent rounded (the page shows colours and 3-digit tooltips)


class ExplorerError(Exception):
    """A request the explorer cannot answer as asked; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Exploration:
    """What the explorer serves, computed once at start-up.

    Attributes:
        model: the Keras model (``match`` and ``probe`` take it with the traces).
        x: the input batch.
        traces: :func:`keras_gates.inspect.trace_model` of ``x``.
        text: per sample, one character per time step (``--text``), or None.
        concepts: per concept of the labels (``--labels``) its metric, counts and best units
            (``ProbeResult.to_json()`` without the full score lists), or None.
    """

    model: object
    x: np.ndarray
    traces: dict[str, dict[str, np.ndarray]]
    text: list[str] | None = None
    concepts: dict | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(batch, time) of the first gated layer."""
        return tuple(next(iter(self.traces.values()))["mask"].shape)


def split_text(text: str, shape: tuple[int, int], source: str = "--text") -> list[str]:
    """``text`` cut into one string per sample of ``steps`` characters; else a ValueError.

    The text holds the input's characters sample after sample, one per time step
    (``batch * steps`` characters, newlines included and counted).
    """
    batch, steps = shape
    if len(text) != batch * steps:
        raise ValueError(
            f"{source} has {len(text)} characters, expected batch x time steps = {batch} x "
            f"{steps} = {batch * steps}: one character per input step, the samples one after "
            "another (newlines count as characters)."
        )
    return [text[i * steps : (i + 1) * steps] for i in range(batch)]


def build_exploration(
    model,
    x: np.ndarray,
    text: str | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    mask_value: float | None = None,
) -> Exploration:
    """Trace ``model`` on ``x`` (and score ``labels``) once; check ``text`` against the steps."""
    from keras_gates.inspect import probe, trace_model

    traces = trace_model(model, x, mask_value=mask_value)
    shape = tuple(next(iter(traces.values()))["mask"].shape)
    chars = None
    if text is not None:
        for key, trace in traces.items():
            if trace["mask"].shape != shape:
                raise ValueError(
                    f"--text gives one character per step of {shape} (batch, time), but gated "
                    f"layer '{key}' runs over {trace['mask'].shape}: explore a model whose "
                    "gated layers all read the input's time axis, or drop --text."
                )
        chars = split_text(text, shape)
    concepts = None
    if labels is not None:
        table = probe(model, x, labels, traces=traces).to_json(k=CONCEPT_ROWS)["concepts"]
        concepts = {  # the page lists the best units; every score stays in `inspect --labels`
            name: {key: entry[key] for key in ("metric", "steps", "positives", "top")}
            for name, entry in table.items()
        }
    return Exploration(model, np.asarray(x), traces, chars, concepts)


def plotly_js() -> Path:
    """The ``plotly`` package's own ``plotly.min.js`` (no internet needed to draw)."""
    try:
        path = resources.files("plotly") / "package_data" / "plotly.min.js"
    except ModuleNotFoundError as err:
        raise ValueError(
            "The explorer draws with plotly.js from the `plotly` package, which is not "
            "installed: pip install 'keras-gates[inspect]'."
        ) from err
    if not path.is_file():
        raise ValueError(f"The `plotly` package has no {path}: reinstall it (pip install plotly).")
    return Path(str(path))


# ------------------------------------------------------------------------------------ queries
def layer_list(data: Exploration) -> dict:
    """The batch's shape, each gated layer with its signals and units, and what else exists."""
    batch, steps = data.shape
    layers = [
        {
            "key": key,
            "signals": signal_names(trace),
            "units": int(trace["hidden"].shape[-1]),
            "steps": int(trace["mask"].shape[1]),
        }
        for key, trace in data.traces.items()
    ]
    return {
        "batch": batch,
        "steps": steps,
        "layers": layers,
        "text": data.text is not None,
        "concepts": data.concepts is not None,
    }


def _trace(data: Exploration, layer: str, signal: str) -> dict:
    if layer not in data.traces:
        raise ExplorerError(f"Received layer={layer!r}: expected one of {list(data.traces)}.")
    trace = data.traces[layer]
    if signal not in signal_names(trace):
        raise ExplorerError(
            f"Received signal={signal!r} for layer {layer!r}: expected one of "
            f"{signal_names(trace)}."
        )
    return trace


def _sample(data: Exploration, sample: int) -> int:
    batch = data.shape[0]
    if not 0 <= sample < batch:
        raise ExplorerError(f"Received sample={sample}: expected an index in [0, {batch}).")
    return sample


def heatmap(data: Exploration, layer: str, signal: str, sample: int) -> dict:
    """One sample's activations of ``signal`` as (units, time), with its mask and characters."""
    trace = _trace(data, layer, signal)
    sample = _sample(data, sample)
    values = np.asarray(trace[signal], dtype=np.float64)
    counted = np.asarray(trace["mask"], dtype=bool)
    seen = values[counted] if counted.any() else values.reshape(-1, values.shape[-1])
    return {
        "layer": layer,
        "signal": signal,
        "sample": sample,
        "z": _rows(values[sample].T, counted[sample]),
        "mask": counted[sample].tolist(),
        "text": None if data.text is None else list(data.text[sample]),
        "range": [float(seen.min()), float(seen.max())],
    }


def _rows(z: np.ndarray, counted: np.ndarray) -> list[list[float | None]]:
    """(units, time) values as lists, rounded, with None at the steps that do not count."""
    rounded = np.round(z, DECIMALS).tolist()
    gaps = np.flatnonzero(~counted)
    for row in rounded:
        for step in gaps:
            row[step] = None
    return rounded


def run_match(data: Exploration, request: Mapping) -> dict:
    """:func:`keras_gates.inspect.match` on ``request`` (layer, signal, sample, start, stop,
    threshold, k); each match comes with its characters when the input has text."""
    from keras_gates.inspect import match

    layer, signal = str(request.get("layer")), str(request.get("signal", "hidden"))
    _trace(data, layer, signal)
    wanted = {"sample": int, "start": int, "stop": int, "threshold": float, "k": int}
    given = {"threshold": 0.5, "k": MATCH_K, **request}
    wrong = [
        name
        for name, kind in wanted.items()
        if isinstance(given.get(name), bool)
        or not isinstance(given.get(name), (int,) if kind is int else (int, float))
    ]
    if wrong:
        raise ExplorerError(
            f"Received a match request {dict(request)!r} with {', '.join(wrong)} missing or not "
            "a number: expected integers sample, start, stop (and k) and a number threshold."
        )
    span = (given["sample"], given["start"], given["stop"])
    threshold, k = float(given["threshold"]), given["k"]
    found = match(
        data.model, data.x, span=span, threshold=threshold, layer=layer, signal=signal, k=k,
        traces=data.traces,
    )  # fmt: skip
    matches = [
        {
            "sample": s,
            "start": a,
            "stop": b,
            "score": score,
            "text": None if data.text is None else data.text[s][a:b],
        }
        for s, a, b, score in found.matches
    ]
    return {
        "span": list(found.span),
        "threshold": threshold,
        "units": found.units,
        "matches": matches,
    }


def concepts(data: Exploration) -> dict:
    """The probe table, or a 404 naming the flag that gives it."""
    if data.concepts is None:
        raise ExplorerError(
            "No concepts: start the explorer with --labels LABELS.npz (one (batch, time) array "
            "per concept) to score units against them.",
            status=404,
        )
    return {"concepts": data.concepts}


# ------------------------------------------------------------------------------------ the app
def create_app(data: Exploration):
    """The FastAPI app serving ``data`` (see the module docstring)."""
    script = plotly_js()
    app = FastAPI(title="keras-gates explorer", docs_url=None, redoc_url=None, openapi_url=None)

    async def error_boundary(request: Request, err: Exception):
        return JSONResponse(*_error(err, request.url.path))

    for known in (ExplorerError, ValueError, RequestValidationError, Exception):
        app.add_exception_handler(known, error_boundary)

    def page(name: str) -> Response:
        return Response((STATIC / name).read_bytes(), media_type=PAGE_FILES[name])

    @app.get("/")
    def index():
        return page("explorer.html")

    @app.get("/static/explorer.js")
    def explorer_js():
        return page("explorer.js")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/static/plotly.min.js")
    def plotly():
        return FileResponse(script, media_type="text/javascript")

    @app.get("/api/layers")
    def layers():
        return layer_list(data)

    @app.get("/api/heatmap")
    def heatmap_endpoint(layer: str, signal: str = "hidden", sample: int = 0):
        return heatmap(data, layer, signal, sample)

    @app.post("/api/match")
    async def match_endpoint(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise ExplorerError("The match request body is not JSON: send a JSON object.") from None
        if not isinstance(body, dict):
            raise ExplorerError(f"Received a {type(body).__name__} body: expected a JSON object.")
        return run_match(data, body)

    @app.get("/api/concepts")
    def concepts_endpoint():
        return concepts(data)

    return app


def _error(err: BaseException, where: str) -> tuple[dict, int]:
    """The one error mapping: ``({"error": message}, status)``."""
    if isinstance(err, ExplorerError):
        return {"error": str(err)}, err.status
    if isinstance(err, ValueError):  # the inspection API names the argument and the rule
        return {"error": str(err)}, 400
    if isinstance(err, RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        return {"error": f"Received invalid parameters: {problems}."}, 400
    log.error("explorer: unexpected error serving %s", where, exc_info=err)
    return {"error": "Internal error; the explorer's log has the details."}, 500


def serve(app, port: int, announce: Sequence[str] = ()) -> int:
    """Serve ``app`` on 127.0.0.1:``port`` (0: any free port) until SIGINT/SIGTERM.

    The socket is bound first and ``HTTP listening on URL`` printed with the port it took."""
    import socket

    try:
        sock = socket.create_server(("127.0.0.1", port))
    except OSError as err:
        raise ValueError(
            f"Received --port {port}, but 127.0.0.1:{port} cannot be listened on ({err}): pick "
            "another port, or 0 for any free one."
        ) from None
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for line in announce:
        print(line, flush=True)
    print(f"HTTP listening on {url} (open it in a browser; Ctrl+C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return 0
