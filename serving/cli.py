"""``keras-gates serve PATH``: serve ONNX models over the Open Inference Protocol (v2).

PATH is an ``.onnx`` file or a Triton-layout repository ``REPO/NAME/VERSION/model.onnx``. Heavy
imports (onnxruntime, uvicorn, FastAPI) happen in :func:`run`.

``--workers N`` runs N server processes on one listening socket (uvicorn's process supervisor):
each worker loads the repository itself and builds its app with :func:`worker_app`, which reads
the flags from the environment variable :data:`WORKER_ENV`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

WORKER_ENV = "KERAS_GATES_SERVE_ARGS"  # the flags, as JSON, for the worker processes
_MIB = 1024 * 1024
# How long a thread holding the GIL runs before handing it over (Python's default: 5 ms). The
# batcher's worker needs the GIL for a moment after each onnxruntime call while the event loop
# decodes requests; at 5 ms it waited up to that long per batch (HTTP binary at c=32: about 30 %
# more requests/s at 0.1 ms; benchmarks/profiles/NOTES.md).
GIL_SWITCH_INTERVAL_S = 0.0001
# The flag of each config field whose name differs (the others are the field's name with dashes).
_FLAG_OF_FIELD = {"repository_poll_s": "repository-poll-secs", "max_body_bytes": "max-body-mb"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's flags; the defaults are those of the config dataclasses."""
    from .server import MODEL_CONTROL_MODES, ServerConfig

    server = ServerConfig()
    scheduler = server.scheduler
    parser.add_argument("path", help="an .onnx file or a model repository REPO/NAME/VERSION/")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="TCP port; 0 picks a free one, logged as 'HTTP listening on URL' (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the protocol over gRPC on this port, on --host (off by default; "
        "Triton's convention is 8001); 0 picks a free one, logged as 'gRPC listening on ADDRESS'",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port, each with its own copy of the models (default "
        "%(default)s); not with streaming models, whose sequences live in one process. /metrics "
        "and the /stats endpoints then describe the worker that answers, not the whole server",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=scheduler.max_batch_size,
        help="rows per model call; 1 turns batching off (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=scheduler.max_queue_delay_ms,
        help="longest wait of a batch for requests still being received or, while the model is "
        "busy, still arriving; an idle model runs a lone request at once (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue-size",
        type=int,
        default=scheduler.max_queue_size,
        help="queued requests per model before 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads per model (default 1)"
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=scheduler.max_sessions,
        help="open sequences per model before 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--session-idle-timeout-s",
        type=float,
        default=scheduler.session_idle_timeout_s,
        help="evict a sequence after this many idle seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=server.max_body_bytes / _MIB,
        help="largest request body, in MiB (413 beyond; default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level; request logs (JSON lines) are written at info",
    )
    parser.add_argument(
        "--no-request-log", action="store_true", help="do not write a log line per request"
    )
    parser.add_argument(
        "--model-control-mode",
        default=server.model_control_mode,
        choices=MODEL_CONTROL_MODES,
        help="explicit (default): POST /v2/repository/models/{m}/load and /unload (re)load "
        "models; poll: rescan the repository folder every --repository-poll-secs instead (each "
        "worker of --workers does)",
    )
    parser.add_argument(
        "--repository-poll-secs",
        type=float,
        default=server.repository_poll_s,
        help="with --model-control-mode poll, seconds between scans (default %(default)s)",
    )
    parser.add_argument(
        "--restricted-api",
        action="append",
        default=[],
        metavar="GROUPS:HEADER=VALUE",
        help="answer the endpoint groups GROUPS (comma-separated, Triton's: health, metadata, "
        "inference, model-config, model-repository, statistics, shared-memory, trace, logging) "
        "only to requests carrying HEADER: VALUE, on HTTP and gRPC (Triton's "
        "--http-restricted-api/--grpc-restricted-protocol); repeatable, each group once. "
        "Without it on model-repository, anyone who reaches --host can load and unload models",
    )
    parser.add_argument(
        "--graceful-timeout-s",
        type=float,
        default=30.0,
        help="on SIGINT/SIGTERM, how long in-flight requests may take to finish",
    )


def _check_flags(args: argparse.Namespace) -> None:
    """The flags no config dataclass checks (those it does: :func:`_server_config`)."""
    for flag in ("workers", "threads"):
        if getattr(args, flag) < 1:
            raise ValueError(
                f"Received an invalid value for --{flag.replace('_', '-')}, expected a positive "
                f"integer, got {getattr(args, flag)}."
            )
    if not 0 <= args.port < 65536:
        raise ValueError(
            f"Received an invalid value for --port, expected 1-65535 (or 0: any free port), got "
            f"{args.port}."
        )
    if args.grpc_port is not None and not (
        0 <= args.grpc_port < 65536 and (args.grpc_port != args.port or args.port == 0)
    ):
        raise ValueError(
            "Received an invalid value for --grpc-port, expected 1-65535 (or 0: any free port) "
            f"and not the HTTP --port {args.port}, got {args.grpc_port}."
        )
    if args.grpc_port == 0 and args.workers > 1:
        raise ValueError(
            f"Received --grpc-port 0 with --workers {args.workers}: each worker would listen on "
            "a port of its own. Give a port number, which the workers share."
        )
    if args.max_body_mb <= 0:
        raise ValueError(f"Received an invalid value for --max-body-mb, got {args.max_body_mb}.")


