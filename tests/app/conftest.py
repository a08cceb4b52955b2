"""A registry holding small real ONNX models, and the app running in-process against it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from registry import RegistrySettings
from tests.conftest import Backend
from tests.onnx_models import color_classifier, color_metadata


@pytest.fixture
def served_backend(backend: Backend, tmp_path: Path) -> Backend:
    """`colors` v1 (red→red) at production, v2 (red→green) at staging; `pets` (sigmoid) v1 at production."""
    v1 = color_classifier(tmp_path / "colors-v1.onnx")
    v2 = color_classifier(tmp_path / "colors-v2.onnx", permute=(1, 0, 2))
    pets = color_classifier(tmp_path / "pets.onnx", kind="sigmoid")
    with backend.registry() as reg:
        reg.register(name="colors", onnx_path=v1, metadata=color_metadata())
        reg.register(name="colors", onnx_path=v2, metadata=color_metadata())
        reg.promote(name="colors", version=1)
        reg.promote(name="colors", version=2, alias="staging")
        reg.register(name="pets", onnx_path=pets, metadata=color_metadata(kind="sigmoid"))
        reg.promote(name="pets", version=1)
    return backend


def settings_for(backend: Backend, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "registry": RegistrySettings(database_url=backend.database_url, artifacts_dir=backend.artifacts_dir),
        "poll_interval_s": 0.1,
        "warmup_batch_sizes": [1],
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


ClientFactory = Callable[..., Any]


@pytest.fixture(params=[True, False], ids=["fast-path", "no-fast-path"])
async def client(served_backend: Backend, request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """The app on `served_backend`, with the inference fast path on and off: the API's answers must
    not depend on it."""
    async with running(create_app(settings_for(served_backend, fast_path=request.param))) as c:
        yield c
