"""Two server processes that share nothing but PostgreSQL and a bucket, each with its own local
artifact cache: both follow a promotion at their next poll, a restart reads from the cache instead
of downloading, and a damaged cache file is caught by its sha256 and fetched again."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import CREDENTIALS, PostgresServer
from tests.images import solid
from tests.onnx_models import color_classifier, color_metadata
from tests.server import Server, server_process

pytestmark = pytest.mark.postgres


def cache_reads(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r'artifact_cache_reads_total\{result="(\w+)"\} (\S+)', text)}


def served(server: Server) -> tuple[int, str]:
    r = httpx.post(
        f"{server.url}/v1/models/colors/predict",
        files={"images": ("r.png", solid("red"), "image/png")},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["version"], r.json()["predictions"][0]["label"]


def test_two_servers_share_a_database_and_a_bucket(
    postgres: PostgresServer, s3: tuple[str, object], s3_endpoint: str, tmp_path: Path
) -> None:
    from registry import Registry

    url, _ = s3
    database = postgres.borrow()
    with Registry(database_url=database, artifacts_dir=url) as reg:
        reg.register(name="colors", onnx_path=color_classifier(tmp_path / "v1.onnx"), metadata=color_metadata())
        v2 = color_classifier(tmp_path / "v2.onnx", permute=(1, 0, 2))  # red -> green: the swap shows
        reg.register(name="colors", onnx_path=v2, metadata=color_metadata())
        reg.promote(name="colors", version=1)

    def env(name: str) -> dict[str, str]:
        return {
            **os.environ,
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": s3_endpoint,
            "REGISTRY_DATABASE_URL": database,
            "REGISTRY_ARTIFACTS_URL": url,
            "REGISTRY_ARTIFACTS_DIR": str(tmp_path / "no-local-store"),  # must not be used
            "SERVE_ARTIFACT_CACHE_DIR": str(tmp_path / f"cache-{name}"),
            "SERVE_POLL_INTERVAL_S": "0.5",
            "SERVE_WARMUP_BATCH_SIZES": "[1]",
        }

    with server_process(env("a"), workers=1) as a, server_process(env("b"), workers=1) as b:
        assert served(a) == served(b) == (1, "red")
        assert cache_reads(a) == cache_reads(b) == {"hit": 0, "miss": 1, "corrupt": 0}  # one download each
        with Registry(database_url=database, artifacts_dir=url) as reg:
            reg.promote(name="colors", version=2, reason="rollout")
        promoted = time.monotonic()
        for server in (a, b):
            while served(server) != (2, "green"):
                assert time.monotonic() - promoted < 30, "a replica did not follow the promotion"
                time.sleep(0.1)
        print(f"both replicas served v2 {time.monotonic() - promoted:.2f} s after the promotion (poll 0.5 s)")
        assert cache_reads(a)["miss"] == 2

    assert not (tmp_path / "no-local-store").exists()
    # Damage server b's cached copy of v2: on restart the sha256 check catches it.
    (cached,) = [p for p in (tmp_path / "cache-b").rglob("*") if p.is_file() and v2_sha(database, url) in p.name]
    cached.write_bytes(cached.read_bytes()[:-8] + b"damaged!")
    with server_process(env("a"), workers=1) as a, server_process(env("b"), workers=1) as b:
        assert served(a) == served(b) == (2, "green")
        assert cache_reads(a) == {"hit": 1, "miss": 0, "corrupt": 0}  # a restart downloads nothing
        assert cache_reads(b) == {"hit": 0, "miss": 1, "corrupt": 1}  # fetched again, never served damaged
    postgres.give_back(database)


def v2_sha(database: str, url: str) -> str:
    from registry import Registry

    with Registry(database_url=database, artifacts_dir=url) as reg:
        return reg.get_version("colors", 2).sha256
