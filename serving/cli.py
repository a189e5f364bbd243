"""``keras-gates serve PATH``: serve ONNX models over the Open Inference Protocol (v2).

PATH is an ``.onnx`` file or a Triton-layout repository ``REPO/NAME/VERSION/model.onnx``. Heavy
imports (onnxruntime, uvicorn, FastAPI) happen in :func:`run`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's flags."""
    parser.add_argument("path", help="an .onnx file or a model repository REPO/NAME/VERSION/")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="rows per model call; 1 turns batching off"
    )
    parser.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=2.0,
        help="longest wait for requests still being received before a batch runs (default: 2)",
    )
    parser.add_argument(
        "--max-queue-size", type=int, default=1024, help="queued requests per model before 503"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads per model (default 1)"
    )
    parser.add_argument(
        "--max-sessions", type=int, default=1024, help="open sequences per model before 503"
    )
    parser.add_argument(
        "--session-idle-timeout-s",
        type=float,
        default=60.0,
        help="evict a sequence after this many idle seconds (default: 60)",
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=64.0, help="largest request body, in MiB (413 beyond)"
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
        "--graceful-timeout-s",
        type=float,
        default=30.0,
        help="on SIGINT/SIGTERM, how long in-flight requests may take to finish",
    )


def _check(args: argparse.Namespace) -> None:
    for flag in ("max_batch_size", "max_queue_size", "threads", "max_sessions"):
        if getattr(args, flag) < 1:
            raise ValueError(
                f"Received an invalid value for --{flag.replace('_', '-')}, expected a positive "
                f"integer, got {getattr(args, flag)}."
            )
    if not 0 < args.port < 65536:
        raise ValueError(
            f"Received an invalid value for --port, expected 1-65535, got {args.port}."
        )
    if args.max_body_mb <= 0:
        raise ValueError(f"Received an invalid value for --max-body-mb, got {args.max_body_mb}.")


def run(args: argparse.Namespace) -> int:
    """Load the models and serve until SIGINT/SIGTERM; in-flight requests finish first."""
    import logging

    import uvicorn

    from .app import create_app
    from .protocol import ServerConfig
    from .repository import ModelRepository
    from .scheduler import SchedulerConfig

    _check(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if args.no_request_log:
        logging.getLogger("keras_gates.serving.requests").setLevel(logging.WARNING)
    config = ServerConfig(
        scheduler=SchedulerConfig(
            max_batch_size=args.max_batch_size,
            max_queue_delay_ms=args.max_queue_delay_ms,
            max_queue_size=args.max_queue_size,
            max_sessions=args.max_sessions,
            session_idle_timeout_s=args.session_idle_timeout_s,
        ),
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
    )
    repository = ModelRepository.load(args.path, threads=args.threads)
    for name, versions in repository.models.items():
        logging.getLogger("keras_gates.serving").info(
            "serving model %s versions %s", name, ", ".join(versions)
        )
    app = create_app(repository, config)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="auto",
        http="auto",
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=args.graceful_timeout_s,
    )
    return 0
