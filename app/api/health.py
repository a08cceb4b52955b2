"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ManagerDep, MetricsDep
from app.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
@router.head("/healthz", include_in_schema=False)  # load balancers probe with HEAD
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "a served model is not loaded"}},
    summary="Readiness: every served model is loaded and warm",
)
async def readyz(manager: ManagerDep) -> JSONResponse:
    models = {
        name: {
            "version": state.current.version if state.current else None,
            "provider": state.current.provider if state.current else None,
            "error": state.last_error,
        }
        for name, state in sorted(manager.states.items())
    }
    ready = manager.ready
    body = HealthResponse(
        status="ready" if ready else "not ready", models=models, registry_error=manager.last_poll_error
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
