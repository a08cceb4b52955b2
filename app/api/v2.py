"""The Open Inference Protocol v2 REST API (KServe / Triton clients work unchanged).

Inputs: one tensor, either `UINT8 [N, H, W, 3]` at the model's size or `BYTES [N]`
of encoded image files. Output: the probabilities `FP32 [N, K]` (a sigmoid head is
reported as [1 - s, s]), optionally as the classification extension's top-k strings.
Requests share the `/v1` batcher of the version they address.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import Executor
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

import app as app_package
from app.api.deps import RegistryDep, ServingDep, SettingsDep
from app.api.params import ModelName, VersionText
from app.errors import BadRequestError, NotFoundError, PayloadTooLargeError, UnavailableError
from app.oip import (
    HEADER_LENGTH,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestOutput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
    classification_strings,
    decode_bytes,
    decode_content,
    decode_numeric,
    encode_bytes,
    parse_request,
    render,
    take_binary,
)
from app.schemas import ErrorBody
from app.service import decode_all
from app.serving import AsyncRegistry, HostView, Serving
from app.settings import Settings
from registry import VersionInfo
from registry.schemas import MAX_VERSION

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

EXTENSIONS = ["binary_tensor_data", "classification"]
VERSION_RE = re.compile(r"[0-9]{1,10}")
# JSON headers up to this size are parsed on the event loop (a binary request's header is a few
# hundred bytes); bigger ones carry tensor data as JSON numbers and are parsed in the decode pool.
INLINE_JSON_BYTES = 64 * 1024
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed request: shape, datatype, size, unknown input/output"},
    404: {"model": ErrorBody, "description": "unknown model or version"},
    413: {"model": ErrorBody, "description": "too many bytes, pixels or images"},
    503: {"model": ErrorBody, "description": "overloaded (Retry-After) or not ready"},
}


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="imgserve", version=app_package.__version__, extensions=EXTENSIONS)


@router.get("/health/live", summary="Server liveness", responses={503: {"description": "hung: start it again"}})
@router.head("/health/live", include_in_schema=False)
async def live(serving: ServingDep) -> JSONResponse:
    live = serving.hung() is None  # as /healthz
    return JSONResponse({"live": live}, status_code=200 if live else 503)


@router.get("/health/ready", summary="Server readiness", responses={503: {"description": "not ready"}})
@router.head("/health/ready", include_in_schema=False)
async def ready(serving: ServingDep) -> JSONResponse:
    ready = serving.view().ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


async def _target(
    view: HostView, registry: AsyncRegistry, name: str, version: str | None
) -> tuple[VersionInfo | None, bool]:
    """The version a v2 route addresses and whether it is loaded here.

    Its info comes from memory when it is loaded, else from the registry: describing a
    version never loads it. None for a served model whose alias target is not loaded yet.
    """
    number = _version_number(version)
    if number is None:
        view.served(name)  # 404 when not served
        info = view.current_info(name)
        return (info, True) if info is not None else (None, False)
    info = view.loaded_info(name, number)
    if info is not None:
        return info, True
    info = await registry.get_version(name, number)  # 404 when unknown
    if info.status != "ready":
        raise NotFoundError(f"{name} v{number} is archived")
    return info, False


def _version_number(version: str | None) -> int | None:
    if version is None:
        return None
    # ASCII digits only: str.isdigit() also accepts superscripts (which int() refuses) and other
    # scripts' digits (which int() reads: Arabic-Indic one would address v1).
    if not VERSION_RE.fullmatch(version) or not 1 <= int(version) <= MAX_VERSION:
        raise NotFoundError(f"no version {version!r}: versions are positive integers")
    return int(version)


def _metadata(info: VersionInfo, versions: list[str]) -> ModelMetadata:
    contract = info.contract
    return ModelMetadata(
        name=info.model_name,
        versions=versions,
        platform="onnxruntime_onnx",
        inputs=[
            TensorMetadata(
                name=contract.input.name,
                datatype="UINT8",
                shape=[-1, contract.input.height, contract.input.width, 3],
                # The same input also takes encoded image files, which the server decodes and resizes.
                parameters={
                    "alternative": {"datatype": "BYTES", "shape": [-1], "content": "encoded image files"},
                    "image_formats": ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"],
                },
            ),
        ],
        outputs=[TensorMetadata(name=contract.output.name, datatype="FP32", shape=[-1, len(contract.labels)])],
    )


@router.get(
    "/models/{name}",
    response_model=ModelMetadata,
    response_model_exclude_none=True,
    responses=ERRORS,
    summary="Model metadata",
)
async def model_metadata(name: ModelName, serving: ServingDep, registry: RegistryDep) -> ModelMetadata:
    return await _model_metadata(serving.view(), registry, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    response_model_exclude_none=True,
    responses=ERRORS,
    summary="Version metadata",
)
async def version_metadata(
    name: ModelName, version: VersionText, serving: ServingDep, registry: RegistryDep
) -> ModelMetadata:
    return await _model_metadata(serving.view(), registry, name, version)


async def _model_metadata(view: HostView, registry: AsyncRegistry, name: str, version: str | None) -> ModelMetadata:
    info, _ = await _target(view, registry, name, version)
    if info is None:
        raise UnavailableError(f"model {name!r} is not loaded yet", headers={"Retry-After": "2"})
    versions = await registry.list_versions(name)
    return _metadata(info, [str(v.version) for v in versions if v.status == "ready"])


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "ready: an infer request for it is answered (a version not loaded yet is loaded by it)"},
    404: {"model": ErrorBody, "description": "unknown or archived model or version"},
    503: {"model": ErrorBody, "description": "not ready: not loaded yet, or failed to load (see Retry-After)"},
}


@router.get("/models/{name}/ready", responses=READY_RESPONSES, summary="Model readiness")
async def model_ready(
    name: ModelName, serving: ServingDep, registry: RegistryDep, settings: SettingsDep
) -> JSONResponse:
    return await _model_ready(serving, registry, settings, name, None)


@router.get("/models/{name}/versions/{version}/ready", responses=READY_RESPONSES, summary="Version readiness")
async def version_ready(
    name: ModelName, version: VersionText, serving: ServingDep, registry: RegistryDep, settings: SettingsDep
) -> JSONResponse:
    return await _model_ready(serving, registry, settings, name, version)


async def _model_ready(
    serving: Serving, registry: AsyncRegistry, settings: Settings, name: str, version: str | None
) -> JSONResponse:
    """Ready means what infer does with the same path: a loaded version, or one it would load on
    first use (pinned versions), is ready; one that cannot be served now is a 503 saying why."""
    view = serving.view()
    info, loaded = await _target(view, registry, name, version)
    if info is None:
        model = view.models.get(name)
        reason = model.last_error if model is not None and model.last_error else "loading"
        raise UnavailableError(f"model {name!r} is not loaded yet: {reason}", headers={"Retry-After": "2"})
    if not loaded:
        problem = _why_not_loadable(view, settings, name, info.version)
        if problem is not None:
            raise UnavailableError(problem, headers={"Retry-After": "2"})
    return JSONResponse({"name": name, "ready": True})


def _why_not_loadable(view: HostView, settings: Settings, name: str, version: int) -> str | None:
    """Why a request for ``name`` v``version`` (not loaded) would be refused now; None if it would be
    loaded and served."""
    if settings.pinned_cache_size == 0:
        return f"{name} v{version} is not loaded, and loading versions on demand is off (SERVE_PINNED_CACHE_SIZE=0)"
    return view.recent_failure(name, version, settings.load_retry_s)


INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header (length in Inference-Header-Content-Length) followed by tensor bytes",
            },
        },
    }
}


@router.post(
    "/models/{name}/infer",
    response_model=InferenceResponse,
    responses=ERRORS,
    openapi_extra=INFER_BODY,
    summary="Inference",
)
async def infer(name: ModelName, request: Request) -> Response:
    return await _infer(name, None, request)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    responses=ERRORS,
    openapi_extra=INFER_BODY,
    summary="Inference on a given version",
)
async def infer_version(name: ModelName, version: VersionText, request: Request) -> Response:
    return await _infer(name, version, request)


async def _infer(name: str, version: str | None, request: Request) -> Response:
    # The hot path reads app.state directly: FastAPI dependencies cost more than this CNN's inference.
    state = request.app.state
    serving: Serving = state.serving
    settings: Settings = state.settings
    executor: Executor = state.decode_executor
    loop = asyncio.get_running_loop()
    body = decode_content(
        await request.body(), request.headers.get("content-encoding"), limit=settings.limits.max_request_bytes
    )
    header_length = request.headers.get(HEADER_LENGTH)
    digits = header_length is not None and header_length.isascii() and header_length.isdigit()
    json_size = int(header_length) if digits and header_length else len(body)
    if json_size > INLINE_JSON_BYTES:  # a JSON tensor: parsing it would stall every other request
        inference, binary = await loop.run_in_executor(executor, parse_request, body, header_length)
    else:
        inference, binary = parse_request(body, header_length)
    if len(inference.inputs) != 1:
        raise BadRequestError(f"expected exactly one input tensor, got {len(inference.inputs)}")
    (tensor,) = inference.inputs
    raw, end = take_binary(tensor, binary, 0)
    if end != len(binary):
        raise BadRequestError(
            f"{len(binary) - end} bytes follow the binary data of input {tensor.name!r}: "
            "the body must end where its tensors do"
        )
    limit = settings.limits.max_images_per_request

    async def prepare(info: VersionInfo) -> np.ndarray:
        """The request's images as the version that will serve it takes them (called again if the
        served version changes in between and takes other images)."""
        contract = info.contract
        if tensor.name != contract.input.name:
            raise BadRequestError(f"unknown input {tensor.name!r}: this model's input is {contract.input.name!r}")
        if tensor.datatype == "UINT8":
            expected = [contract.input.height, contract.input.width, 3]
            if len(tensor.shape) != 4 or tensor.shape[1:] != expected or tensor.shape[0] < 1:
                raise BadRequestError(
                    f"input {tensor.name!r} has shape {tensor.shape}; UINT8 input must be [N, {expected[0]}, "
                    f"{expected[1]}, 3] (or send BYTES [N] of encoded images)"
                )
            if tensor.shape[0] > limit:
                raise PayloadTooLargeError(f"{tensor.shape[0]} images in one request, the limit is {limit}")
            # Binary data is a zero-copy view; JSON data means converting nested lists: off the loop.
            images = (
                decode_numeric(tensor, raw)
                if raw is not None
                else await loop.run_in_executor(executor, decode_numeric, tensor, None)
            )
            return np.ascontiguousarray(images)
        if tensor.datatype == "BYTES":
            if len(tensor.shape) != 1 or tensor.shape[0] < 1:
                raise BadRequestError(f"input {tensor.name!r} has shape {tensor.shape}; BYTES input must be [N]")
            if tensor.shape[0] > limit:
                raise PayloadTooLargeError(f"{tensor.shape[0]} images in one request, the limit is {limit}")
            return await decode_all(
                decode_bytes(tensor, raw),
                contract,
                settings.limits,
                executor,
                inline_pixels=settings.decode_inline_pixels,
                budget=state.decode_budget,
            )
        raise BadRequestError(
            f"input {tensor.name!r} has datatype {tensor.datatype}; expected UINT8 (pixels) or BYTES (image files)"
        )

    info, probabilities = await serving.infer(name, prepare, version=_version_number(version), scope=request.scope)
    outputs, binaries = _outputs(inference, info, probabilities)
    response = InferenceResponse(model_name=name, model_version=str(info.version), id=inference.id, outputs=outputs)
    body, headers, media_type = render(response, binaries)
    return Response(body, headers=headers, media_type=media_type)


def _outputs(
    inference: InferenceRequest, info: VersionInfo, probabilities: np.ndarray
) -> tuple[list[ResponseOutput], list[bytes]]:
    contract = info.contract
    all_binary = bool(inference.parameters.get("binary_data_output", False))
    requested = inference.outputs or [RequestOutput(name=contract.output.name)]
    outputs: list[ResponseOutput] = []
    binaries: list[bytes] = []
    n, k = probabilities.shape
    for out in requested:
        if out.name != contract.output.name:
            raise BadRequestError(f"unknown output {out.name!r}: this model's output is {contract.output.name!r}")
        binary = bool(out.parameters.get("binary_data", all_binary))
        classes = out.parameters.get("classification")
        if classes is not None:
            if not isinstance(classes, int) or classes < 1:
                raise BadRequestError("classification must be a positive integer")
            strings = classification_strings(probabilities, contract.labels, classes)
            shape = [n, len(strings[0])]
            if binary:
                blob = encode_bytes([s.encode() for row in strings for s in row])
                outputs.append(
                    ResponseOutput(
                        name=out.name, shape=shape, datatype="BYTES", parameters={"binary_data_size": len(blob)}
                    )
                )
                binaries.append(blob)
            else:
                outputs.append(
                    ResponseOutput(
                        name=out.name, shape=shape, datatype="BYTES", data=[s for row in strings for s in row]
                    )
                )
            continue
        values = np.ascontiguousarray(probabilities, dtype="<f4")
        if binary:
            blob = values.tobytes()
            outputs.append(
                ResponseOutput(name=out.name, shape=[n, k], datatype="FP32", parameters={"binary_data_size": len(blob)})
            )
            binaries.append(blob)
        else:
            outputs.append(ResponseOutput(name=out.name, shape=[n, k], datatype="FP32", data=values.ravel().tolist()))
    return outputs, binaries
