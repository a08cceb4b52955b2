"""What the routes see of the serving machinery, whether it runs in this process or in another.

With one worker the model manager and its batchers live in the server's own process
(`LocalServing`). With several, each front-end process talks to the host's inference process
(`app.ipc.RemoteServing`). The routes use only what is here:

- `Serving.view()`: a `HostView`, what is served, loaded and failing, as plain data;
- `Serving.infer(...)`: run images through the version a request addresses. The caller's
  ``prepare`` turns the request into a uint8 array for a given version; it may be called again
  when the version that serves the request needs another input (a swap in between);
- `Serving.moved(name)`: an admin call moved an alias; follow it now;
- `AsyncRegistry`: the registry calls the admin and metadata routes make, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from app.batcher import BatcherClosedError, InferenceError, QueueFullError
from app.disconnect import CancelOnHangup
from app.errors import ApiError, NotFoundError, UnavailableError
from app.metrics import Metrics
from registry import AliasMove, Registry, VersionInfo

if TYPE_CHECKING:
    from app.batcher import RunsInProgress
    from app.models import LoadedVersion, ModelManager

Prepare = Callable[[VersionInfo], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class ServedVersion:
    """A loaded version, as reported."""

    name: str
    version: int
    role: str  # "current" (what the alias points to) or "pinned" (loaded for ?version= / ?alias=)
    provider: str
    providers: list[str]
    queued_rows: int
    loaded_at: float


@dataclass(frozen=True)
class ModelView:
    name: str
    current: int | None  # the version serving the alias, None while nothing is loaded
    aliases: dict[str, int]
    last_error: str | None
    failed: dict[int, tuple[float, str]]  # version -> (wall-clock time it failed, why)


@dataclass(frozen=True)
class HostView:
    """Everything the read-only routes report. ``infos`` holds the info of every loaded version."""

    alias: str
    started: bool
    synced: bool  # the registry has answered at least once: ``models`` names what is served
    last_poll_error: str | None
    models: dict[str, ModelView]
    loaded: list[ServedVersion]
    infos: dict[tuple[str, int], VersionInfo] = field(repr=False)
    inference_error: str | None = None  # set when the inference process cannot be reached
    workers: dict[str, Any] | None = None  # processes of the host, with several workers
    cache_counts: dict[str, int] | None = None  # the artifact cache's reads: hit, miss, corrupt

    @property
    def ready(self) -> bool:
        return (
            self.inference_error is None
            and self.started
            and bool(self.models)
            and all(m.current is not None for m in self.models.values())
        )

    def served(self, name: str) -> ModelView:
        """A served model: 404 if it is not served, 503 while what is served is not known yet."""
        self._check_reachable()
        model = self.models.get(name)
        if model is not None:
            return model
        if not self.synced:
            raise self._not_known_yet(f"model {name!r} is")
        raise NotFoundError(f"model {name!r} is not served (served: {', '.join(sorted(self.models)) or 'none'})")

    def served_names(self) -> list[str]:
        """The served models' names; 503 while none is known (an empty list would say there is none)."""
        self._check_reachable()
        if not self.synced and not self.models:
            raise self._not_known_yet("the served models are")
        return sorted(self.models)

    def _check_reachable(self) -> None:
        if self.inference_error is not None:
            raise UnavailableError(self.inference_error, headers={"Retry-After": "1"})

    def _not_known_yet(self, subject: str) -> UnavailableError:
        reason = self.last_poll_error or "starting"
        return UnavailableError(
            f"{subject} not known yet: the registry has not answered ({reason})", headers={"Retry-After": "2"}
        )

    def current_info(self, name: str) -> VersionInfo | None:
        model = self.models.get(name)
        if model is None or model.current is None:
            return None
        return self.infos.get((name, model.current))

    def loaded_info(self, name: str, version: int) -> VersionInfo | None:
        return self.infos.get((name, version))

    def versions_of(self, name: str) -> list[ServedVersion]:
        return [v for v in self.loaded if v.name == name]

    def default_model(self, configured: str | None) -> str:
        if configured:
            return configured
        if self.inference_error is not None:
            raise UnavailableError(self.inference_error, headers={"Retry-After": "1"})
        if not self.models:
            raise UnavailableError("no model is served yet", headers={"Retry-After": "2"})
        return sorted(self.models)[0]

    def recent_failure(self, name: str, version: int, retry_s: float) -> str | None:
        model = self.models.get(name)
        failure = model.failed.get(version) if model is not None else None
        if failure is None or time.time() - failure[0] >= retry_s:
            return None
        return failure[1]


class Serving(Protocol):
    def view(self) -> HostView: ...

    async def infer(
        self,
        name: str,
        prepare: Prepare,
        *,
        version: int | None = None,
        alias: str | None = None,
        scope: MutableMapping[str, Any] | None = None,
    ) -> tuple[VersionInfo, np.ndarray]:
        """Probabilities [N, K] for the images ``prepare`` makes, and the version that computed them.
        With the request's ``scope``, a client hanging up while its rows wait has them dropped."""
        ...

    async def moved(self, name: str) -> HostView:
        """Follow an alias move made by this server's admin API now, not at the next poll."""
        ...

    def hung(self) -> str | None:
        """Why this process can no longer serve until it is started again (for /healthz); None if
        nothing says so. With several workers, always None: the supervisor watches the inference
        process and restarts it, and the front end itself is alive when it answers."""
        ...