def run(args: argparse.Namespace) -> int:
    """Load the models and serve until SIGINT/SIGTERM; in-flight requests finish first."""
    import logging

    import uvicorn

    from .app import create_app

    _check_flags(args)
    config = _server_config(args)  # before loading models: a bad flag fails fast
    _check_grpc_port(args)
    _configure_logging(args)
    _warn_if_open(args.host, config)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    repository = _load(args)
    if args.workers > 1:
        _refuse_streaming(repository, args.workers)
    for name in repository.names():
        logging.getLogger("keras_gates.serving").info(
            "serving model %s versions %s", name, ", ".join(repository.versions(name))
        )
    options = dict(
        host=args.host,
        port=args.port,
        loop="auto",
        http="auto",
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=args.graceful_timeout_s,
    )
    if args.workers == 1:
        app = uvicorn.Config(create_app(repository, config, _grpc_config(args)), **options)
    else:
        del repository  # each worker loads its own copy
        flags = {name: value for name, value in vars(args).items() if not callable(value)}
        os.environ[WORKER_ENV] = json.dumps(flags)  # every flag, whatever the parser holds
        app = uvicorn.Config(
            f"{__name__}:worker_app", factory=True, workers=args.workers, **options
        )
    return _serve(app)


def _serve(config) -> int:
    """Bind the HTTP port (``--port 0``: a free one), say where, and serve until a signal."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .server import listening_log

    sock = config.bind_socket()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    listening_log.info("HTTP listening on http://%s:%d", shown, port)
    if config.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return 0
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 3


def worker_app():
    """The app of one ``--workers`` process, built from the flags in :data:`WORKER_ENV`."""
    from .app import create_app

    args = argparse.Namespace(**json.loads(os.environ[WORKER_ENV]))
    _configure_logging(args)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return create_app(_load(args), _server_config(args), _grpc_config(args))


def _configure_logging(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    from .server import listening_log

    listening_log.setLevel(logging.INFO)  # where it listens is said at every --log-level
    if args.no_request_log:
        logging.getLogger("keras_gates.serving.requests").setLevel(logging.WARNING)


def _server_config(args: argparse.Namespace):
    """The config of the flags; the dataclasses' checks name the flag, not the field."""
    from .restricted import RestrictedApi
    from .scheduler import SchedulerConfig
    from .server import ServerConfig

    try:
        return ServerConfig(
            scheduler=SchedulerConfig(
                max_batch_size=args.max_batch_size,
                max_queue_delay_ms=args.max_queue_delay_ms,
                max_queue_size=args.max_queue_size,
                max_sessions=args.max_sessions,
                session_idle_timeout_s=args.session_idle_timeout_s,
            ),
            max_body_bytes=int(args.max_body_mb * _MIB),
            model_control_mode=args.model_control_mode,
            repository_poll_s=args.repository_poll_secs,
            restricted_api=RestrictedApi.parse(getattr(args, "restricted_api", None) or ()),
        )
    except ValueError as err:
        flag = re.sub(
            r"argument `(\w+)`",
            lambda m: "--" + _FLAG_OF_FIELD.get(m[1], m[1].replace("_", "-")),
            str(err),
        )
        raise ValueError(flag) from None


def _warn_if_open(host: str, config) -> None:
    """Log a warning when the server is reachable beyond this machine with load/unload open."""
    import ipaddress
    import logging

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    if not loopback and not config.restricted_api.restricts("model-repository"):
        logging.getLogger("keras_gates.serving").warning(
            "Serving on %s without --restricted-api on model-repository: anyone who reaches "
            "this address can load and unload models (POST /v2/repository/models/{m}/unload). "
            "Add e.g. --restricted-api model-repository:admin-key=SECRET.",
            host,
        )


def _check_grpc_port(args: argparse.Namespace) -> None:
    """Refuse a --grpc-port that is taken now, before loading anything (the server binds it
    later, inside the event loop, where a failure could only stop the whole server)."""
    import socket

    if not args.grpc_port:  # off, or 0: the server picks a free port when it starts
        return
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((args.host, args.grpc_port))
        except OSError as err:
            raise ValueError(
                f"Received --grpc-port {args.grpc_port}, but {args.host}:{args.grpc_port} cannot "
                f"be bound ({err.strerror}); pick a free port."
            ) from None


def _grpc_config(args: argparse.Namespace):
    if args.grpc_port is None:
        return None
    from .grpc_server import GrpcConfig

    return GrpcConfig(
        port=args.grpc_port,
        host=args.host,
        grace_s=args.graceful_timeout_s,
        reuse_port=args.workers > 1,  # every worker listens on the one port
    )


def _load(args: argparse.Namespace):
    from .repository import ModelRepository

    return ModelRepository.load(args.path, threads=args.threads)


def _refuse_streaming(repository, workers: int) -> None:
    """Streaming sessions live in one process's memory: several workers would split sequences."""
    streaming = sorted(
        f"{rt.name}/{rt.version} ({', '.join(t.name for t in rt.inputs if t.role == 'state')})"
        for rt in repository.runtimes()
        if rt.streaming
    )
    if streaming:
        raise ValueError(
            f"Received --workers {workers}, but the repository holds streaming models with state "
            f"inputs: {'; '.join(streaming)}. A sequence's state lives in one worker process and "
            "its next request may reach another, so streaming needs --workers 1; serve the "
            "streaming models from a separate single-worker server."
        )
