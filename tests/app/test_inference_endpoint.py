"""The inference process's side of the link (`app.ipc.InferenceEndpoint`), with a real model
manager and ONNX Runtime session, and a recording stand-in for the front end's connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from app.ipc import InferenceEndpoint
from app.main import local_serving
from app.metrics import Metrics
from app.settings import BatchingSettings
from app.versions import LoadedVersion
from registry import Registry
from tests.app.conftest import settings_for
from tests.conftest import Backend


class Recording:
    """What the endpoint sends to one front end."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], np.ndarray | None]] = []

    def send(self, header: dict[str, Any], payload: np.ndarray | None = None) -> bool:
        self.sent.append((header, payload))
        return True


def infer(ids: list[int], counts: list[int], size: int = 16, version: int | None = None) -> dict[str, Any]:
    return {
        "op": "infer",
        "ids": ids,
        "counts": counts,
        "slot": 0,
        "model": "colors",
        "version": version,
        "alias": None,
        "assumed": version or 1,
        "sig": "",
        "shape": [sum(counts), size, size, 3],
        "inflight": len(ids),
        "deadline": time.time() + 30,
    }


def colored(*channels: int, size: int = 16) -> bytearray:
    """One image per channel index, filled with that pure color."""
    images = np.zeros((len(channels), size, size, 3), dtype=np.uint8)
    for row, channel in enumerate(channels):
        images[row, ..., channel] = 255
    return bytearray(images.tobytes())


@asynccontextmanager
async def endpoint_on(
    backend: Backend, tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[InferenceEndpoint, LoadedVersion, Metrics]]:
    """An endpoint serving colors v1 (loaded), and that version."""
    config = settings_for(backend, **settings)
    registry = Registry.from_settings(config.registry)
    metrics = Metrics()
    try:
        with ThreadPoolExecutor(2) as loader:
            async with local_serving(
                config, registry, metrics, can_grow=lambda _: False, backend_factory=None, loader_executor=loader
            ) as serving:
                await serving.manager.start()
                deadline = time.monotonic() + 30
                while (state := serving.manager.states.get("colors")) is None or state.current is None:
                    assert time.monotonic() < deadline, "colors v1 never loaded"
                    await asyncio.sleep(0.05)
                yield InferenceEndpoint(serving, tmp_path, frontends=1), state.current, metrics
                await serving.manager.stop()
    finally:
        registry.close()


