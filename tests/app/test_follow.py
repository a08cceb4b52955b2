"""The server follows its alias: swaps on promotion and rollback, refuses broken versions,
and keeps serving when the registry database goes away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.main import create_app
from tests.app.conftest import running, settings_for
from tests.conftest import Backend, PostgresServer
from tests.images import solid
from tests.onnx_models import color_classifier, color_metadata


async def predict_red(client: httpx.AsyncClient) -> tuple[int, str]:
    r = await client.post("/v1/models/colors/predict", files={"images": ("r.png", solid("red"), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["version"], r.json()["predictions"][0]["label"]


async def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_promotion_and_rollback_are_followed(served_backend: Backend) -> None:
    async with running(create_app(settings_for(served_backend))) as client:
        assert await predict_red(client) == (1, "red")
        with served_backend.registry() as reg:
            reg.promote(name="colors", version=2, reason="test")

        async def on_v2() -> bool:
            return (await predict_red(client)) == (2, "green")

        await wait_until(on_v2)
        with served_backend.registry() as reg:
            reg.rollback(name="colors", reason="test")

        async def on_v1() -> bool:
            return (await predict_red(client)) == (1, "red")

        await wait_until(on_v1)
        metrics = (await client.get("/metrics")).text
        assert 'model_swaps_total{model="colors"} 2.0' in metrics


async def test_requests_in_flight_during_a_swap_all_succeed(served_backend: Backend) -> None:
    settings = settings_for(served_backend, batching={"max_batch_delay_ms": 5})
    async with running(create_app(settings)) as client:
        stop = asyncio.Event()
        answers: list[tuple[int, str]] = []

        async def hammer() -> None:
            while not stop.is_set():
                answers.append(await predict_red(client))  # raises on any non-200

        workers = [asyncio.ensure_future(hammer()) for _ in range(8)]
        await asyncio.sleep(0.2)
        with served_backend.registry() as reg:
            reg.promote(name="colors", version=2)
        await wait_until(lambda: _latest_is(answers, (2, "green")))
        with served_backend.registry() as reg:
            reg.rollback(name="colors")
        await wait_until(lambda: _latest_is(answers, (1, "red")))
        stop.set()
        await asyncio.gather(*workers)
        # Every answer is a consistent (version, label) pair: no mixing of one version's label with another's.
        assert set(answers) == {(1, "red"), (2, "green")}


async def _latest_is(answers: list[tuple[int, str]], expected: tuple[int, str]) -> bool:
    await asyncio.sleep(0)
    return len(answers) > 8 and all(a == expected for a in answers[-8:])


@pytest.mark.parametrize("breakage", ["corrupt", "contract", "not-onnx"])
async def test_a_broken_version_is_never_swapped_in(served_backend: Backend, tmp_path: Path, breakage: str) -> None:
    with served_backend.registry() as reg:
        if breakage == "corrupt":
            path = color_classifier(tmp_path / "v3.onnx", gain=5.0)
            info = reg.register(name="colors", onnx_path=path, metadata=color_metadata())
            blob = reg.store.path_for(info.sha256)
            blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
            expected = "is corrupted"
        elif breakage == "contract":
            path = color_classifier(tmp_path / "v3.onnx", input_name="pixels")
            info = reg.register(name="colors", onnx_path=path, metadata=color_metadata())
            expected = "graph has no input 'image'"
        else:
            path = tmp_path / "v3.onnx"
            path.write_bytes(b"definitely not a protobuf")
            info = reg.register(name="colors", onnx_path=path, metadata=color_metadata())
            expected = "cannot load the graph"
    async with running(create_app(settings_for(served_backend))) as client:
        with served_backend.registry() as reg:
            reg.promote(name="colors", version=info.version, check=False)  # promotion would refuse it

        async def failure_reported() -> bool:
            model = (await client.get("/v1/models/colors")).json()
            return bool(model["last_error"])

        await wait_until(failure_reported)
        model = (await client.get("/v1/models/colors")).json()
        assert expected in model["last_error"]
        assert model["serving_version"] == 1
        assert await predict_red(client) == (1, "red")
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert expected in ready.json()["models"]["colors"]["error"]
        metrics = (await client.get("/metrics")).text
        assert f'model_load_failures_total{{model="colors",version="{info.version}"}} 1.0' in metrics
        # Asked whether that version is ready, the server says why not, in that version's own words.
        r = await client.get(f"/v2/models/colors/versions/{info.version}/ready")
        assert r.status_code == 503
        assert r.json()["error"].count("failed to load") == 1 and expected in r.json()["error"]

        # Ops roll the alias back to the version still served: the error goes with its cause.
        with served_backend.registry() as reg:
            reg.rollback(name="colors", reason="v3 does not load")

        async def error_cleared() -> bool:
            ready = (await client.get("/readyz")).json()["models"]["colors"]
            model = (await client.get("/v1/models/colors")).json()
            return ready["error"] is None and model["last_error"] is None

        await wait_until(error_cleared)


async def test_start_without_any_promoted_model_is_live_but_not_ready(backend: Backend, tmp_path: Path) -> None:
    async with running(create_app(settings_for(backend))) as client:
        assert (await client.get("/healthz")).status_code == 200
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "not ready"
        r = await client.post("/predict", files={"image": ("r.png", solid("red"), "image/png")})
        assert r.status_code == 503
        assert "retry-after" in r.headers
        # A model promoted later is picked up by the poll.
        with backend.registry() as reg:
            reg.register(name="colors", onnx_path=color_classifier(tmp_path / "m.onnx"), metadata=color_metadata())
            reg.promote(name="colors", version=1)

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_until(ready)
        assert await predict_red(client) == (1, "red")


@pytest.mark.postgres
async def test_database_outage_keeps_serving_and_recovers(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.new_database()
    backend = Backend("postgres", url, tmp_path / "artifacts")
    with backend.registry() as reg:
        reg.register(name="colors", onnx_path=color_classifier(tmp_path / "m.onnx"), metadata=color_metadata())
        reg.promote(name="colors", version=1)
    name = make_url(url).database
    admin = create_engine(postgres.admin_url, isolation_level="AUTOCOMMIT")

    def rename(src: str, dst: str) -> None:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": src})
            conn.execute(text(f'ALTER DATABASE "{src}" RENAME TO "{dst}"'))

    async with running(create_app(settings_for(backend))) as client:
        assert await predict_red(client) == (1, "red")
        rename(name, f"{name}_away")
        try:

            async def outage_seen() -> bool:
                return (await client.get("/readyz")).json()["registry_error"] is not None

            await wait_until(outage_seen)
            assert "registry database" in (await client.get("/readyz")).json()["registry_error"]
            for _ in range(5):
                assert await predict_red(client) == (1, "red")
            assert "registry_poll_errors_total" in (await client.get("/metrics")).text
        finally:
            rename(f"{name}_away", name)

        async def recovered() -> bool:
            return (await client.get("/readyz")).json()["registry_error"] is None

        await wait_until(recovered)
    admin.dispose()


@pytest.mark.parametrize("breakage", ["corrupt", "missing"])
async def test_a_fresh_server_falls_back_when_the_promoted_version_became_unloadable(
    served_backend: Backend, tmp_path: Path, breakage: str
) -> None:
    """v3 passed its check when promoted, then its blob went bad. Running servers keep what they
    serve; a fresh one serves the newest earlier version of the alias, ready, and says why."""
    with served_backend.registry() as reg:
        info = reg.register(
            name="colors", onnx_path=color_classifier(tmp_path / "v3.onnx", gain=5.0), metadata=color_metadata()
        )
        reg.promote(name="colors", version=info.version)
        blob = reg.store.path_for(info.sha256)
        if breakage == "corrupt":
            blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
        else:
            blob.unlink()
    async with running(create_app(settings_for(served_backend))) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        colors = ready.json()["models"]["colors"]
        assert colors["version"] == 1
        assert "colors v3 failed to load" in colors["error"]
        assert "serving v1 instead, the newest earlier version of 'production' that loads" in colors["error"]
        assert await predict_red(client) == (1, "red")
        model = (await client.get("/v1/models/colors")).json()
        assert (model["serving_version"], model["aliases"]["production"]) == (1, 3)

        # Ops roll the alias back to what is served: the error goes with its cause.
        with served_backend.registry() as reg:
            reg.rollback(name="colors")

        async def error_cleared() -> bool:
            return (await client.get("/readyz")).json()["models"]["colors"]["error"] is None

        await wait_until(error_cleared)


async def test_a_fresh_server_with_nothing_to_fall_back_to_stays_unready_and_says_why(
    served_backend: Backend,
) -> None:
    with served_backend.registry() as reg:
        reg.store.path_for(reg.get_version("pets", 1).sha256).unlink()
    async with running(create_app(settings_for(served_backend))) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "pets v1 failed to load" in ready.json()["models"]["pets"]["error"]
        assert "missing from the store" in ready.json()["models"]["pets"]["error"]
        assert ready.json()["models"]["colors"]["version"] == 1  # the other model is unaffected