class AsyncRegistry:
    """The registry's calls, run in a thread pool: they block on the database and the store."""

    def __init__(self, registry: Registry, executor: Executor) -> None:
        self._registry = registry
        self._executor = executor

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def get_version(self, name: str, version: int) -> VersionInfo:
        info: VersionInfo = await self._call(self._registry.get_version, name, version)
        return info

    async def list_versions(self, name: str) -> list[VersionInfo]:
        versions: list[VersionInfo] = await self._call(self._registry.list_versions, name)
        return versions

    async def read_extra(self, name: str, version: int, extra: str) -> bytes:
        content: bytes = await self._call(self._registry.read_extra, name, version, extra)
        return content

    async def history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        moves: list[AliasMove] = await self._call(self._registry.history, name, alias)
        return moves

    async def promote(self, **kwargs: Any) -> AliasMove:
        move: AliasMove = await self._call(self._registry.promote, **kwargs)
        return move

    async def remove_alias(self, **kwargs: Any) -> AliasMove:
        move: AliasMove = await self._call(self._registry.remove_alias, **kwargs)
        return move

    async def rollback(self, **kwargs: Any) -> AliasMove:
        move: AliasMove = await self._call(self._registry.rollback, **kwargs)
        return move

    async def archive(self, **kwargs: Any) -> VersionInfo:
        info: VersionInfo = await self._call(self._registry.archive, **kwargs)
        return info


def lost_run(runs: RunsInProgress, limit_s: float) -> str | None:
    """Why nothing the oldest model run under way computes can reach a client any more: it has
    gone on for longer than ``limit_s``, the longest any client waits for it. Such a run (a GPU
    call that never returns) cannot be cancelled, and the batches after it wait behind it, so the
    process has to start again. None while no run has."""
    longest = runs.longest_s()
    if longest <= limit_s:
        return None
    return (
        f"a model run has gone on for {longest:.1f} s, longer than any client waits "
        f"(SERVE_INFERENCE_TIMEOUT_S={limit_s:g})"
    )


async def run_batched(loaded: LoadedVersion, images: np.ndarray, metrics: Metrics) -> np.ndarray:
    """``images`` through ``loaded``'s batcher, its failures as the API's errors."""
    try:
        return await loaded.predict(images)
    except (QueueFullError, BatcherClosedError, InferenceError) as exc:
        raise batch_error(exc, loaded, metrics) from None


def batch_error(exc: BaseException, loaded: LoadedVersion, metrics: Metrics) -> BaseException:
    """A batcher's failure as the API's error (other exceptions as they are)."""
    if isinstance(exc, QueueFullError):
        metrics.rejected.labels(loaded.name).inc()
        return UnavailableError(
            f"server overloaded: the queue for {loaded.name} v{loaded.version} is full, retry shortly",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, BatcherClosedError):
        return UnavailableError("model version is shutting down, retry", headers={"Retry-After": "1"})
    if isinstance(exc, InferenceError):
        return ApiError(f"inference failed on {loaded.name} v{loaded.version}: {exc}")
    return exc


class LocalServing:
    """The model manager in this process: `--workers 1`, and the inference process itself."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        *,
        timeout_s: float,
        cache_counts: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        """``timeout_s``: how long a request waits for its rows' model run (`SERVE_INFERENCE_TIMEOUT_S`)."""
        self.manager = manager
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._cache_counts = cache_counts

    def cache_counts(self) -> dict[str, int] | None:
        """Reads of the local artifact cache (hit, miss, corrupt); None without one."""
        return self._cache_counts() if self._cache_counts is not None else None

    def view(self) -> HostView:
        return self.manager.view()

    async def infer(
        self,
        name: str,
        prepare: Prepare,
        *,
        version: int | None = None,
        alias: str | None = None,
        scope: MutableMapping[str, Any] | None = None,
    ) -> tuple[VersionInfo, np.ndarray]:
        async with self.manager.lease(name, version=version, alias=alias) as loaded:
            images = await prepare(loaded.info)
            with CancelOnHangup(scope):
                waiting = asyncio.timeout(self.timeout_s)
                try:
                    async with waiting:  # leaving it early drops the rows, or the batch's answer for them
                        return loaded.info, await run_batched(loaded, images, self.metrics)
                except TimeoutError:
                    if not waiting.expired():
                        raise
                    raise UnavailableError(
                        f"{name} v{loaded.version} did not answer within {self.timeout_s:g} s",
                        headers={"Retry-After": "1"},
                    ) from None

    def hung(self) -> str | None:
        return lost_run(self.manager.loader.runs, self.timeout_s)

    async def moved(self, name: str) -> HostView:
        self.manager.forget_alias_cache(name)
        await self.manager.sync()  # swap now; other replicas follow at their next poll
        return self.manager.view()
