"""The model manager's parts, each alone: the alias cache, the pinned versions, the loader."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.backend import OrtBackend
from app.errors import BadRequestError, NotFoundError
from app.metrics import Metrics
from app.versions import AliasCache, LoadedVersion, PinnedVersions, VersionLoader
from registry import Registry, VersionInfo
from tests.app.conftest import settings_for
from tests.conftest import Backend
from tests.onnx_models import color_classifier, color_metadata


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_alias_cache_asks_the_registry_once_per_ttl_and_forgets_on_a_move() -> None:
    answers = {("colors", "staging"): 2, ("pets", "staging"): 7}
    asked: list[tuple[str, str]] = []

    async def resolve(name: str, alias: str) -> int:
        asked.append((name, alias))
        return answers[(name, alias)]

    clock = Clock()
    cache = AliasCache(resolve, ttl_s=2.0, clock=clock)
    assert await cache.version("colors", "staging") == 2
    answers[("colors", "staging")] = 3  # moved in the registry by another replica
    assert await cache.version("colors", "staging") == 2  # within the TTL: not asked again
    clock.now += 2.5
    assert await cache.version("colors", "staging") == 3
    assert await cache.version("pets", "staging") == 7
    answers[("colors", "staging")] = 4  # moved by this server's admin API
    cache.forget("colors")
    assert await cache.version("colors", "staging") == 4
    assert await cache.version("pets", "staging") == 7  # another model's entry stays
    assert asked == [("colors", "staging"), ("colors", "staging"), ("pets", "staging"), ("colors", "staging")]


class FakeLoaded:
    """Stands in for a LoadedVersion: PinnedVersions only keeps and hands them over."""

    def __init__(self, name: str, version: int) -> None:
        self.name, self.version = name, version


async def test_pinned_versions_share_a_load_and_retire_the_least_recently_used() -> None:
    loads: list[tuple[str, int]] = []
    release = asyncio.Event()

    async def load(name: str, version: int) -> Any:
        loads.append((name, version))
        await release.wait()
        return FakeLoaded(name, version)

    retired: list[tuple[str, int]] = []
    pinned = PinnedVersions(load, capacity=2, retire=lambda v: retired.append((v.name, v.version)))
    first = [asyncio.ensure_future(pinned.get("colors", 1)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    got = await asyncio.gather(*first)
    assert loads == [("colors", 1)]  # five requests, one load
    assert all(g is got[0] for g in got)
    await pinned.get("colors", 2)
    await pinned.get("colors", 1)  # v1 is now the most recently used
    await pinned.get("colors", 3)
    assert retired == [("colors", 2)]
    assert sorted(v.version for v in pinned.values()) == [1, 3]
    assert len(pinned) == 2


async def test_pinned_versions_off_refuse_with_a_client_error_and_stopping_hands_everything_over() -> None:
    async def load(name: str, version: int) -> Any:
        return FakeLoaded(name, version)

    off = PinnedVersions(load, capacity=0, retire=lambda v: None)
    with pytest.raises(BadRequestError, match="SERVE_PINNED_CACHE_SIZE=0"):
        await off.get("colors", 1)

    stuck = asyncio.Event()

    async def slow_load(name: str, version: int) -> Any:
        await stuck.wait()
        return FakeLoaded(name, version)

    pinned = PinnedVersions(slow_load, capacity=4, retire=lambda v: None)
    stuck.set()
    await pinned.get("colors", 1)
    stuck.clear()
    waiting = asyncio.ensure_future(pinned.get("colors", 2))
    await asyncio.sleep(0)
    handed = pinned.take_all()
    assert [v.version for v in handed] == [1]
    assert len(pinned) == 0
    with pytest.raises(asyncio.CancelledError):
        await waiting


@asynccontextmanager
async def loader_for(backend: Backend, factory: Any) -> AsyncIterator[VersionLoader]:
    settings = settings_for(backend, warmup_batch_sizes=[1, 4])
    pool = ThreadPoolExecutor(1)

    async def call(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    registry = Registry.from_settings(settings.registry)
    try:
        yield VersionLoader(
            settings=settings,
            registry=registry,
            metrics=Metrics(),
            backend_factory=factory,
            inference_executor=pool,
            call=call,
        )
    finally:
        pool.shutdown()
        registry.close()


async def test_the_loader_warms_a_real_session_up_and_refuses_archived_versions(
    backend: Backend, tmp_path: Path
) -> None:
    with backend.registry() as reg:
        reg.register(name="colors", onnx_path=color_classifier(tmp_path / "m.onnx"), metadata=color_metadata())
        reg.register(name="colors", onnx_path=color_classifier(tmp_path / "m2.onnx", gain=5), metadata=color_metadata())
        reg.archive(name="colors", version=2)
    runs: list[int] = []

    def factory(data: bytes, info: VersionInfo) -> OrtBackend:
        backend = OrtBackend(data, info.contract, providers=["CPUExecutionProvider"])
        original = backend.run

        def run(batch: np.ndarray) -> np.ndarray:
            runs.append(len(batch))
            return original(batch)

        backend.run = run  # type: ignore[method-assign]
        return backend

    async with loader_for(backend, factory) as loader:
        loaded: LoadedVersion = await loader.load("colors", 1)
        try:
            assert runs == [1, 4]  # warmed up at each configured batch size before serving
            red = np.zeros((1, 16, 16, 3), dtype=np.uint8)
            red[..., 0] = 255
            probabilities = await loaded.predict(red)
            assert int(np.argmax(probabilities[0])) == 0  # red
            with pytest.raises(NotFoundError, match="archived"):
                await loader.load("colors", 2)
        finally:
            await loaded.retire()


async def test_a_version_whose_warm_up_answers_the_wrong_shape_is_not_loaded(backend: Backend, tmp_path: Path) -> None:
    with backend.registry() as reg:
        reg.register(name="colors", onnx_path=color_classifier(tmp_path / "m.onnx"), metadata=color_metadata())
    closed: list[bool] = []

    class WrongShape:
        providers = ["CPUExecutionProvider"]

        def run(self, batch: np.ndarray) -> np.ndarray:
            return np.zeros((len(batch), 5), dtype=np.float32)  # the contract says 3 labels

        def close(self) -> None:
            closed.append(True)

    async with loader_for(backend, lambda data, info: WrongShape()) as loader:
        with pytest.raises(ValueError, match="warm-up returned shape"):
            await loader.load("colors", 1)
    assert closed == [True]


@pytest.mark.parametrize(
    ("providers", "joins"),
    [(["CPUExecutionProvider"], True), (["CUDAExecutionProvider", "CPUExecutionProvider"], False)],
)
async def test_rows_are_joined_on_the_loop_while_a_batch_runs_on_the_cpu_but_not_on_a_gpu(
    backend: Backend, tmp_path: Path, providers: list[str], joins: bool
) -> None:
    """On a GPU the event loop is what limits the host, so the copy stays in the inference thread."""
    with backend.registry() as reg:
        reg.register(name="colors", onnx_path=color_classifier(tmp_path / "m.onnx"), metadata=color_metadata())

    class Session:
        def __init__(self) -> None:
            self.providers = providers

        def run(self, batch: np.ndarray) -> np.ndarray:
            return np.zeros((len(batch), 3), dtype=np.float32)

        def close(self) -> None:
            pass

    async with loader_for(backend, lambda data, info: Session()) as loader:
        loaded = await loader.load("colors", 1)
        try:
            assert loaded.batcher.join_while_running is joins
        finally:
            await loaded.retire()
