"""`python -m app` / `imgserve`: run the server under uvicorn.

The server's libraries are imported after the arguments are parsed, so `--help` answers at once.
A configuration that cannot work (a malformed setting, a placeholder token) ends the process
with one line on stderr and exit status 2; an address it cannot listen on (a port in use), with
status 1; a required GPU that ONNX Runtime cannot use, with status 3.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from core.cli import ArgumentParser

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="imgserve", description="Serve registered image classifiers over HTTP.")
    parser.add_argument("--host", default=None, help="default 127.0.0.1 (SERVE_HOST)")
    parser.add_argument("--port", type=int, default=None, help="default 8000 (SERVE_PORT)")
    parser.add_argument(
        "--workers",
        default=None,
        help="front-end processes (SERVE_WORKERS); default auto: the CPUs this process may use. With 2 or "
        "more, one inference process per GPU (SERVE_INFERENCE_PROCESSES) runs the models for all of them",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        _fail(f"invalid --port {args.port}: a number from 0 to 65535")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))  # its plugin chatter

    from pydantic import ValidationError

    from app.settings import Settings

    try:
        settings = Settings()
        updates = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
        settings = settings.model_copy(update=updates)
        workers = _workers(args.workers if args.workers is not None else settings.workers)
        if workers > 1:
            # The supervisor only starts and watches the others, so it loads none of the server:
            # that would keep ~50 MB in it for nothing and delay their start by ~0.35 s. What only
            # they can check (the GPU, the registry), they check, and the host exits 3 if they fail.
            from app.cpus import inference_devices
            from app.host import Supervisor
            from app.settings import admin_tokens

            admin_tokens(settings)  # a malformed SERVE_ADMIN_TOKENS fails here, before any process starts
            devices = inference_devices(settings.inference_processes, settings.providers, os.environ)
            supervisor = Supervisor(
                host=settings.host,
                port=settings.port,
                workers=workers,
                log_level=args.log_level,
                devices=devices,
                hang_timeout_s=settings.hang_timeout_s,
            )
            sys.exit(supervisor.run())
        import uvicorn

        from app.host import FATAL, cannot_listen, listen, stop_quietly
        from app.main import create_app, registry_settings_problem
        from app.protocol import protocol_with

        registry_problem = registry_settings_problem(settings)
        if registry_problem:
            _fail(registry_problem)
        app = create_app(settings)
        if settings.require_gpu:
            from app.backend import GpuUnavailableError, choose_providers

            try:
                choose_providers(settings.providers, require_gpu=True)
            except GpuUnavailableError as exc:
                _fail(str(exc), status=3)
    except ValidationError as exc:
        _fail(_setting_error(Settings, exc))
    except ValueError as exc:
        _fail(str(exc))
    try:  # bound here, before the models load, so that a port in use is one line, as with workers
        sock = listen(settings.host, settings.port)
    except OSError as exc:
        _fail(cannot_listen(settings.host, settings.port, exc), status=1)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        root_path=settings.root_path,
        log_level=args.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=30,
        http=protocol_with(
            settings.limits.header_timeout_s, settings.limits.send_timeout_s, app.state.metrics.closed_by_protocol
        ),
        timeout_keep_alive=int(max(1, round(settings.limits.keep_alive_timeout_s))),
    )
    server = uvicorn.Server(config)
    stop_quietly(server)
    logging.getLogger("app").info("serving on http://%s:%d with one process", settings.host, sock.getsockname()[1])
    server.run(sockets=[sock])
    if not server.started:  # the lifespan failed: uvicorn.run's status
        sys.exit(FATAL)


def _workers(value: int | str) -> int:
    if value == "auto":
        from app.cpus import available_cpus

        return available_cpus()
    try:
        workers = int(value)
    except ValueError:
        raise ValueError(f"invalid --workers {value!r}: a number from 1 to 256, or auto") from None
    if not 1 <= workers <= 256:
        raise ValueError(f"invalid --workers {value!r}: a number from 1 to 256, or auto")
    return workers


def _setting_error(settings_class: type[BaseModel], exc: ValidationError) -> str:
    """One line for the first invalid setting: its variable, and what it should be. A setting that
    takes one of several types (a number or "auto") fails once per type; their wants are joined."""
    errors = exc.errors()
    path: list[str] = []
    model: object = settings_class
    for part in errors[0]["loc"]:  # the fields, without the type names a union adds after them
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            break
        path.append(str(part))
        model = fields[part].annotation
    wants = [error["msg"] for error in errors if [str(p) for p in error["loc"][: len(path)]] == path]
    return f"invalid setting SERVE_{'__'.join(path).upper()}: {'; or: '.join(wants)}"


def _fail(message: str, status: int = 2) -> NoReturn:
    print(f"imgserve: {message}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
