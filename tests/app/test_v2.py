"""The Open Inference Protocol v2: every route, JSON and binary encodings, both input kinds, errors."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.main import create_app
from tests.app.conftest import running, settings_for
from tests.conftest import Backend
from tests.images import COLORS, solid
from tests.onnx_models import color_classifier, color_metadata


def pixels(*colors: str, size: int = 16) -> np.ndarray:
    return np.stack([np.full((size, size, 3), COLORS[c], dtype=np.uint8) for c in colors])


def binary_request(header: dict, *blobs: bytes) -> dict:
    head = json.dumps(header).encode()
    return {
        "content": head + b"".join(blobs),
        "headers": {"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"},
    }


def split_binary(response: httpx.Response) -> tuple[dict, bytes]:
    length = int(response.headers["inference-header-content-length"])
    return json.loads(response.content[:length]), response.content[length:]


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


async def test_server_and_health_routes(client: httpx.AsyncClient) -> None:
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "imgserve"
    assert set(meta["extensions"]) >= {"binary_tensor_data", "classification"}
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2/models/colors/ready")).json() == {"name": "colors", "ready": True}
    assert (await client.get("/v2/models/colors/versions/1/ready")).status_code == 200
    # Not loaded, but infer serves it (loading it on first use): ready, as infer's answer would say.
    on_demand = await client.get("/v2/models/colors/versions/2/ready")
    assert (on_demand.status_code, on_demand.json()) == (200, {"name": "colors", "ready": True})
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert (await client.head(path)).status_code == 200, path


async def test_version_readiness_matches_what_infer_does(served_backend: Backend) -> None:
    with served_backend.registry() as reg:
        reg.remove_alias(name="colors", alias="staging")
        reg.archive(name="colors", version=2)
    async with running(create_app(settings_for(served_backend, pinned_cache_size=0))) as client:
        r = await client.get("/v2/models/colors/versions/2/ready")
        assert (r.status_code, r.json()) == (404, {"error": "colors v2 is archived"})
        r = await client.get("/v2/models/colors/versions/7/ready")
        assert r.status_code == 404 and "has no version 7" in r.json()["error"]
    async with running(create_app(settings_for(served_backend, pinned_cache_size=0))) as client:
        with served_backend.registry() as reg:
            path = color_classifier(Path(reg.store.root).parent / "v3.onnx", gain=4.0)
            reg.register(name="colors", onnx_path=path, metadata=color_metadata())
        r = await client.get("/v2/models/colors/versions/3/ready")
        assert r.status_code == 503 and list(r.json()) == ["error"]  # the protocol's error shape
        assert "on demand is off" in r.json()["error"]
        assert r.headers["retry-after"] == "2"
        infer = await client.post(
            "/v2/models/colors/versions/3/infer", json={"inputs": [_uint8([1, 16, 16, 3], data=[0] * 768)]}
        )
        assert infer.status_code == 400  # infer refuses it too


async def test_model_metadata(client: httpx.AsyncClient) -> None:
    meta = (await client.get("/v2/models/colors")).json()
    assert meta == {
        "name": "colors",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": [-1, 16, 16, 3],
                "parameters": {
                    "alternative": {"datatype": "BYTES", "shape": [-1], "content": "encoded image files"},
                    "image_formats": ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"],
                },
            }
        ],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert (await client.get("/v2/models/colors/versions/2")).json()["name"] == "colors"
    # Describing a version, or asking whether it is ready, reads the registry; it loads nothing.
    assert (await client.get("/v2/models/colors/versions/2/ready")).status_code == 200
    loaded = (await client.get("/v1/models/colors")).json()["loaded"]
    assert [v["version"] for v in loaded] == [1]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/v2/models/nosuch", "model 'nosuch' is not served"),
        ("/v2/models/colors/versions/9", "has no version 9"),
        ("/v2/models/colors/versions/x/ready", "versions are positive integers"),
        ("/v2/models/nosuch/ready", "not served"),
    ],
)
async def test_unknown_model_or_version_is_404(client: httpx.AsyncClient, url: str, message: str) -> None:
    r = await client.get(url)
    assert r.status_code == 404
    assert r.json() == {"error": pytest.approx(r.json()["error"])}
    assert message in r.json()["error"]


async def test_json_uint8_flat_and_nested(client: httpx.AsyncClient) -> None:
    x = pixels("red", "blue")
    for data in (x.ravel().tolist(), x.tolist()):
        r = await client.post(
            "/v2/models/colors/infer",
            json={
                "id": "req-7",
                "inputs": [{"name": "image", "shape": [2, 16, 16, 3], "datatype": "UINT8", "data": data}],
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("colors", "1", "req-7")
        (out,) = body["outputs"]
        assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [2, 3])
        probs = np.array(out["data"]).reshape(2, 3)
        assert probs.argmax(1).tolist() == [0, 2]
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


async def test_large_json_tensor(client: httpx.AsyncClient) -> None:
    colors = ["red", "green", "blue"] * 14  # 42 images: a JSON body well past the inline-parsing size
    x = pixels(*colors)
    body = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "UINT8", "data": x.tolist()}]}
    assert len(json.dumps(body)) > 64 * 1024
    r = await client.post("/v2/models/colors/infer", json=body)
    assert r.status_code == 200, r.text
    probs = np.array(r.json()["outputs"][0]["data"]).reshape(len(colors), 3)
    assert probs.argmax(1).tolist() == [0, 1, 2] * 14


async def test_binary_uint8_in_and_out(client: httpx.AsyncClient) -> None:
    x = pixels("green", "red", "blue")
    r = await client.post(
        "/v2/models/colors/infer",
        **binary_request(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [3, 16, 16, 3],
                        "datatype": "UINT8",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "parameters": {"binary_data_output": True},
            },
            x.tobytes(),
        ),
    )
    assert r.status_code == 200, r.text
    header, tail = split_binary(r)
    (out,) = header["outputs"]
    assert out["parameters"]["binary_data_size"] == len(tail) == 3 * 3 * 4
    assert np.frombuffer(tail, "<f4").reshape(3, 3).argmax(1).tolist() == [1, 0, 2]


async def test_bytes_input_binary_and_json(client: httpx.AsyncClient) -> None:
    images = [solid("blue"), solid("red", (40, 40), fmt="JPEG")]
    blob = length_prefixed(*images)
    r = await client.post(
        "/v2/models/colors/infer",
        **binary_request(
            {
                "inputs": [
                    {"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
                ],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
            },
            blob,
        ),
    )
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert (out["datatype"], out["shape"]) == ("BYTES", [2, 1])
    assert [s.split(":")[1:] for s in out["data"]] == [["2", "blue"], ["0", "red"]]

    r = await client.post(
        "/v2/models/colors/infer",
        json={
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(solid("green")).decode()],
                }
            ],
        },
    )
    assert np.argmax(r.json()["outputs"][0]["data"]) == 1


async def test_classification_as_binary(client: httpx.AsyncClient) -> None:
    x = pixels("red")
    r = await client.post(
        "/v2/models/colors/infer",
        **binary_request(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 16, 16, 3],
                        "datatype": "UINT8",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 3, "binary_data": True}}],
            },
            x.tobytes(),
        ),
    )
    header, tail = split_binary(r)
    assert header["outputs"][0]["shape"] == [1, 3]
    strings, offset = [], 0
    while offset < len(tail):
        (n,) = struct.unpack_from("<I", tail, offset)
        strings.append(tail[offset + 4 : offset + 4 + n].decode())
        offset += 4 + n
    assert [s.split(":", 1)[1] for s in strings] == ["0:red", "1:green", "2:blue"]
    assert float(strings[0].split(":")[0]) > 0.9


async def test_version_route_serves_that_version(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v2/models/colors/versions/2/infer",
        json={
            "inputs": [
                {"name": "image", "shape": [1, 16, 16, 3], "datatype": "UINT8", "data": pixels("red").ravel().tolist()}
            ],
        },
    )
    assert r.json()["model_version"] == "2"
    assert np.argmax(r.json()["outputs"][0]["data"]) == 1  # v2 maps red to "green"


def _uint8(shape: list[int], **extra) -> dict:
    return {"name": "image", "shape": shape, "datatype": "UINT8", **extra}


V2_ERRORS = [
    ("not json", {"content": b"{oops", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("no inputs", {"json": {"inputs": []}}, 400, "malformed inference request: inputs"),
    (
        "two inputs",
        {"json": {"inputs": [_uint8([1, 16, 16, 3], data=[0] * 768)] * 2}},
        400,
        "exactly one input",
    ),
    (
        "trailing bytes",
        binary_request({"inputs": [_uint8([1, 16, 16, 3], parameters={"binary_data_size": 768})]}, b"\x00" * 770),
        400,
        "2 bytes follow the binary data",
    ),
    (
        "nan",
        {
            "content": json.dumps({"inputs": [_uint8([1, 16, 16, 3], data=[float("nan")] * 768)]}).encode(),
            "headers": {"content-type": "application/json"},
        },
        400,
        "NaN or infinity",
    ),
    ("fraction", {"json": {"inputs": [_uint8([1, 16, 16, 3], data=[0.5] * 768)]}}, 400, "whole numbers"),
    ("dimension 2**64", {"json": {"inputs": [_uint8([2**64, 16, 16, 3], data=[0])]}}, 400, "shape.0"),
    ("negative dimension", {"json": {"inputs": [_uint8([-1, 16, 16, 3], data=[0])]}}, 400, "shape.0"),
    (
        "unicode digit length",
        {"content": b"{}", "headers": {"Inference-Header-Content-Length": "\u00b2".encode()}},
        400,
        "must be an integer",
    ),
    (
        "deeply nested",
        {"content": b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", "headers": {"content-type": "application/json"}},
        400,
        "nested too deeply",
    ),
    (
        "nested data",
        {
            "content": b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": '
            + b"[" * 900
            + b"]" * 900
            + b"}]}",
            "headers": {"content-type": "application/json"},
        },
        400,
        "image",
    ),
    (
        "gzip bomb",
        {"content": gzip.compress(b" " * (11 * 1024 * 1024)), "headers": {"content-encoding": "gzip"}},
        413,
        "inflates past the limit",
    ),
    ("bad gzip", {"content": b"not gzip", "headers": {"content-encoding": "gzip"}}, 400, "not valid gzip"),
    ("brotli", {"content": b"{}", "headers": {"content-encoding": "br"}}, 415, "unsupported Content-Encoding"),
    ("missing inputs", {"json": {"id": "x"}}, 400, "malformed inference request: inputs"),
    (
        "unknown input",
        {"json": {"inputs": [{"name": "pixels", "shape": [1, 16, 16, 3], "datatype": "UINT8", "data": [0] * 768}]}},
        400,
        "unknown input 'pixels'",
    ),
    ("bad shape", {"json": {"inputs": [_uint8([1, 8, 8, 3], data=[0] * 192)]}}, 400, "must be [N, 16, 16, 3]"),
    (
        "bad datatype",
        {"json": {"inputs": [{"name": "image", "shape": [1, 16, 16, 3], "datatype": "FP32", "data": [0.0] * 768}]}},
        400,
        "datatype FP32",
    ),
    ("size mismatch", {"json": {"inputs": [_uint8([1, 16, 16, 3], data=[0] * 10)]}}, 400, "needs 768 values, got 10"),
    ("out of range", {"json": {"inputs": [_uint8([1, 16, 16, 3], data=[300] * 768)]}}, 400, "out of range"),
    ("no data", {"json": {"inputs": [_uint8([1, 16, 16, 3])]}}, 400, "neither data nor binary_data_size"),
    (
        "binary too short",
        binary_request({"inputs": [_uint8([1, 16, 16, 3], parameters={"binary_data_size": 768})]}, b"\x00" * 100),
        400,
        "runs past the end",
    ),
    (
        "binary wrong size",
        binary_request({"inputs": [_uint8([1, 16, 16, 3], parameters={"binary_data_size": 10})]}, b"\x00" * 10),
        400,
        "needs 768 bytes, got 10",
    ),
    (
        "header longer than body",
        {"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}},
        400,
        "the body has 2 bytes",
    ),
    (
        "bad image bytes",
        {
            "json": {
                "inputs": [
                    {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(b"junk").decode()]}
                ]
            }
        },
        400,
        "not a recognised image",
    ),
    (
        "bad base64",
        {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["@@@"]}]}},
        400,
        "not valid base64",
    ),
    (
        "unknown output",
        {"json": {"inputs": [_uint8([1, 16, 16, 3], data=[0] * 768)], "outputs": [{"name": "logits"}]}},
        400,
        "unknown output 'logits'",
    ),
    (
        "too many",
        {"json": {"inputs": [{"name": "image", "shape": [65], "datatype": "BYTES", "data": ["AA=="] * 65}]}},
        413,
        "the limit is 64",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "message"), V2_ERRORS, ids=[c[0] for c in V2_ERRORS])
async def test_errors_use_the_protocol_shape(
    client: httpx.AsyncClient, case: str, kwargs: dict, status: int, message: str
) -> None:
    r = await client.post("/v2/models/colors/infer", **kwargs)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"]
    assert message in r.json()["error"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_request_bodies_are_accepted(client: httpx.AsyncClient, encoding: str) -> None:
    """tritonclient's request_compression_algorithm sends gzip or deflate (zlib) bodies."""
    body = json.dumps({"inputs": [_uint8([1, 16, 16, 3], data=pixels("green").ravel().tolist())]}).encode()
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    r = await client.post(
        "/v2/models/colors/infer",
        content=compressed,
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert r.status_code == 200, r.text
    assert np.argmax(r.json()["outputs"][0]["data"]) == 1  # green


async def test_not_ready_is_503(backend: Backend) -> None:
    async with running(create_app(settings_for(backend))) as client:
        r = await client.get("/v2/health/ready")
        assert (r.status_code, r.json()) == (503, {"ready": False})


async def test_v1_and_v2_requests_share_one_batch(served_backend: Backend) -> None:
    # Both must be in flight when the first reaches the batcher (else nobody could join it, and it goes
    # alone): decoding in a thread lets the v2 request arrive meanwhile.
    settings = settings_for(
        served_backend, batching={"max_batch_size": 2, "max_batch_delay_ms": 1000}, decode_inline_pixels=0
    )
    async with running(create_app(settings)) as client:
        v1 = client.post("/v1/models/colors/predict", files={"images": ("r.png", solid("red"), "image/png")})
        v2 = client.post(
            "/v2/models/colors/infer", json={"inputs": [_uint8([1, 16, 16, 3], data=pixels("blue").ravel().tolist())]}
        )
        r1, r2 = await asyncio.wait_for(asyncio.gather(v1, v2), 10)  # a full batch of 2 flushes before the 1 s delay
        assert r1.json()["predictions"][0]["label"] == "red"
        assert np.argmax(r2.json()["outputs"][0]["data"]) == 2
        metrics = (await client.get("/metrics")).text
        assert 'batch_size_rows_count{model="colors"} 1.0' in metrics
        assert 'batch_size_rows_sum{model="colors"} 2.0' in metrics
