"""The native REST API: predict by upload, the legacy `/predict` contract, and served models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.deps import ManagerDep
from app.api.params import AliasQuery, ModelName, VersionQuery
from app.errors import BadRequestError
from app.models import LoadedVersion, ModelManager
from app.schemas import ErrorBody, LegacyPrediction, LoadedVersionInfo, PredictResponse, ServedModelInfo
from app.service import classify, json_response, rank, read_uploads

router = APIRouter(tags=["predict"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "not an image, truncated, empty, or a malformed request (version and alias together)",
    },
    404: {"model": ErrorBody, "description": "unknown model, version or alias"},
    413: {"model": ErrorBody, "description": "too many bytes, pixels or images"},
    415: {"model": ErrorBody, "description": "body is neither multipart/form-data nor an image"},
    503: {"model": ErrorBody, "description": "overloaded (see Retry-After) or the model is not loaded yet"},
}


def _upload_body(fields: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI request body of an upload route: a form with ``fields``, or one raw image."""
    form: dict[str, Any] = {"type": "object", "properties": fields}
    if required:
        form["required"] = required
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


IMAGE_FILE = {"type": "string", "format": "binary"}
UPLOAD_BODY = _upload_body(
    {
        "images": {"type": "array", "items": IMAGE_FILE},
        "image": {**IMAGE_FILE, "description": "the legacy `/predict` contract's field"},
    }
)
LEGACY_BODY = _upload_body({"image": {**IMAGE_FILE, "description": "the image"}}, required=["image"])

TopKQuery = Annotated[int, Query(ge=1, le=1000, description="how many labels to rank per image")]


@router.post(
    "/v1/models/{name}/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=UPLOAD_BODY,
    summary="Classify one or more uploaded images",
)
async def predict(
    name: ModelName,
    request: Request,
    version: VersionQuery = None,
    alias: AliasQuery = None,
    top_k: TopKQuery = 3,
) -> Response:
    """Multipart files in the field `images` (or `image`, the legacy `/predict` contract's field), or
    one raw `image/*` body."""
    # The hot path reads app.state directly: FastAPI dependencies cost more than this CNN's inference.
    state = request.app.state
    if version is not None and alias is not None:
        raise BadRequestError("give either version or alias, not both")
    blobs = await read_uploads(request, state.settings.limits)
    loaded, probabilities = await classify(
        state.manager,
        name,
        blobs,
        settings=state.settings,
        metrics=state.metrics,
        executor=state.decode_executor,
        version=version,
        alias=alias,
        budget=state.decode_budget,
    )
    labels = loaded.info.contract.labels
    return json_response({"model": name, "version": loaded.version, "predictions": rank(probabilities, labels, top_k)})


@router.post(
    "/predict",
    response_model=LegacyPrediction,
    responses=ERRORS,
    openapi_extra=LEGACY_BODY,
    summary="The legacy `/predict` contract: form field `image`, default model",
)
async def predict_legacy(request: Request) -> Response:
    state = request.app.state
    blobs = await read_uploads(request, state.settings.limits, fields=("image",))
    if len(blobs) != 1:
        raise BadRequestError(f"send exactly one file in the field 'image' (got {len(blobs)})")
    manager = state.manager
    name = manager.default_model()
    loaded, probabilities = await classify(
        manager,
        name,
        blobs,
        settings=state.settings,
        metrics=state.metrics,
        executor=state.decode_executor,
        budget=state.decode_budget,
    )
    (best,) = rank(probabilities, loaded.info.contract.labels, 1)
    return json_response(
        {"prediction": best["label"], "score": best["score"], "model": name, "version": loaded.version}
    )


def describe(manager: ModelManager, name: str) -> ServedModelInfo:
    state = manager.served_state(name)
    loaded: list[tuple[str, LoadedVersion]] = [(r, v) for r, v in manager.loaded_versions() if v.name == name]
    current = state.current
    return ServedModelInfo(
        name=name,
        alias=manager.settings.alias,
        serving_version=current.version if current else None,
        aliases=state.aliases,
        loaded=[
            LoadedVersionInfo(
                version=v.version,
                role=role,
                provider=v.provider,
                providers=v.backend.providers,
                queued_rows=v.batcher.queued_rows,
                loaded_at=v.loaded_at,
            )
            for role, v in loaded
        ],
        contract=current.info.contract.model_dump(mode="json") if current else None,
        last_error=state.last_error,
    )


@router.get("/v1/models", response_model=list[ServedModelInfo], tags=["models"], summary="Served models")
async def list_served(manager: ManagerDep) -> list[ServedModelInfo]:
    return [describe(manager, name) for name in sorted(manager.states)]


@router.get(
    "/v1/models/{name}",
    response_model=ServedModelInfo,
    responses={404: {"model": ErrorBody}},
    tags=["models"],
    summary="One served model: loaded versions, aliases, contract, provider",
)
async def get_served(name: ModelName, manager: ManagerDep) -> ServedModelInfo:
    return describe(manager, name)
