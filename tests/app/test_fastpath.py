"""The inference fast path answers exactly as the FastAPI route does, and is really taken."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from app.fastpath import FastPathMiddleware
from app.main import create_app
from tests.app.conftest import running, settings_for
from tests.conftest import Backend
from tests.images import solid

RED = solid("red")
X = np.stack([np.full((16, 16, 3), (20, 20, 230), np.uint8)] * 2)
V2_BODY = {"inputs": [{"name": "image", "shape": [2, 16, 16, 3], "datatype": "UINT8", "data": X.tolist()}]}

# (path, request kwargs, expected status); each is sent twice: as is (fast path) and with a query
# string the route ignores or already defaults to (FastAPI's routing).
CASES: list[tuple[str, dict[str, Any], int]] = [
    ("/v1/models/colors/predict", {"content": RED, "headers": {"content-type": "image/png"}}, 200),
    ("/v1/models/colors/predict", {"files": [("images", ("a.png", RED, "image/png"))] * 3}, 200),
    ("/v1/models/colors/predict", {"content": b"hello", "headers": {"content-type": "image/png"}}, 400),
    ("/v1/models/colors/predict", {"content": b"", "headers": {"content-type": "image/png"}}, 400),
    ("/v1/models/colors/predict", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
    ("/v1/models/nope/predict", {"content": RED, "headers": {"content-type": "image/png"}}, 404),
    ("/predict", {"files": [("image", ("a.png", RED, "image/png"))]}, 200),
    ("/predict", {"files": [("images", ("a.png", RED, "image/png"))]}, 400),
    ("/v2/models/colors/infer", {"json": V2_BODY}, 200),
    ("/v2/models/colors/versions/1/infer", {"json": {"inputs": []}}, 400),
    ("/v2/models/colors/versions/7/infer", {"json": V2_BODY}, 404),
    ("/v2/models/colors/infer", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
]


@pytest.fixture
async def client(served_backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    """Here the fast path is on: these tests are about it."""
    async with running(create_app(settings_for(served_backend, fast_path=True))) as c:
        yield c


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    paths: list[str] = []
    serve = FastPathMiddleware._serve

    async def spy(self: FastPathMiddleware, route: Any, params: Any, scope: Any, receive: Any, send: Any) -> None:
        paths.append(scope["path"])
        await serve(self, route, params, scope, receive, send)

    monkeypatch.setattr(FastPathMiddleware, "_serve", spy)
    return paths


@pytest.mark.parametrize(("path", "kwargs", "status"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
async def test_same_answer_both_ways(
    client: httpx.AsyncClient, taken: list[str], path: str, kwargs: dict[str, Any], status: int
) -> None:
    fast = await client.post(path, **kwargs)
    assert taken == [path]
    routed = await client.post(path + ("?top_k=3" if path.startswith("/v1") else "?via=router"), **kwargs)
    assert taken == [path]  # a query string takes FastAPI's way
    assert fast.status_code == routed.status_code == status, fast.text
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert fast.json() == routed.json()


async def test_fast_path_is_counted_under_its_route(client: httpx.AsyncClient, taken: list[str]) -> None:
    for _ in range(2):
        r = await client.post("/v1/models/colors/predict", content=RED, headers={"content-type": "image/png"})
        assert r.status_code == 200
    assert len(taken) == 2
    metrics = (await client.get("/metrics")).text
    assert 'http_requests_total{method="POST",route="/v1/models/{name}/predict",status="200"} 2.0' in metrics


async def test_other_methods_and_routes_are_left_alone(client: httpx.AsyncClient, taken: list[str]) -> None:
    assert (await client.get("/v1/models/colors/predict")).status_code == 405
    assert (await client.post("/v1/models/colors")).status_code == 405
    assert (await client.get("/v1/models/colors")).status_code == 200
    assert taken == []
