"""The admin API: token auth, and a promote → swap → rollback cycle recorded in the history."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from app.main import create_app
from tests.app.conftest import running, settings_for
from tests.conftest import Backend
from tests.images import solid
from tests.onnx_models import color_classifier, color_metadata

ALICE = "alice-token-0123456789"
BOB = "bob-token-abcdefghijkl"
TOKENS = SecretStr(f"alice:{ALICE}, bob:{BOB}")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def served_version(client: httpx.AsyncClient) -> tuple[int, str]:
    r = await client.post("/v1/models/colors/predict", files={"images": ("r.png", solid("red"), "image/png")})
    return r.json()["version"], r.json()["predictions"][0]["label"]


async def test_admin_routes_are_off_without_tokens(client: httpx.AsyncClient) -> None:
    r = await client.put("/v1/models/colors/aliases/production", json={"version": 2}, headers=auth(ALICE))
    assert r.status_code == 403
    assert "SERVE_ADMIN_TOKENS" in r.json()["error"]
    # Read-only routes stay open.
    versions = (await client.get("/v1/models/colors/versions")).json()
    assert [(v["version"], v["aliases"]) for v in versions] == [(1, ["production"]), (2, ["staging"])]
    assert versions[0]["metadata"]["metrics"]["accuracy"] == 1.0
    assert [h["to_version"] for h in (await client.get("/v1/models/colors/history")).json()] == [1, 2]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing bearer token"),
        (auth("wrong-token-000000000"), "invalid bearer token"),
        ({"Authorization": f"Basic {ALICE}"}, "missing bearer token"),
    ],
)
async def test_missing_or_wrong_token_is_401(served_backend: Backend, headers: dict, message: str) -> None:
    async with running(create_app(settings_for(served_backend, admin_tokens=TOKENS))) as client:
        r = await client.post("/v1/models/colors/rollback", json={"alias": "production"}, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert message in r.json()["error"]


async def test_promote_swap_rollback_cycle_over_http(served_backend: Backend) -> None:
    # A long poll interval: the swap must come from the admin call itself, not from a poll.
    settings = settings_for(served_backend, admin_tokens=TOKENS, poll_interval_s=3600)
    async with running(create_app(settings)) as client:
        assert await served_version(client) == (1, "red")
        r = await client.put(
            "/v1/models/colors/aliases/production", json={"version": 2, "reason": "canary ok"}, headers=auth(ALICE)
        )
        assert r.status_code == 200, r.text
        assert r.json()["serving_version"] == 2
        assert r.json()["move"]["actor"] == "alice"
        assert await served_version(client) == (2, "green")

        r = await client.post(
            "/v1/models/colors/rollback", json={"alias": "production", "reason": "errors up"}, headers=auth(BOB)
        )
        assert r.status_code == 200, r.text
        assert (r.json()["move"]["from_version"], r.json()["move"]["to_version"]) == (2, 1)
        assert await served_version(client) == (1, "red")

        r = await client.put("/v1/models/colors/aliases/production", json={"version": 9}, headers=auth(ALICE))
        assert (r.status_code, "no version 9" in r.json()["error"]) == (404, True)
        r = await client.put("/v1/models/colors/aliases/production", json={"version": 1}, headers=auth(ALICE))
        assert r.status_code == 409
        r = await client.put("/v1/models/colors/aliases/Bad", json={"version": 1}, headers=auth(ALICE))
        assert r.status_code == 400
        r = await client.put("/v1/models/colors/aliases/production", json={"version": "x"}, headers=auth(ALICE))
        assert r.status_code == 400

        r = await client.delete("/v1/models/colors/aliases/staging?reason=done", headers=auth(BOB))
        assert r.status_code == 200
        r = await client.post(
            "/v1/models/colors/versions/2/archive", json={"reason": "green for red"}, headers=auth(BOB)
        )
        assert (r.status_code, r.json()["status"]) == (200, "archived")
        r = await client.put("/v1/models/colors/aliases/production", json={"version": 2}, headers=auth(ALICE))
        assert r.status_code == 409
        assert "archived" in r.json()["error"]
        r = await client.post("/v1/models/colors/versions/1/archive", headers=auth(BOB))
        assert r.status_code == 409

    # The ops CLI sees the same history, naming who did what over HTTP.
    proc = subprocess.run(
        [sys.executable, "-m", "registry", "history", "colors", "--json"],
        env=served_backend.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    history = [(h["alias"], h["action"], h["to_version"], h["actor"], h["reason"]) for h in json.loads(proc.stdout)]
    assert history[-4:] == [
        ("production", "promote", 2, "alice", "canary ok"),
        ("production", "rollback", 1, "bob", "errors up"),
        ("staging", "remove", None, "bob", "done"),
        (None, "archive", None, "bob", "green for red"),  # the archive names its actor too
    ]


def test_malformed_token_setting_fails_at_start(served_backend: Backend) -> None:
    with pytest.raises(ValueError, match="name:token"):
        create_app(settings_for(served_backend, admin_tokens=SecretStr("just-a-token")))
    with pytest.raises(ValueError, match="shorter than 16"):
        create_app(settings_for(served_backend, admin_tokens=SecretStr("ops:short")))


async def test_promotion_over_http_checks_the_target_and_no_check_is_recorded(
    served_backend: Backend, tmp_path: Path
) -> None:
    with served_backend.registry() as reg:
        info = reg.register(
            name="colors", onnx_path=color_classifier(tmp_path / "v3.onnx", gain=5.0), metadata=color_metadata()
        )
        reg.store.path_for(info.sha256).unlink()
    settings = settings_for(served_backend, admin_tokens=TOKENS, poll_interval_s=3600)
    async with running(create_app(settings)) as client:
        r = await client.put("/v1/models/colors/aliases/production", json={"version": 3}, headers=auth(ALICE))
        assert r.status_code == 409
        assert "colors v3 cannot be served" in r.json()["error"]
        assert "missing from the store" in r.json()["error"]
        assert await served_version(client) == (1, "red")

        r = await client.put(
            "/v1/models/colors/aliases/production",
            json={"version": 3, "reason": "incident 7", "no_check": True},
            headers=auth(ALICE),
        )
        assert r.status_code == 200, r.text
        assert r.json()["move"]["checked"] is False
        assert r.json()["serving_version"] == 1  # this server still cannot load it and keeps v1
        assert "colors v3 failed to load" in r.json()["load_error"]
        assert await served_version(client) == (1, "red")


async def test_a_write_without_a_token_is_401_even_with_a_malformed_body(served_backend: Backend) -> None:
    async with running(create_app(settings_for(served_backend, admin_tokens=TOKENS))) as client:
        for method, path in (
            ("PUT", "/v1/models/colors/aliases/production"),
            ("POST", "/v1/models/colors/rollback"),
            ("POST", "/v1/models/colors/versions/1/archive"),
        ):
            r = await client.request(method, path, content=b"{not json", headers={"content-type": "application/json"})
            assert r.status_code == 401, (path, r.text)
            assert "missing bearer token" in r.json()["error"]
        # With the token, the same body is the client's mistake.
        r = await client.put(
            "/v1/models/colors/aliases/production",
            content=b"{not json",
            headers={**auth(ALICE), "content-type": "application/json"},
        )
        assert r.status_code == 400


async def test_405_names_every_method_of_the_path(served_backend: Backend) -> None:
    async with running(create_app(settings_for(served_backend, admin_tokens=TOKENS))) as client:
        r = await client.post("/v1/models/colors/aliases/production", headers=auth(ALICE))
        assert r.status_code == 405
        assert r.headers["allow"] == "DELETE, PUT"
        assert "use DELETE or PUT" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/models/colors/aliases/production", {"version": 2**63}),
        ("POST", f"/v1/models/colors/versions/{2**63}/archive", None),
    ],
)
async def test_huge_version_numbers_are_client_errors(served_backend: Backend, method: str, path: str, body) -> None:
    async with running(create_app(settings_for(served_backend, admin_tokens=TOKENS))) as client:
        r = await client.request(method, path, json=body, headers=auth(ALICE))
        assert r.status_code == 400, r.text
