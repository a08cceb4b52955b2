"""From an HTTP request to predictions: read uploads, decode off the loop, batch, rank."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.errors import BadRequestError, PayloadTooLargeError, UnavailableError, UnsupportedMediaError
from app.limits import DecodeBudget
from app.serving import Serving
from app.settings import LimitSettings, Settings
from core.imaging import ImageTooLargeError, decoded_pixels, open_image, source_pixels, to_array
from registry import ModelContract, VersionInfo

IMAGE_FIELDS = ("images", "image")
DECODE_CHUNKS = 2
SMALL_LABEL_SET = 64  # up to this many labels, `rank` sorts in plain Python


async def read_uploads(request: Request, limits: LimitSettings, fields: tuple[str, ...] = IMAGE_FIELDS) -> list[bytes]:
    """Image bytes from a multipart form (files in ``fields``) or a raw image body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=limits.max_images_per_request, max_fields=100)
        except HTTPException as exc:
            if str(exc.detail).startswith("Too many files"):
                raise PayloadTooLargeError(
                    f"more than {limits.max_images_per_request} files in one request, "
                    f"the limit is {limits.max_images_per_request}"
                ) from None
            raise BadRequestError(f"malformed form: {exc.detail}") from None
        try:
            uploads = [item for name in fields for item in form.getlist(name)]
            files = [u for u in uploads if isinstance(u, UploadFile)]
            if not files:
                names = " or ".join(repr(f) for f in fields)
                hint = " (got a text field, not a file)" if uploads else ""
                raise BadRequestError(f"no image file in the form: send one or more files in the field {names}{hint}")
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


async def decode_all(
    blobs: list[bytes],
    contract: ModelContract,
    limits: LimitSettings,
    executor: Executor,
    *,
    inline_pixels: int = 0,
    budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Decode every image, [N, H, W, 3] uint8: in the thread pool (PIL releases the GIL while it
    decodes), except a request whose images hold at most ``inline_pixels`` together (as stored,
    before any JPEG scaling), decoded right here: when the work is small, or when this process is
    one of a host's front ends and has about one core of its own, the hand-off to a thread and
    back costs more than it gains.

    Headers are read first: an image that would decode to more than `max_decoded_pixels`, or a
    request whose images together pass `max_request_pixels`, is refused (413) before any pixel is
    decoded; the pixels then decoded are taken from the server-wide ``budget`` (503 when spent)."""
    loop = asyncio.get_running_loop()
    size = (contract.preprocessing.size[0], contract.preprocessing.size[1])
    method = contract.preprocessing.resize_method

    def open_one(index: int | None, data: bytes) -> Image.Image:
        try:
            return open_image(
                data, max_pixels=limits.max_image_pixels, size=size, max_decoded_pixels=limits.max_decoded_pixels
            )
        except ValueError as exc:  # say which upload is broken
            if index is None:
                raise
            raise type(exc)(f"image {index}: {exc}") from None

    # Decoding on this loop takes nothing from the budget: it cannot pile up (it is done before
    # anything else runs here), and the budget would count every small request towards a heap trim.
    if len(blobs) == 1:  # the common case: no gather
        img = open_one(None, blobs[0])  # the header only
        inline = source_pixels(img) <= inline_pixels
        with _decoding(None if inline else budget, decoded_pixels(img), [img], limits):
            if inline:
                return to_array(img, size=size, resize_method=method)[np.newaxis]
            array = await loop.run_in_executor(
                executor, functools.partial(to_array, img, size=size, resize_method=method)
            )
        return array[np.newaxis]

    # Headers only: tens of microseconds an image, and Python holding the GIL, so a thread would
    # not take the work off this loop anyway.
    images: list[Image.Image] = []
    try:
        for index, data in enumerate(blobs):
            images.append(open_one(index, data))
    except BaseException:
        _close(images)
        raise

    def decode_chunk(start: int, stop: int) -> list[np.ndarray]:
        arrays = []
        for index in range(start, stop):
            try:
                arrays.append(to_array(images[index], size=size, resize_method=method))
            except ValueError as exc:
                _close(images[index + 1 : stop])
                raise type(exc)(f"image {index}: {exc}") from None
        return arrays

    inline = sum(source_pixels(img) for img in images) <= inline_pixels
    with _decoding(None if inline else budget, sum(decoded_pixels(img) for img in images), images, limits):
        if inline:
            return np.stack(decode_chunk(0, len(images)))
        # A few chunks, not one job per image: enough to use every core, few thread hand-offs.
        step = -(-len(images) // DECODE_CHUNKS)
        chunks = await asyncio.gather(
            *(
                loop.run_in_executor(executor, decode_chunk, i, min(i + step, len(images)))
                for i in range(0, len(images), step)
            )
        )
    return np.stack([array for chunk in chunks for array in chunk])


@contextmanager
def _decoding(
    budget: DecodeBudget | None, pixels: int, images: list[Image.Image], limits: LimitSettings
) -> Iterator[None]:
    """Check a request's pixels against its limit and take them from the server's budget meanwhile."""
    if pixels > limits.max_request_pixels:
        _close(images)
        raise ImageTooLargeError(
            f"the images of this request decode to {pixels} pixels together, the limit is {limits.max_request_pixels}"
        )
    if budget is None:
        yield
        return
    try:
        budget.take(pixels)
    except UnavailableError:
        _close(images)
        raise
    try:
        yield
    finally:
        budget.give_back(pixels)


def _close(images: list[Image.Image]) -> None:
    for img in images:
        img.close()


async def classify(
    serving: Serving,
    name: str,
    blobs: list[bytes],
    *,
    settings: Settings,
    executor: Executor,
    version: int | None = None,
    alias: str | None = None,
    budget: DecodeBudget | None = None,
    scope: MutableMapping[str, Any] | None = None,
) -> tuple[VersionInfo, np.ndarray]:
    """Decode ``blobs`` for the version that will serve them and run them through its batcher.
    With ``scope`` (the request's), a client that hangs up while its rows wait has them dropped."""

    async def prepare(info: VersionInfo) -> np.ndarray:
        return await decode_all(
            blobs,
            info.contract,
            settings.limits,
            executor,
            inline_pixels=settings.decode_inline_pixels,
            budget=budget,
        )

    return await serving.infer(name, prepare, version=version, alias=alias, scope=scope)


def rank(probabilities: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    """Per image: the best label and score, and the top k; plain dicts shaped like `Prediction`.

    Ties keep the lower label index first. For a few labels, a Python sort per row is several
    times cheaper than NumPy's per-call overhead (argsort, take_along_axis); past that, NumPy.
    """
    rows = probabilities.tolist()
    if len(labels) <= SMALL_LABEL_SET:
        columns = range(len(labels))
        orders = [sorted(columns, key=row.__getitem__, reverse=True)[:k] for row in rows]
    else:
        orders = np.argsort(-probabilities, axis=1, kind="stable")[:, :k].tolist()
    results = []
    for row, order in zip(rows, orders, strict=True):
        top = [{"label": labels[i], "score": row[i]} for i in order]
        results.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
    return results


def json_response(content: Any) -> Response:
    """Serialize once; the route's response_model still documents the shape in OpenAPI."""
    return Response(json.dumps(content, separators=(",", ":")).encode(), media_type="application/json")
