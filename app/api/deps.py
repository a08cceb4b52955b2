"""Dependencies shared by the routers: what the lifespan put on `app.state`.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread
pool, a thread hop per dependency per request. The inference routes read
`request.app.state` directly instead; on them even an async dependency costs more
than this model's inference.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.metrics import Metrics
from app.serving import AsyncRegistry, Serving
from app.settings import Settings


async def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


async def get_registry(request: Request) -> AsyncRegistry:
    registry: AsyncRegistry = request.app.state.registry
    return registry


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


ServingDep = Annotated[Serving, Depends(get_serving)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RegistryDep = Annotated[AsyncRegistry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
