"""Dependencies shared by the routers: what the lifespan put on `app.state`."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Annotated

from fastapi import Depends, Request

from app.metrics import Metrics
from app.models import ModelManager
from app.settings import Settings
from registry import Registry


async def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_decode_executor(request: Request) -> Executor:
    executor: Executor = request.app.state.decode_executor
    return executor


async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


ManagerDep = Annotated[ModelManager, Depends(get_manager)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DecodeExecutorDep = Annotated[Executor, Depends(get_decode_executor)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
