"""`create_app`: the FastAPI application and the lifespan that owns its resources."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from app import console
from app.api import admin, health, v1, v2
from app.backend import OrtBackend, choose_providers, release_freed_memory
from app.batcher import RunsInProgress
from app.errors import install_handlers
from app.fastpath import FastPathMiddleware, eligible_routes
from app.heartbeat import beating
from app.ipc import Devices, RemoteServing
from app.limits import AdmissionMiddleware, BodyLimitMiddleware, DecodeBudget, InflightCounter
from app.metrics import HttpMetricsMiddleware, Metrics, StateCollector
from app.models import BackendFactory, ModelManager
from app.serving import AsyncRegistry, LocalServing, Serving, lost_run
from app.settings import Settings, admin_tokens, get_settings
from registry import Registry, RegistryError, VersionInfo
from registry.cache import CachedStore

log = logging.getLogger("app")

STOP_WATCH_S = 0.25  # how often a stopping process looks for a lost model run

# Inference routes called straight from the middleware when they come without a query string.
FAST_PATHS = {
    "/v1/models/{name}/predict",
    "/predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
}


def ort_backend_factory(settings: Settings) -> BackendFactory:
    providers = choose_providers(settings.providers, require_gpu=settings.require_gpu)

    def create(data: bytes, info: VersionInfo) -> OrtBackend:
        return OrtBackend(
            data,
            info.contract,
            providers=providers,
            require_gpu=settings.require_gpu,
            intra_op_threads=settings.intra_op_threads,
            pad_to=settings.batching.max_batch_size,
            pad=settings.batching.pad,
        )

    return create


def _complete_openapi(app: FastAPI) -> None:
    """What FastAPI's document leaves out or gets wrong for this API:
    - the v2 infer body is parsed by hand (it may carry binary data): publish its JSON schema anyway;
    - validation errors are answered 400 (`app.errors`), not FastAPI's 422: document them so."""
    from app.oip import InferenceRequest

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            spec = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(spec.pop("$defs", {}))
            components["InferenceRequest"] = spec
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None and "400" not in responses:
                        responses["400"] = {
                            "description": "invalid request: a parameter or the body breaks the schema",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                        }
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@dataclass(frozen=True)
class FrontEnd:
    """How a front-end process reaches its host's inference process (`python -m app --workers N`)."""

    run_dir: Path
    slot: int
    metrics_dir: Path
    devices: int = 1  # the host's inference processes
    stopping: Callable[[], bool] = lambda: False  # asked to stop (SIGTERM): while it starts, and while it drains
    heartbeat_fd: int | None = None  # the pipe its event loop beats down to the supervisor (app.heartbeat)


def registry_settings_problem(settings: Settings) -> str | None:
    """What is wrong with the registry's settings (a malformed database URL, an unknown kind of
    artifact store, a bucket URL without a bucket), found without connecting to anything; None if
    nothing. Checked before serving: the server's start-up would otherwise fail with a traceback."""
    try:
        Registry.from_settings(settings.registry, check=False).close()
    except RegistryError as exc:
        return exc.message
    return None


def create_app(
    settings: Settings | None = None,
    *,
    backend_factory: BackendFactory | None = None,
    front_end: FrontEnd | None = None,
) -> FastAPI:
    """The server. Without ``front_end``, it loads and runs the models itself; with it, it is one of
    several front-end processes and the host's inference process runs them (`app.ipc`)."""
    settings = settings or get_settings()
    tokens = admin_tokens(settings)  # a malformed SERVE_ADMIN_TOKENS fails here, before serving
    metrics = Metrics()
    inflight = InflightCounter()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = Registry.from_settings(settings.registry)
        decode_executor = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        loader_executor = ThreadPoolExecutor(2, thread_name_prefix="loader")

        def trim_after_burst() -> None:  # nothing is being decoded: give the decoders' heap back
            decode_executor.submit(release_freed_memory)

        app.state.settings = settings
        app.state.admin_tokens = tokens
        app.state.registry = AsyncRegistry(registry, loader_executor)
        app.state.decode_executor = decode_executor
        app.state.decode_budget = DecodeBudget(settings.limits.decode_capacity_pixels, on_idle=trim_after_burst)
        async with contextlib.AsyncExitStack() as stack:
            if front_end is not None:  # first in, last out: it beats to the supervisor until it is done
                stack.enter_context(beating(front_end.heartbeat_fd))
            stack.callback(registry.close)
            stack.callback(loader_executor.shutdown, wait=True)
            stack.callback(decode_executor.shutdown, wait=True)
            if front_end is None:
                local = await stack.enter_async_context(
                    local_serving(
                        settings,
                        registry,
                        metrics,
                        can_grow=inflight.others_than,
                        backend_factory=backend_factory,
                        loader_executor=loader_executor,
                    )
                )
                collector = StateCollector(
                    lambda: local.manager.view().loaded,
                    lambda: (inflight.value, inflight.receiving),
                    cache_counts=local.cache_counts,
                )
                metrics.add_collector(collector)
                stack.callback(metrics.registry.unregister, collector)
                await local.manager.start()
                serving: Serving = local
            else:
                serving = await stack.enter_async_context(_remote_serving(settings, front_end, inflight, metrics))
            app.state.serving = serving
            # Everything built so far lives as long as the process: move it out of the collector's
            # view so full collections under load do not walk it (they showed up as p99 spikes).
            gc.collect()
            gc.freeze()
            yield

    app = FastAPI(
        title="imgserve",
        version="0.1.0",
        summary="Batched image classification from a model registry",
        lifespan=lifespan,
        # FastAPI asks the global OpenTelemetry providers on every request whether to trace it
        # (docs/decisions/0002): only when asked to.
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.metrics = metrics  # here, not in the lifespan: the HTTP protocol counts into it too
    app.include_router(v1.router)
    app.include_router(admin.router)
    app.include_router(v2.router)
    app.include_router(health.router)
    app.include_router(console.router)
    install_handlers(app)
    _complete_openapi(app)
    # Innermost first: the fast path runs inside the metrics, admission and body-limit layers.
    if settings.fast_path:
        app.add_middleware(FastPathMiddleware, routes=eligible_routes([v1.router, v2.router], FAST_PATHS))
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.limits.max_request_bytes,
        timeout_s=settings.limits.body_timeout_s,
        min_rate=settings.limits.min_body_rate,
    )
    app.add_middleware(
        AdmissionMiddleware,
        max_inflight=settings.limits.max_inflight_requests,
        counter=inflight,
        on_shed=metrics.shed.inc,
    )
    routes = [
        route
        for router in (v1.router, admin.router, v2.router, health.router, console.router)
        for route in router.routes
    ]
    model_routes = {path for path in FAST_PATHS if "{name}" in path}  # the inference routes that name a model
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics, routes=routes, model_routes=model_routes)
    return app


