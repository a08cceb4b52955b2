"""`python -m app` / `imgserve`: run the server under uvicorn."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from app.main import create_app
from app.settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="imgserve", description="Serve registered image classifiers over HTTP.")
    parser.add_argument("--host", default=settings.host, help=f"default {settings.host} (SERVE_HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help=f"default {settings.port} (SERVE_PORT)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