async def answers(link: Recording, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(link.sent) < count:
        assert time.monotonic() < deadline, f"{len(link.sent)} answers, waited for {count}"
        await asyncio.sleep(0.01)


async def test_a_request_that_cannot_be_queued_is_answered_and_lets_go_of_its_version(
    served_backend: Backend, tmp_path: Path
) -> None:
    """A version still leased can never be retired (a promotion would wait on it forever)."""
    async with endpoint_on(served_backend, tmp_path) as (endpoint, loaded, _):
        link = Recording()
        endpoint._dispatch(link, infer([1], [1]), bytearray(10))  # type: ignore[arg-type]
        assert loaded.leases == 0
        [(answer, _)] = link.sent
        assert answer["ids"] == [1] and answer["status"] == "error" and answer["code"] == 500

        endpoint._dispatch(link, infer([2], [1]), colored(0))  # type: ignore[arg-type]
        await answers(link, 2)
        answer, probabilities = link.sent[1]
        assert (answer["ids"], answer["status"], answer["version"]) == ([2], "ok", 1)
        assert probabilities is not None and int(np.argmax(probabilities[0])) == 0  # red
        assert loaded.leases == 0


async def test_the_requests_of_one_message_run_together_and_get_their_own_rows_back(
    served_backend: Backend, tmp_path: Path
) -> None:
    async with endpoint_on(served_backend, tmp_path) as (endpoint, loaded, _):
        link = Recording()
        endpoint._dispatch(link, infer([5, 6, 7], [1, 2, 1]), colored(2, 1, 0, 1))  # type: ignore[arg-type]
        await answers(link, 1)
        [(answer, probabilities)] = link.sent
        assert (answer["ids"], answer["counts"], answer["status"]) == ([5, 6, 7], [1, 2, 1], "ok")
        assert probabilities is not None and answer["shape"] == [4, 3]
        assert np.argmax(probabilities, axis=1).tolist() == [2, 1, 0, 1]  # blue | green, red | green
        # Rows that do not add up to the requests' counts are an error for all of them, not a wrong split.
        endpoint._dispatch(link, infer([8, 9], [1, 2]), colored(0, 1))  # type: ignore[arg-type]
        assert link.sent[1][0]["ids"] == [8, 9] and link.sent[1][0]["status"] == "error"
        assert loaded.leases == 0


async def test_a_cancelled_request_s_queued_rows_are_dropped_and_the_others_of_its_message_still_run(
    served_backend: Backend, tmp_path: Path
) -> None:
    """Rows wait out a long batch delay here (another request seems to be on its way)."""
    batching = BatchingSettings(max_batch_delay_ms=300)
    async with endpoint_on(served_backend, tmp_path, batching=batching) as (endpoint, loaded, metrics):
        loaded.batcher._can_grow = lambda _: True
        link = Recording()
        endpoint._dispatch(link, infer([1, 2, 5], [1, 2, 1]), colored(0, 1, 1, 2))  # type: ignore[arg-type]
        endpoint._dispatch(link, {"op": "cancel", "id": 2}, None)  # type: ignore[arg-type]
        endpoint._dispatch(link, {"op": "cancel", "id": 2}, None)  # type: ignore[arg-type]  (counted once)
        await answers(link, 1)  # the others still wait: their rows run, without the cancelled one's
        [(answer, probabilities)] = link.sent
        assert answer["ids"] == [1, 2, 5] and answer["counts"] == [1, 0, 1]
        assert probabilities is not None and np.argmax(probabilities, axis=1).tolist() == [0, 2]
        assert metrics.registry.get_sample_value("batch_rows_dropped_total", {"model": "colors"}) == 2

        endpoint._dispatch(link, infer([3, 4], [1, 1]), colored(0, 1))  # type: ignore[arg-type]
        for request in (3, 4):
            endpoint._dispatch(link, {"op": "cancel", "id": request}, None)  # type: ignore[arg-type]
        await asyncio.sleep(0.6)
        assert len(link.sent) == 1  # nobody to answer
        assert metrics.registry.get_sample_value("batch_rows_dropped_total", {"model": "colors"}) == 4
        assert loaded.leases == 0


async def test_a_request_cancelled_while_its_version_loads_is_left_out_of_the_rows_queued(
    served_backend: Backend, tmp_path: Path
) -> None:
    async with endpoint_on(served_backend, tmp_path) as (endpoint, _, metrics):
        link = Recording()
        # v2 (red -> green) is not loaded: it is loaded first, and meanwhile request 1 goes away.
        endpoint._dispatch(link, infer([1, 2], [2, 1], version=2), colored(2, 2, 0))  # type: ignore[arg-type]
        endpoint._dispatch(link, {"op": "cancel", "id": 1}, None)  # type: ignore[arg-type]
        await answers(link, 1)
        [(answer, probabilities)] = link.sent
        assert (answer["ids"], answer["counts"], answer["status"]) == ([1, 2], [0, 1], "ok"), answer
        assert answer["version"] == 2
        assert probabilities is not None and np.argmax(probabilities, axis=1).tolist() == [1]  # red, as v2 sees it
        assert metrics.registry.get_sample_value("batch_rows_dropped_total", {"model": "colors"}) in (None, 0)

        endpoint._dispatch(link, infer([3], [1], version=2), colored(0))  # type: ignore[arg-type]
        await answers(link, 2)
        assert link.sent[1][0]["ids"] == [3] and link.sent[1][0]["status"] == "ok"
