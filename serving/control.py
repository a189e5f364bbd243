"""Triton's model repository extension: the index, load and unload without a restart, and a poll
mode that picks up what is copied into (or removed from) the repository folder.

``--model-control-mode explicit`` (default): every model is loaded at start and
``POST /v2/repository/models/{m}/load`` (re)loads ``m`` from the repository (new or changed
versions; versions gone from disk are unloaded), ``.../unload`` unloads it. ``poll``: the folder
is scanned every ``--repository-poll-secs`` and the API refuses explicit loads, as Triton does.
A model or version being replaced stops taking new requests at once; its in-flight requests
finish before its worker stops, and its open sequences end (their next chunk gets a 400/404
naming why).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .errors import BadRequest
from .repository import discover
from .responses import boundary, json_response
from .runtime import ModelRuntime
from .server import InferenceServer

log = logging.getLogger("keras_gates.serving")
_DRAIN_S = 60.0  # the longest an unloaded model's in-flight requests may take to finish


def add_routes(app: FastAPI, server: InferenceServer) -> None:
    """``/v2/repository/index`` and ``/v2/repository/models/{m}/load`` and ``.../unload``."""

    @app.post("/v2/repository/index", tags=["repository"])
    @boundary
    async def repository_index(request: Request) -> Response:
        body = await request.body()
        try:
            ready_only = bool(body.strip()) and orjson.loads(body).get("ready") is True
        except (orjson.JSONDecodeError, AttributeError):
            raise BadRequest('The index request body must be {} or {"ready": true}.') from None
        entries = index(server)
        if ready_only:
            entries = [e for e in entries if e.get("state") == "READY"]
        return json_response(entries)

    @app.post("/v2/repository/models/{model_name}/load", tags=["repository"])
    @boundary
    async def load_model(model_name: str) -> Response:
        await explicit(server, "load", model_name)
        return Response(status_code=200)

    @app.post("/v2/repository/models/{model_name}/unload", tags=["repository"])
    @boundary
    async def unload_model(model_name: str) -> Response:
        await explicit(server, "unload", model_name)
        return Response(status_code=200)


def _explicit(server: InferenceServer, action: str) -> None:
    if server.config.model_control_mode != "explicit":
        raise BadRequest(
            f"explicit model {action} is not allowed if polling is enabled "
            "(--model-control-mode poll); copy the version folder into the repository instead."
        )
    if server.repository.root is None:
        raise BadRequest(
            f"This server was built from in-memory models, so there is no repository to {action} "
            "from; start it with a repository path."
        )


def index(server: InferenceServer) -> list[dict]:
    """Triton's index: loaded versions READY, unloaded ones UNAVAILABLE with the reason, models
    on disk that were never loaded by name only."""
    state = "READY" if server.ready else "UNAVAILABLE"
    entries = [{"name": n, "version": v, "state": state} for n, v in server.schedulers]
    for name, version, reason in server.repository.unavailable():
        entries.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason})
    known = {e["name"] for e in entries}
    for name in sorted(set(_on_disk(server)) - known):
        entries.append({"name": name})
    return entries


def _on_disk(server: InferenceServer) -> dict:
    if server.repository.root is None:
        return {}
    try:
        return discover(server.repository.root)
    except (FileNotFoundError, ValueError):
        return {}


async def load(server: InferenceServer, name: str) -> None:
    """(Re)load ``name``: changed or new versions are loaded, versions gone from disk unloaded."""
    found = _on_disk(server).get(name)
    if not found:
        root = server.repository.root
        log.warning("failed to load model %s: no version of it under %s", name, root)
        raise BadRequest(
            f"failed to load {name!r}: no version of it in the model repository; expected "
            f"{name}/VERSION/model.onnx there."
        )
    repository = server.repository
    loaded = repository.loaded(name)
    fresh = {}
    for version, path in found.items():
        current = loaded.get(version)
        if current is None or _file_stamp(current.path) != current.file_stamp:
            try:
                fresh[version] = await asyncio.to_thread(
                    ModelRuntime, path, name, version, repository.threads
                )
            except Exception as err:  # noqa: BLE001 - a bad model file: the client's 400
                raise _load_failure(server, name, version, path, err) from None
    for version in [v for v in loaded if v not in found]:
        await _retire(server, name, version, "unloaded (its folder left the repository)")
    for version, runtime in fresh.items():
        previous = server.attach(runtime)  # new requests go to the new copy at once
        log.info("loaded model %s version %s", name, version)
        if previous is not None:
            await _drain(previous)


def _load_failure(
    server: InferenceServer, name: str, version: str, path: Path, err: Exception
) -> BadRequest:
    """The client's answer to a version that failed to load: the reason with the server's paths
    made relative to the repository (the log line keeps them whole)."""
    log.warning("failed to load model %s version %s from %s", name, version, path, exc_info=err)
    message = str(err)
    root = server.repository.root
    prefixes = {str(root.resolve()), str(root.absolute()), str(root)} if root is not None else ()
    for prefix in sorted(prefixes, key=len, reverse=True):
        message = message.replace(prefix + os.sep, "")
    return BadRequest(f"failed to load {name!r} version {version}: {message}")


async def explicit(server: InferenceServer, action: str, name: str) -> None:
    """The repository API's ``load`` or ``unload`` of ``name`` (refused in poll mode and for a
    server built from in-memory models), for either transport."""
    _explicit(server, action)
    await (load if action == "load" else unload)(server, name)


async def unload(server: InferenceServer, name: str) -> None:
    """Unload every version of ``name``; in-flight requests finish first."""
    versions = list(server.repository.loaded(name))
    if not versions:
        if server.repository.was_unloaded(name):
            return  # already unloaded: nothing to do, as in Triton
        server.repository.resolve(name)  # raises the NotFound that names the server models
    for version in versions:
        await _retire(server, name, version, "unloaded")


async def _retire(server: InferenceServer, name: str, version: str, reason: str) -> None:
    """Stop routing to a version, let its in-flight requests finish, stop its worker."""
    scheduler = server.detach((name, version), reason)
    await _drain(scheduler)
    log.info("unloaded model %s version %s", name, version)


async def _drain(scheduler) -> None:
    deadline = asyncio.get_running_loop().time() + _DRAIN_S
    while scheduler.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.to_thread(scheduler.close)


def _file_stamp(path) -> tuple[int, int] | None:
    """``(mtime, size)`` of a model file now (``None``: gone), compared with the
    ``ModelRuntime.file_stamp`` of what was loaded."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


async def poll_forever(server: InferenceServer) -> None:
    """Poll mode: bring the loaded models in line with the repository folder."""
    while True:
        await asyncio.sleep(server.config.repository_poll_s)
        await poll_once(server)


async def poll_once(server: InferenceServer) -> None:
    """One scan: load new and changed models and versions, unload those gone from disk."""
    on_disk = _on_disk(server)
    for name in sorted(set(on_disk) | set(server.repository.names())):
        try:
            if name in on_disk:
                await load(server, name)
            else:
                await unload(server, name)
        except Exception as err:  # a half-copied file: keep what runs, retry next scan
            log.warning("repository poll: model %s not (re)loaded: %s", name, err)
