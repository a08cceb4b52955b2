"""The inference process's side of the link (`app.ipc.InferenceEndpoint`), with a real model
manager and ONNX Runtime session, and a recording stand-in for the front end's connection."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from app.ipc import InferenceEndpoint
from app.main import local_serving
from app.metrics import Metrics
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


def infer(request: int, shape: list[int]) -> dict[str, Any]:
    return {
        "op": "infer",
        "id": request,
        "slot": 0,
        "model": "colors",
        "version": None,
        "alias": None,
        "assumed": 1,
        "sig": "",
        "shape": shape,
        "inflight": 1,
        "deadline": time.time() + 30,
    }


async def test_a_request_that_cannot_be_queued_is_answered_and_lets_go_of_its_version(
    served_backend: Backend, tmp_path: Path
) -> None:
    """A version still leased can never be retired (a promotion would wait on it forever)."""
    settings = settings_for(served_backend)
    registry = Registry.from_settings(settings.registry)
    with ThreadPoolExecutor(2) as loader:
        async with local_serving(
            settings, registry, Metrics(), can_grow=lambda _: False, backend_factory=None, loader_executor=loader
        ) as serving:
            await serving.manager.start()
            deadline = time.monotonic() + 30
            while (state := serving.manager.states.get("colors")) is None or state.current is None:
                assert time.monotonic() < deadline, "colors v1 never loaded"
                await asyncio.sleep(0.05)
            loaded = state.current
            endpoint = InferenceEndpoint(serving, tmp_path, frontends=1)
            link = Recording()

            endpoint._dispatch(link, infer(1, [1, 16, 16, 3]), bytearray(10))  # type: ignore[arg-type]
            assert loaded.leases == 0
            [(answer, _)] = link.sent
            assert answer["id"] == 1 and answer["status"] == "error" and answer["code"] == 500

            red = np.zeros((1, 16, 16, 3), dtype=np.uint8)
            red[..., 0] = 255
            endpoint._dispatch(link, infer(2, [1, 16, 16, 3]), bytearray(red.tobytes()))  # type: ignore[arg-type]
            while len(link.sent) < 2:
                assert time.monotonic() < deadline, "no answer"
                await asyncio.sleep(0.01)
            answer, probabilities = link.sent[1]
            assert (answer["id"], answer["status"], answer["version"]) == (2, "ok", 1)
            assert probabilities is not None and int(np.argmax(probabilities[0])) == 0  # red
            assert loaded.leases == 0
            await serving.manager.stop()
    registry.close()
