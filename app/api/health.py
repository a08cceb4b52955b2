"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import MetricsDep, ServingDep
from app.schemas import HealthResponse, LiveResponse

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=LiveResponse,
    responses={503: {"model": LiveResponse, "description": "the process is hung: start it again"}},
    summary="Liveness: the process answers, and can serve again without a restart",
)
@router.head("/healthz", include_in_schema=False)  # load balancers probe with HEAD
async def healthz(serving: ServingDep) -> JSONResponse:
    hung = serving.hung()
    body = LiveResponse(status="ok" if hung is None else "hung", error=hung)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if hung is None else 503)


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "a served model is not loaded"}},
    summary="Readiness: every served model is loaded and warm",
)
async def readyz(serving: ServingDep) -> JSONResponse:
    view = serving.view()
    providers = {(v.name, v.version): v.provider for v in view.loaded}
    models = {
        name: {
            "version": model.current,
            "provider": providers.get((name, model.current)) if model.current is not None else None,
            "error": model.last_error,
        }
        for name, model in sorted(view.models.items())
    }
    ready = view.ready
    body = HealthResponse(
        status="ready" if ready else "not ready",
        models=models,
        registry_error=view.last_poll_error,
        inference_error=view.inference_error,
        workers=view.workers,
    )
    content = body.model_dump()
    for key in ("inference_error", "workers"):  # only the multi-process layout has them
        if content[key] is None:
            del content[key]
    return JSONResponse(content, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
