"""The parts of the model manager that know nothing of following an alias, each testable alone.

- `LoadedVersion`: one version in memory, its session and batcher, and the leases on it;
- `VersionLoader`: a registered version to a warmed-up `LoadedVersion`, or an error;
- `AliasCache`: which version an alias points to, for requests with `?alias=`, cached briefly;
- `PinnedVersions`: versions loaded on demand for `?version=` / `?alias=`, least recently used out.

`app.models.ModelManager` puts them together with the registry poll and the served versions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.backend import CUDA, InferenceBackend
from app.batcher import Batcher, RunsInProgress
from app.errors import BadRequestError, NotFoundError
from app.metrics import Metrics
from app.settings import Settings
from core.contract import to_probabilities
from registry import Registry, VersionInfo

log = logging.getLogger("app.models")

BackendFactory = Callable[[bytes, VersionInfo], InferenceBackend]
Call = Callable[..., Awaitable[Any]]  # runs a blocking call off the event loop


@dataclass(eq=False)
class LoadedVersion:
    name: str
    info: VersionInfo
    backend: InferenceBackend
    batcher: Batcher
    loaded_at: float = field(default_factory=time.time)
    leases: int = 0
    retired: bool = False
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def version(self) -> int:
        return self.info.version

    @property
    def provider(self) -> str:
        providers = self.backend.providers
        return providers[0] if providers else "unknown"

    async def predict(self, images: np.ndarray) -> np.ndarray:
        return self.probabilities(await self.batcher.submit(images))

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """The model's raw outputs for some rows as probabilities."""
        return to_probabilities(raw, self.info.contract.output.kind)

    def acquire(self) -> bool:
        if self.retired:
            return False
        self.leases += 1
        return True

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0:
            self._idle.set()

    async def retire(self) -> None:
        """Wait for the requests holding this version, drain its queue, close its session."""
        self.retired = True
        if self.leases:
            self._idle.clear()
            await self._idle.wait()
        await self.batcher.close()
        self.backend.close()
        log.info("closed %s v%d", self.name, self.version)


def joins_while_running(backend: InferenceBackend) -> bool:
    """The batcher's ``join_while_running`` for a version on ``backend``: on the CPU the model is the
    limit, so rows are joined on the event loop while a batch runs; on a GPU the loop is the limit."""
    return CUDA not in backend.providers


class VersionLoader:
    """Reads a version (sha256-checked), builds its session, warms it up and gives it a batcher."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        metrics: Metrics,
        backend_factory: BackendFactory,
        inference_executor: Executor,
        call: Call,
        can_grow: Callable[[int], bool] | None = None,
    ) -> None:
        """``call`` runs the blocking steps (registry reads, session creation) off the event loop."""
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._backend_factory = backend_factory
        self._inference_executor = inference_executor
        self._call = call
        self._can_grow = can_grow
        self.runs = RunsInProgress()  # every batch of every version it loads: a run that never ends shows here

    async def load(self, name: str, version: int) -> LoadedVersion:
        info: VersionInfo = await self._call(self._registry.get_version, name, version)
        if info.status == "archived":
            raise NotFoundError(f"{name} v{version} is archived")
        backend = await self._call(self._create_backend, name, info)
        b = self._settings.batching
        batcher = Batcher(
            backend.run,
            max_batch_size=b.max_batch_size,
            max_batch_delay_s=b.max_batch_delay_ms / 1000,
            max_queue_rows=b.max_queue_rows,
            executor=self._inference_executor,
            on_batch=self._metrics.batch_hook(name),
            can_grow=self._can_grow,
            on_drop=self._metrics.dropped.labels(name).inc,
            max_concurrent_batches=b.max_concurrent_batches,
            inline_below_s=b.inline_below_ms / 1000,
            join_while_running=joins_while_running(backend),
            runs=self.runs,
            name=f"{name} v{version}",
        )
        batcher.start()
        return LoadedVersion(name=name, info=info, backend=backend, batcher=batcher)

    def _create_backend(self, name: str, info: VersionInfo) -> InferenceBackend:
        """Read, build the session, and warm it up at the configured batch sizes. In a worker thread."""
        data = self._registry.open_artifact(name, info.version)
        backend = self._backend_factory(data, info)
        contract = info.contract
        sizes = {min(s, self._settings.batching.max_batch_size) for s in self._settings.warmup_batch_sizes}
        for size in sorted(sizes):
            dummy = np.zeros((size, contract.input.height, contract.input.width, 3), dtype=np.uint8)
            out = backend.run(dummy)
            if out.shape != (size, contract.num_outputs):
                backend.close()
                raise ValueError(f"warm-up returned shape {out.shape}, expected {(size, contract.num_outputs)}")
        return backend


class AliasCache:
    """Which version an alias points to, asked of the registry at most once per ``ttl_s``."""

    def __init__(
        self,
        resolve: Callable[[str, str], Awaitable[int]],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[int, float]] = {}  # (model, alias) -> (version, until)

    async def version(self, name: str, alias: str) -> int:
        cached = self._entries.get((name, alias))
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        version = await self._resolve(name, alias)
        self._entries[(name, alias)] = (version, self._clock() + self._ttl_s)
        return version

    def forget(self, name: str) -> None:
        """An alias of ``name`` moved here: ask the registry next time."""
        for key in [k for k in self._entries if k[0] == name]:
            del self._entries[key]


class PinnedVersions:
    """Versions loaded on demand, at most ``capacity``; the least recently used is retired first.
    Concurrent requests for a version not loaded yet share one load."""

    def __init__(
        self,
        load: Callable[[str, int], Awaitable[LoadedVersion]],
        *,
        capacity: int,
        retire: Callable[[LoadedVersion], None],
    ) -> None:
        self._load = load
        self.capacity = capacity
        self._retire = retire
        self._loaded: OrderedDict[tuple[str, int], LoadedVersion] = OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Task[LoadedVersion]] = {}

    def __len__(self) -> int:
        return len(self._loaded)

    def values(self) -> list[LoadedVersion]:
        return list(self._loaded.values())

    async def get(self, name: str, version: int) -> LoadedVersion:
        key = (name, version)
        loaded = self._loaded.get(key)
        if loaded is not None:
            self._loaded.move_to_end(key)
            return loaded
        if self.capacity == 0:
            raise BadRequestError("requests for a specific version are disabled (SERVE_PINNED_CACHE_SIZE=0)")
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load_and_keep(name, version))
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(task)

    async def _load_and_keep(self, name: str, version: int) -> LoadedVersion:
        loaded = await self._load(name, version)
        self._loaded[(name, version)] = loaded
        while len(self._loaded) > self.capacity:
            _, evicted = self._loaded.popitem(last=False)
            self._retire(evicted)
        return loaded

    def take_all(self) -> list[LoadedVersion]:
        """Stop loading and hand every loaded version over (to be retired): the server is stopping."""
        for task in self._loading.values():
            task.cancel()
        loaded = list(self._loaded.values())
        self._loaded.clear()
        return loaded
