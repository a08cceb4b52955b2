"""Open Inference Protocol (v2) REST codec: JSON tensors and the binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes; the header's
length is given by `Inference-Header-Content-Length`, and each binary input says its
size in `parameters.binary_data_size`, in input order. Binary data is little-endian,
row-major; a BYTES element is a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from app.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaError

HEADER_LENGTH = "inference-header-content-length"

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


# A dimension past this is no image batch a client can mean; refusing it keeps products exact.
MAX_DIMENSION = 2**31 - 1
Dimension = Annotated[int, Field(ge=0, le=MAX_DIMENSION)]


class RequestInput(BaseModel):
    name: str
    shape: list[Dimension] = Field(max_length=8)
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1, description="one tensor: UINT8 [N, H, W, 3] or BYTES [N]")
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """Split the body into the JSON header and the binary tail; validate the header."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequestError(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 < length <= len(body):
            raise BadRequestError(f"Inference-Header-Content-Length is {length} but the body has {len(body)} bytes")
        header, binary = body[:length], body[length:]
    else:
        header, binary = body, b""
    if not header:
        raise BadRequestError("empty request body: expected an inference request JSON object")
    try:
        raw = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"request header is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("request header is nested too deeply") from None
    try:
        request = InferenceRequest.model_validate(raw)
    except RecursionError:
        raise BadRequestError("request header is nested too deeply") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise BadRequestError(f"malformed inference request: {where}: {err['msg']}") from None
    return request, binary


def take_binary(tensor: RequestInput, binary: bytes, offset: int) -> tuple[bytes | None, int]:
    """The tensor's slice of the binary tail (or None if its data is JSON), and the next offset."""
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        return None, offset
    if not isinstance(size, int) or size < 0:
        raise BadRequestError(f"input {tensor.name!r}: binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise BadRequestError(
            f"input {tensor.name!r}: binary_data_size {size} runs past the end of the body "
            f"({len(binary) - offset} bytes left)"
        )
    return binary[offset : offset + size], offset + size


def decode_content(body: bytes, encoding: str | None, *, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip or deflate, as tritonclient compresses requests),
    at most ``limit`` bytes once inflated: a compression bomb is refused, not expanded."""
    coding = (encoding or "identity").strip().lower()
    if coding in ("identity", ""):
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaError(f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none")
    # gzip framing; deflate as HTTP means zlib framing, though some clients send raw deflate.
    attempts = [31] if coding != "deflate" else [15, -15]
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise PayloadTooLargeError(f"the request body inflates past the limit of {limit} bytes")
        if not inflater.eof or inflater.unused_data:
            raise BadRequestError(f"the {coding} request body is truncated or has trailing bytes")
        return out
    raise BadRequestError(f"the request body is not valid {coding} data")


def element_count(tensor: RequestInput) -> int:
    return math.prod(tensor.shape)  # Python integers: no overflow, whatever the dimensions


def decode_numeric(tensor: RequestInput, raw: bytes | None) -> np.ndarray:
    dtype = DTYPES[tensor.datatype]
    count = element_count(tensor)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise BadRequestError(
                f"input {tensor.name!r}: shape {tensor.shape} of {tensor.datatype} needs "
                f"{count * dtype.itemsize} bytes, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)
    if tensor.data is None:
        raise BadRequestError(f"input {tensor.name!r} has neither data nor binary_data_size")
    try:
        values = np.asarray(tensor.data)
    except (ValueError, RecursionError):
        raise BadRequestError(f"input {tensor.name!r}: data is ragged; give a flat or regular nested list") from None
    if values.size != count:
        raise BadRequestError(f"input {tensor.name!r}: shape {tensor.shape} needs {count} values, got {values.size}")
    if values.dtype.kind not in "biuf":
        raise BadRequestError(f"input {tensor.name!r}: data must be numbers for {tensor.datatype}")
    if dtype.kind in "iu" and values.dtype.kind == "f" and values.size:
        if not np.isfinite(values).all():
            raise BadRequestError(f"input {tensor.name!r}: NaN or infinity in {tensor.datatype} data")
        if not (values == np.round(values)).all():
            raise BadRequestError(f"input {tensor.name!r}: {tensor.datatype} data must be whole numbers")
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise BadRequestError(f"input {tensor.name!r}: values out of range for {tensor.datatype}")
    return values.astype(dtype).reshape(tensor.shape)


def decode_bytes(tensor: RequestInput, raw: bytes | None) -> list[bytes]:
    """BYTES elements: length-prefixed in binary; base64 strings in JSON (images are not text)."""
    count = element_count(tensor)
    items: list[bytes] = []
    if raw is not None:
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BadRequestError(f"input {tensor.name!r}: truncated BYTES element length")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise BadRequestError(f"input {tensor.name!r}: BYTES element runs past its binary data")
            items.append(raw[offset : offset + length])
            offset += length
    else:
        data = tensor.data
        if not isinstance(data, list):
            raise BadRequestError(f"input {tensor.name!r}: BYTES data must be a list of base64 strings")
        flat = _flatten(data)
        for element in flat:
            if not isinstance(element, str):
                raise BadRequestError(f"input {tensor.name!r}: BYTES elements must be base64 strings")
            try:
                items.append(base64.b64decode(element, validate=True))
            except ValueError:
                raise BadRequestError(f"input {tensor.name!r}: an element is not valid base64") from None
    if len(items) != count:
        raise BadRequestError(f"input {tensor.name!r}: shape {tensor.shape} needs {count} elements, got {len(items)}")
    return items


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists, flattened in order, without recursion (a client picks the depth)."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def encode_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def classification_strings(probabilities: np.ndarray, labels: list[str], k: int) -> list[list[str]]:
    """The classification extension: the top k of each row as "score:index:label"."""
    k = max(1, min(k, probabilities.shape[1]))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[f"{row[i]:f}:{i}:{labels[i]}" for i in idx] for row, idx in zip(probabilities, order, strict=True)]


def render(response: InferenceResponse, binaries: list[bytes]) -> tuple[bytes, dict[str, str], str]:
    """Body, extra headers and media type; binary outputs follow the JSON header."""
    header = json.dumps(response.model_dump(exclude_none=True), separators=(",", ":")).encode()
    if not binaries:
        return header, {}, "application/json"
    return (
        header + b"".join(binaries),
        {"Inference-Header-Content-Length": str(len(header))},
        "application/octet-stream",
    )