@asynccontextmanager
async def local_serving(
    settings: Settings,
    registry: Registry,
    metrics: Metrics,
    *,
    can_grow: Callable[[int], bool],
    backend_factory: BackendFactory | None,
    loader_executor: ThreadPoolExecutor,
    before_exit: Callable[[], None] = lambda: None,
) -> AsyncIterator[LocalServing]:
    """The model manager of this process with its inference threads; the caller starts it
    (``serving.manager.start()``), leaving the context stops it and drains its batchers.

    The drain waits for the model runs under way, but not for one that no client waits for any
    more (`lost_run`): then the process exits at once, with status 1, after ``before_exit``."""
    cache = None
    if settings.artifact_cache_dir is not None:
        cache = registry.store = CachedStore(
            registry.store, settings.artifact_cache_dir, max_bytes=settings.artifact_cache_max_bytes
        )
    inference_executor = ThreadPoolExecutor(settings.batching.inference_threads, thread_name_prefix="inference")
    manager = ModelManager(
        settings=settings,
        registry=registry,
        metrics=metrics,
        backend_factory=backend_factory or ort_backend_factory(settings),
        inference_executor=inference_executor,
        loader_executor=loader_executor,
        can_grow=can_grow,
    )
    try:
        yield LocalServing(
            manager,
            metrics,
            timeout_s=settings.inference_timeout_s,
            cache_counts=(lambda: cache_counts(cache)) if cache is not None else None,
        )
    finally:
        with _exit_on_a_lost_run(manager.loader.runs, settings.inference_timeout_s, before_exit):
            await manager.stop()
            inference_executor.shutdown(wait=True)


@contextlib.contextmanager
def _exit_on_a_lost_run(runs: RunsInProgress, limit_s: float, before_exit: Callable[[], None]) -> Iterator[None]:
    """While the block stops the models: exit the process once a run under way is lost (`lost_run`).

    No model run can be cancelled, and a normal exit joins the thread that runs it, so without this
    a run that never ends (a hung GPU call) would keep the process from ever exiting. A thread
    watches, since the block may hold the event loop."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(STOP_WATCH_S):
            lost = lost_run(runs, limit_s)
            if lost is not None:
                log.error("stopping, but %s: exiting without waiting for it", lost)
                before_exit()
                os._exit(1)

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def cache_counts(cache: CachedStore) -> dict[str, int]:
    counts = cache.counts
    return {"hit": counts.hits, "miss": counts.misses, "corrupt": counts.corrupt}


@asynccontextmanager
async def _remote_serving(
    settings: Settings, front_end: FrontEnd, inflight: InflightCounter, metrics: Metrics
) -> AsyncIterator[RemoteServing | Devices]:
    """A front end's links to its host's inference processes; its /metrics shows the whole host."""
    parts = [
        RemoteServing(
            front_end.run_dir,
            slot=front_end.slot,
            counter=inflight,
            timeout_s=settings.inference_timeout_s,
            alias=settings.alias,
            max_message_rows=settings.batching.max_batch_size,
            device=device,
            devices=front_end.devices,
            stopping=front_end.stopping,
        )
        for device in range(front_end.devices)
    ]
    serving = parts[0] if len(parts) == 1 else Devices(parts, lead=front_end.slot == 0)

    def host_inflight() -> tuple[int, int]:
        workers = serving.view().workers or {}
        return int(workers.get("inflight", inflight.value)), int(workers.get("receiving", inflight.receiving))

    metrics.use_multiprocess(
        front_end.metrics_dir,
        StateCollector(lambda: serving.view().loaded, host_inflight, cache_counts=lambda: serving.view().cache_counts),
    )
    await serving.start()
    # Take connections only once the inference process has answered: until then every request
    # would get 503, while the front ends already connected serve them. A stop ends the wait: when
    # the inference process cannot start, the supervisor stops the host, and that must not take
    # the whole time-out.
    connected = await serving.wait_connected(settings.inference_timeout_s, stopping=front_end.stopping)
    if not connected and not front_end.stopping():
        log.warning(
            "front end %d: no answer from the inference process in %g s; serving 503 until it answers",
            front_end.slot,
            settings.inference_timeout_s,
        )
    try:
        yield serving
    finally:
        await serving.close()
