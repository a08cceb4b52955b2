"""The native REST API: predict by upload, the legacy `/predict` contract, and served models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.deps import ServingDep
from app.api.params import AliasQuery, ModelName, VersionQuery
from app.errors import BadRequestError
from app.schemas import ErrorBody, LegacyPrediction, LoadedVersionInfo, PredictResponse, ServedModelInfo
from app.service import classify, json_response, rank, read_uploads
from app.serving import HostView, Serving

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
    info, probabilities = await classify(
        state.serving,
        name,
        blobs,
        settings=state.settings,
        executor=state.decode_executor,
        version=version,
        alias=alias,
        budget=state.decode_budget,
        scope=request.scope,
    )
    labels = info.contract.labels
    return json_response({"model": name, "version": info.version, "predictions": rank(probabilities, labels, top_k)})


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
    serving: Serving = state.serving
    name = serving.view().default_model(state.settings.default_model)
    info, probabilities = await classify(
        serving,
        name,
        blobs,
        settings=state.settings,
        executor=state.decode_executor,
        budget=state.decode_budget,
        scope=request.scope,
    )
    (best,) = rank(probabilities, info.contract.labels, 1)
    return json_response({"prediction": best["label"], "score": best["score"], "model": name, "version": info.version})


def describe(view: HostView, name: str) -> ServedModelInfo:
    model = view.served(name)
    current = view.current_info(name)
    return ServedModelInfo(
        name=name,
        alias=view.alias,
        serving_version=model.current,
        aliases=model.aliases,
        loaded=[
            LoadedVersionInfo(
                version=v.version,
                role=v.role,
                provider=v.provider,
                providers=v.providers,
                queued_rows=v.queued_rows,
                loaded_at=v.loaded_at,
            )
            for v in view.versions_of(name)
        ],
        contract=current.contract.model_dump(mode="json") if current else None,
        last_error=model.last_error,
    )


@router.get(
    "/v1/models",
    response_model=list[ServedModelInfo],
    responses={503: {"model": ErrorBody}},
    tags=["models"],
    summary="Served models",
)
async def list_served(serving: ServingDep) -> list[ServedModelInfo]:
    view = serving.view()
    return [describe(view, name) for name in view.served_names()]


@router.get(
    "/v1/models/{name}",
    response_model=ServedModelInfo,
    responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    tags=["models"],
    summary="One served model: loaded versions, aliases, contract, provider",
)
async def get_served(name: ModelName, serving: ServingDep) -> ServedModelInfo:
    return describe(serving.view(), name)
