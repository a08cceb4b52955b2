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
from app.api.deps import ManagerDep
from app.api.params import ModelName, VersionText
from app.errors import BadRequestError, NotFoundError, PayloadTooLargeError, UnavailableError
from app.metrics import Metrics
from app.models import LoadedVersion, ModelManager
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
from app.service import decode_all, run_batched
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


@router.get("/health/live", summary="Server liveness")
@router.head("/health/live", include_in_schema=False)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness", responses={503: {"description": "not ready"}})
@router.head("/health/ready", include_in_schema=False)
async def ready(manager: ManagerDep) -> JSONResponse:
    return JSONResponse({"ready": manager.ready}, status_code=200 if manager.ready else 503)


async def _target(manager: ModelManager, name: str, version: str | None) -> tuple[VersionInfo | None, bool]:
    """The version a v2 route addresses and whether it is loaded here.

    Its info comes from memory when it is loaded, else from the registry: describing a
    version never loads it. None for a served model whose alias target is not loaded yet.
    """
    number = _version_number(version)
    if number is None:
        state = manager.served_state(name)
        return (state.current.info, True) if state.current else (None, False)
    for _, loaded in manager.loaded_versions():
        if loaded.name == name and loaded.version == number:
            return loaded.info, True
    info: VersionInfo = await manager.call(manager.registry.get_version, name, number)  # 404 when unknown
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
async def model_metadata(name: ModelName, manager: ManagerDep) -> ModelMetadata:
    return await _model_metadata(manager, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    response_model_exclude_none=True,
    responses=ERRORS,
    summary="Version metadata",
)
async def version_metadata(name: ModelName, version: VersionText, manager: ManagerDep) -> ModelMetadata:
    return await _model_metadata(manager, name, version)


async def _model_metadata(manager: ModelManager, name: str, version: str | None) -> ModelMetadata:
    info, _ = await _target(manager, name, version)
    if info is None:
        raise UnavailableError(f"model {name!r} is not loaded yet", headers={"Retry-After": "2"})
    versions = await manager.call(manager.registry.list_versions, name)
    return _metadata(info, [str(v.version) for v in versions if v.status == "ready"])


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "ready: an infer request for it is answered (a version not loaded yet is loaded by it)"},
    404: {"model": ErrorBody, "description": "unknown or archived model or version"},
    503: {"model": ErrorBody, "description": "not ready: not loaded yet, or failed to load (see Retry-After)"},
}


@router.get("/models/{name}/ready", responses=READY_RESPONSES, summary="Model readiness")
async def model_ready(name: ModelName, manager: ManagerDep) -> JSONResponse:
    return await _model_ready(manager, name, None)


@router.get("/models/{name}/versions/{version}/ready", responses=READY_RESPONSES, summary="Version readiness")
async def version_ready(name: ModelName, version: VersionText, manager: ManagerDep) -> JSONResponse:
    return await _model_ready(manager, name, version)


async def _model_ready(manager: ModelManager, name: str, version: str | None) -> JSONResponse:
    """Ready means what infer does with the same path: a loaded version, or one it would load on
    first use (pinned versions), is ready; one that cannot be served now is a 503 saying why."""
    info, loaded = await _target(manager, name, version)
    if info is None:
        state = manager.states.get(name)
        reason = state.last_error if state is not None and state.last_error else "loading"
        raise UnavailableError(f"model {name!r} is not loaded yet: {reason}", headers={"Retry-After": "2"})
    if not loaded:
        problem = manager.why_not_loadable(name, info.version)
        if problem is not None:
            raise UnavailableError(problem, headers={"Retry-After": "2"})
    return JSONResponse({"name": name, "ready": True})


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
    manager: ModelManager = state.manager
    settings: Settings = state.settings
    metrics: Metrics = state.metrics
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
    async with manager.lease(name, version=_version_number(version)) as loaded:
        contract = loaded.info.contract
        if tensor.name != contract.input.name:
            raise BadRequestError(f"unknown input {tensor.name!r}: this model's input is {contract.input.name!r}")
        limit = settings.limits.max_images_per_request
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
        elif tensor.datatype == "BYTES":
            if len(tensor.shape) != 1 or tensor.shape[0] < 1:
                raise BadRequestError(f"input {tensor.name!r} has shape {tensor.shape}; BYTES input must be [N]")
            if tensor.shape[0] > limit:
                raise PayloadTooLargeError(f"{tensor.shape[0]} images in one request, the limit is {limit}")
            images = await decode_all(
                decode_bytes(tensor, raw),
                contract,
                settings.limits,
                executor,
                inline_pixels=settings.decode_inline_pixels,
                budget=state.decode_budget,
            )
        else:
            raise BadRequestError(
                f"input {tensor.name!r} has datatype {tensor.datatype}; expected UINT8 (pixels) or BYTES (image files)"
            )
        probabilities = await run_batched(loaded, np.ascontiguousarray(images), metrics)
    outputs, binaries = _outputs(inference, loaded, probabilities)
    response = InferenceResponse(model_name=name, model_version=str(loaded.version), id=inference.id, outputs=outputs)
    body, headers, media_type = render(response, binaries)
    return Response(body, headers=headers, media_type=media_type)


def _outputs(
    inference: InferenceRequest, loaded: LoadedVersion, probabilities: np.ndarray
) -> tuple[list[ResponseOutput], list[bytes]]:
    contract = loaded.info.contract
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
