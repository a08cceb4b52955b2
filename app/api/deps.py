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
from app.models import ModelManager


async def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


ManagerDep = Annotated[ModelManager, Depends(get_manager)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
