"""Which versions are loaded, and how they change without failing a request.

`ModelManager` follows the registry and puts together the parts in `app.versions`: loading and
warm-up (`VersionLoader`), the versions pinned by requests (`PinnedVersions`), the alias cache
(`AliasCache`) and the leases on each `LoadedVersion`; `view()` reports it all as plain data.

Each served model follows an alias (default `production`). A poll (and an admin
promotion) resolves the alias; a new target is loaded and warmed up first, then
swapped in with one assignment on the event loop. Requests hold a *lease* on the
version they started with, so the old version stays open until the last of them
has its answer; only then is its batcher drained and its session closed. A version
that fails to load is never swapped in: the old one keeps serving.

A server that has nothing loaded yet (a fresh replica) and finds the alias's target
unloadable falls back to the newest earlier version in that alias's history that
loads: what the replicas already running kept serving. It is ready then, and
`/readyz` and `/v1/models/{name}` say which version failed and what is served
instead; the target is retried every `load_retry_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from app.backend import GpuUnavailableError, release_freed_memory
from app.errors import NotFoundError, UnavailableError
from app.metrics import Metrics
from app.serving import HostView, ModelView, ServedVersion
from app.settings import Settings
from app.versions import AliasCache, BackendFactory, LoadedVersion, PinnedVersions, VersionLoader
from core.contract import contract_changes
from registry import AliasMove, Registry, VersionInfo
from registry.errors import RegistryError
from registry.service import alias_stack

log = logging.getLogger("app.models")

__all__ = ["BackendFactory", "LoadedVersion", "ModelManager", "ModelState"]
MAX_FALLBACK_ATTEMPTS = 3


@dataclass(eq=False)
class ModelState:
    name: str
    current: LoadedVersion | None = None
    aliases: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    failed: dict[int, tuple[float, str]] = field(default_factory=dict)  # version -> (when, why), monotonic

    def recent_failure(self, version: int, retry_s: float) -> str | None:
        """Why ``version`` failed to load, if it did less than ``retry_s`` ago."""
        failure = self.failed.get(version)
        if failure is None or time.monotonic() - failure[0] >= retry_s:
            return None
        return failure[1]

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelManager:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        metrics: Metrics,
        backend_factory: BackendFactory,
        inference_executor: Executor,
        loader_executor: Executor,
        can_grow: Callable[[int], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self._loader_executor = loader_executor
        self.loader = VersionLoader(
            settings=settings,
            registry=registry,
            metrics=metrics,
            backend_factory=backend_factory,
            inference_executor=inference_executor,
            call=self.call,
            can_grow=can_grow,
        )
        self.aliases = AliasCache(self._resolve_in_registry, ttl_s=settings.poll_interval_s)
        self.pinned = PinnedVersions(self.loader.load, capacity=settings.pinned_cache_size, retire=self._retire_later)
        self.states: dict[str, ModelState] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._poll_task: asyncio.Task[None] | None = None
        self.last_poll_error: str | None = None
        self.started = False
        self.synced = False  # the registry has answered at least once: `states` names what is served

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.sync()
        except GpuUnavailableError:
            raise
        except Exception as exc:
            self._poll_failed(exc)
        self.started = True
        self._poll_task = asyncio.create_task(self._poll_loop(), name="registry-poll")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        versions = [s.current for s in self.states.values() if s.current is not None]
        versions.extend(self.pinned.take_all())
        await asyncio.gather(*(v.retire() for v in versions), *self._retiring, return_exceptions=True)

    @property
    def ready(self) -> bool:
        return self.started and bool(self.states) and all(s.current is not None for s in self.states.values())

    # -- following the registry --------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.sync()
            except Exception as exc:
                self._poll_failed(exc)

    def _poll_failed(self, exc: Exception) -> None:
        message = exc.message if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {exc}"
        if message != self.last_poll_error:
            log.warning("registry poll failed (serving what is loaded, will retry): %s", message)
        self.last_poll_error = message
        self.metrics.poll_errors.inc()

    async def sync(self) -> None:
        """Resolve every served model's alias and load what changed."""
        models = await self.call(self.registry.list_models)
        by_name = {m.name: m for m in models}
        alias = self.settings.alias
        wanted = self.settings.models or sorted(n for n, m in by_name.items() if alias in m.aliases)
        for name in wanted:
            state = self.states.setdefault(name, ModelState(name))
            model = by_name.get(name)
            if model is None:
                state.last_error = f"model {name!r} is not registered"
                continue
            state.aliases = dict(model.aliases)
            target = model.aliases.get(alias)
            if target is None:
                if state.current is None:
                    state.last_error = f"model {name!r} has no {alias!r} alias"
                continue  # an alias removed under a serving model: keep serving, do not go dark
            await self._ensure(state, target)
        self.last_poll_error = None
        self.synced = True

    async def _ensure(self, state: ModelState, target: int) -> None:
        async with state.lock:
            if state.current is not None and state.current.version == target:
                state.last_error = None  # e.g. the alias rolled back to what is served after a failed load
                state.failed.pop(target, None)
                return
            if state.recent_failure(target, self.settings.load_retry_s) is not None:
                return
            try:
                new = await self.loader.load(state.name, target)
            except GpuUnavailableError:
                raise
            except Exception as exc:
                self._load_failed(state, target, exc)
                if state.current is None:
                    await self._fall_back(state, target)
                log.error("%s; serving %s", state.last_error, _describe(state.current))
                return
            old, state.current = state.current, new
            state.last_error = None
            state.failed.pop(target, None)
            if old is not None:
                self.metrics.swaps.labels(state.name).inc()
                changes = contract_changes(old.info.contract, new.info.contract)
                if changes:
                    log.warning(
                        "%s: v%d changes the contract of v%d: %s",
                        state.name,
                        new.version,
                        old.version,
                        "; ".join(changes),
                    )
                log.info("%s: swapped v%d -> v%d", state.name, old.version, new.version)
                self._retire_later(old)
            else:
                log.info("%s: serving v%d on %s", state.name, new.version, new.provider)

    def _load_failed(self, state: ModelState, version: int, exc: Exception) -> None:
        message = exc.message if isinstance(exc, RegistryError) else str(exc)
        state.last_error = f"{state.name} v{version} failed to load: {message}"
        state.failed[version] = (time.monotonic(), state.last_error)
        self.metrics.load_failures.labels(state.name, str(version)).inc()

    async def _fall_back(self, state: ModelState, target: int) -> None:
        """With nothing loaded and the target unloadable: load the newest earlier version of the alias's
        history that loads (running replicas kept serving it), and say so in ``last_error``."""
        alias = self.settings.alias
        try:
            moves: list[AliasMove] = await self.call(self.registry.history, state.name, alias)
        except RegistryError as exc:
            log.warning("%s: cannot read the history of %r to fall back: %s", state.name, alias, exc.message)
            return
        failure = state.last_error
        for version in _earlier_targets(moves, target)[:MAX_FALLBACK_ATTEMPTS]:
            try:
                state.current = await self.loader.load(state.name, version)
            except GpuUnavailableError:
                raise
            except Exception as exc:
                message = exc.message if isinstance(exc, RegistryError) else str(exc)
                log.error("%s: fallback to v%d failed too: %s", state.name, version, message)
                continue
            state.last_error = (
                f"{failure}; serving v{version} instead, the newest earlier version of {alias!r} that loads"
            )
            log.warning("%s: fell back to v%d on %s", state.name, version, state.current.provider)
            return

    def _retire_later(self, version: LoadedVersion) -> None:
        task = asyncio.create_task(self._retire(version))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, version: LoadedVersion) -> None:
        await version.retire()
        await self.call(release_freed_memory)  # off the loop: trimming a large heap takes a while

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking registry (or loading) call in the loader pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self._loader_executor, functools.partial(fn, *args, **kwargs)
        )

    # -- serving -----------------------------------------------------------------------------

    @asynccontextmanager
    async def lease(
        self, name: str, *, version: int | None = None, alias: str | None = None
    ) -> AsyncIterator[LoadedVersion]:
        """The version to serve a request with, kept open until the request is done."""
        loaded = await self.acquire(name, version=version, alias=alias)
        try:
            yield loaded
        finally:
            loaded.release()

    async def acquire(self, name: str, *, version: int | None = None, alias: str | None = None) -> LoadedVersion:
        """`lease` for callers that release the version themselves (`LoadedVersion.release`)."""
        loaded = self.lease_now(name, version, alias)
        if loaded is not None:
            return loaded
        for _ in range(3):
            loaded = await self._resolve(name, version, alias)
            if loaded.acquire():
                return loaded
        raise UnavailableError(  # pragma: no cover - needs three evictions in a row
            f"{name} is changing versions, retry", headers={"Retry-After": "1"}
        )

    def lease_now(self, name: str, version: int | None, alias: str | None) -> LoadedVersion | None:
        """`acquire` without waiting, for the common case: the version serving the alias, acquired
        (the caller releases it). None when the request needs `acquire`: another alias or version,
        or nothing loaded yet."""
        if alias is not None and alias != self.settings.alias:
            return None
        state = self.states.get(name)
        loaded = state.current if state is not None else None
        if loaded is None or (version is not None and version != loaded.version) or not loaded.acquire():
            return None
        return loaded

    async def _resolve(self, name: str, version: int | None, alias: str | None) -> LoadedVersion:
        if version is None and (alias is None or alias == self.settings.alias):
            state = self.states.get(name)
            if state is None:
                self.view().served(name)  # raises: 503 while the registry has not answered, else 404
                raise NotFoundError(f"model {name!r} is not served")  # pragma: no cover - served() raised
            if state.current is None:
                raise UnavailableError(
                    f"model {name!r} is not loaded yet: {state.last_error or 'loading'}", headers={"Retry-After": "2"}
                )
            return state.current
        if alias is not None:
            version = await self.aliases.version(name, alias)
        assert version is not None
        served = self.states.get(name)
        if served is not None and served.current is not None and served.current.version == version:
            return served.current
        return await self.pinned.get(name, version)

    async def _resolve_in_registry(self, name: str, alias: str) -> int:
        info: VersionInfo = await self.call(self.registry.resolve, name, alias)
        return info.version

    def forget_alias_cache(self, name: str) -> None:
        self.aliases.forget(name)

    # -- reporting ---------------------------------------------------------------------------

    def loaded_versions(self) -> list[tuple[str, LoadedVersion]]:
        entries = [("current", s.current) for s in self.states.values() if s.current is not None]
        entries.extend(("pinned", v) for v in self.pinned.values())
        return entries

    def view(self) -> HostView:
        """What is served, loaded and failing, as plain data (`app.serving`)."""
        wall = time.time() - time.monotonic()  # failures are timed on the monotonic clock
        loaded = self.loaded_versions()
        return HostView(
            alias=self.settings.alias,
            started=self.started,
            synced=self.synced,
            last_poll_error=self.last_poll_error,
            models={
                name: ModelView(
                    name=name,
                    current=state.current.version if state.current is not None else None,
                    aliases=dict(state.aliases),
                    last_error=state.last_error,
                    failed={version: (wall + when, why) for version, (when, why) in state.failed.items()},
                )
                for name, state in self.states.items()
            },
            loaded=[
                ServedVersion(
                    name=v.name,
                    version=v.version,
                    role=role,
                    provider=v.provider,
                    providers=v.backend.providers,
                    queued_rows=v.batcher.queued_rows,
                    loaded_at=v.loaded_at,
                )
                for role, v in loaded
            ],
            infos={(v.name, v.version): v.info for _, v in loaded},
        )


def _describe(loaded: LoadedVersion | None) -> str:
    return "nothing" if loaded is None else f"v{loaded.version}"


def _earlier_targets(moves: list[AliasMove], target: int) -> list[int]:
    """The versions an alias pointed to before, newest first, ``target`` left out, as
    `Registry.rollback` replays the history."""
    seen: list[int] = []
    for version in reversed(alias_stack(moves)):
        if version != target and version not in seen:
            seen.append(version)
    return seen
