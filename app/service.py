"""From an HTTP request to predictions: read uploads, decode off the loop, batch, rank."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request

from app.batcher import BatcherClosedError, InferenceError, QueueFullError
from app.errors import ApiError, BadRequestError, PayloadTooLargeError, UnavailableError, UnsupportedMediaError
from app.imaging import decode_image
from app.metrics import Metrics
from app.models import LoadedVersion, ModelManager
from app.schemas import LabelScore, Prediction
from app.settings import LimitSettings, Settings
from registry import ModelContract

IMAGE_FIELDS = ("images", "image")


async def read_uploads(request: Request, limits: LimitSettings, fields: tuple[str, ...] = IMAGE_FIELDS) -> list[bytes]:
    """Image bytes from a multipart form (files in ``fields``) or a raw image body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=limits.max_images_per_request + 1, max_fields=100)
        try:
            uploads = [item for name in fields for item in form.getlist(name)]
            files = [u for u in uploads if isinstance(u, UploadFile)]
            if not files:
                names = " or ".join(repr(f) for f in fields)
                hint = " (got a text field, not a file)" if uploads else ""
                raise BadRequestError(f"no image file in the form: send one or more files in the field {names}{hint}")
            _check_count(len(files), limits)
            return [await f.read() for f in files]
        finally:
            await form.close()
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        body = await request.body()
        if not body:
            raise BadRequestError("empty image: the request body has no bytes")
        return [body]
    if not content_type:
        raise BadRequestError("no image: send multipart/form-data with a file field 'images', or an image/* body")
    raise UnsupportedMediaError(
        f"unsupported content type {content_type!r}: send multipart/form-data or an image/* body"
    )


def _check_count(count: int, limits: LimitSettings) -> None:
    if count > limits.max_images_per_request:
        raise PayloadTooLargeError(f"{count} images in one request, the limit is {limits.max_images_per_request}")


async def decode_all(
    blobs: list[bytes], contract: ModelContract, limits: LimitSettings, executor: Executor
) -> np.ndarray:
    """Decode every image in the thread pool (PIL releases the GIL); [N, H, W, 3] uint8."""
    loop = asyncio.get_running_loop()
    size = tuple(contract.preprocessing.size)
    method = contract.preprocessing.resize_method

    def decode(index: int, data: bytes) -> np.ndarray:
        try:
            return decode_image(data, size=(size[0], size[1]), resize_method=method, max_pixels=limits.max_image_pixels)
        except ValueError as exc:
            if len(blobs) > 1:  # say which upload is broken
                raise type(exc)(f"image {index}: {exc}") from None
            raise

    arrays = await asyncio.gather(*(loop.run_in_executor(executor, decode, i, b) for i, b in enumerate(blobs)))
    return arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)


async def run_batched(loaded: LoadedVersion, images: np.ndarray, metrics: Metrics) -> np.ndarray:
    try:
        probabilities = await loaded.predict(images)
    except QueueFullError:
        metrics.rejected.labels(loaded.name).inc()
        raise UnavailableError(
            f"server overloaded: the queue for {loaded.name} v{loaded.version} is full, retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    except BatcherClosedError:
        raise UnavailableError("model version is shutting down, retry", headers={"Retry-After": "1"}) from None
    except InferenceError as exc:
        raise ApiError(f"inference failed on {loaded.name} v{loaded.version}: {exc}") from None
    metrics.images.labels(loaded.name).inc(len(images))
    return probabilities


async def classify(
    manager: ModelManager,
    name: str,
    blobs: list[bytes],
    *,
    settings: Settings,
    metrics: Metrics,
    executor: Executor,
    version: int | None = None,
    alias: str | None = None,
) -> tuple[LoadedVersion, np.ndarray]:
    """Decode ``blobs`` for the version that will serve them and run them through its batcher."""
    async with manager.lease(name, version=version, alias=alias) as loaded:
        images = await decode_all(blobs, loaded.info.contract, settings.limits, executor)
        return loaded, await run_batched(loaded, images, metrics)


def rank(probabilities: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    k = min(k, len(labels))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    results = []
    for row, indices in zip(probabilities, order, strict=True):
        top = [LabelScore(label=labels[i], score=float(row[i])) for i in indices]
        results.append(Prediction(label=top[0].label, score=top[0].score, top_k=top))
    return results
