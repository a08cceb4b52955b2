"""Fixtures shared by every test package: registry backends (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from registry import Registry
from registry.db import create_registry_engine, head_revision, upgrade
from registry.orm import Base
from tests.server import free_port

# Modules whose every test starts processes (a server, the CLI, workers, a load generator).
SLOW_MODULES = {
    "test_server_process",
    "test_hostile",
    "test_schemathesis",
    "test_memory",
    "test_shared_bucket",
    "test_concurrency",
    "test_cli",
    "test_s3",
    "test_safety",
    "test_compose_order",
    "test_smoke",
    "test_training",
    "test_serve_script",
    "test_workers",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the slow tier: whole modules above, and any test that needs the trained digits model."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SLOW_MODULES or "digits_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"


@dataclass(frozen=True)
class Backend:
    """Where a test's registry lives; `env` is what a subprocess needs to find it."""

    kind: str
    database_url: str
    artifacts_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "REGISTRY_DATABASE_URL": self.database_url,
            "REGISTRY_ARTIFACTS_DIR": str(self.artifacts_dir),
        }

    def registry(self) -> Registry:
        return Registry(database_url=self.database_url, artifacts_dir=self.artifacts_dir)


class PostgresServer:
    """Creates throwaway databases, each a copy of one migrated template.

    Tests through the `backend` fixture borrow a migrated database and give it back emptied
    (TRUNCATE) for the next test: creating and dropping one database per test cost minutes on a
    busy machine (each DROP DATABASE forces a checkpoint) and once timed the session out.
    """

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url)
        self.admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.template = f"imgserve_tpl_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []
        self.pool: list[str] = []

    def url_for(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def start(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.template}"'))
        engine = create_registry_engine(self.url_for(self.template))
        upgrade(engine)
        engine.dispose()

    def new_database(self, *, migrated: bool = True) -> str:
        name = f"imgserve_test_{uuid.uuid4().hex[:10]}"
        template = f' TEMPLATE "{self.template}"' if migrated else ""
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{template}'))
        self.created.append(name)
        return self.url_for(name)

    def borrow(self) -> str:
        """A migrated database without rows: one given back by an earlier test, else a new one."""
        while self.pool:
            name = self.pool.pop()
            if self._empty(name):
                return self.url_for(name)
        return self.new_database()

    def give_back(self, url: str) -> None:
        name = make_url(url).database
        assert name is not None
        self.pool.append(name)

    def _empty(self, name: str) -> bool:
        """Close every session on ``name`` and delete its rows; False if it is no longer at head."""
        with self.admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": name},
            )
        engine = create_engine(self.url_for(name))
        try:
            with engine.begin() as conn:
                if conn.execute(text("SELECT version_num FROM alembic_version")).scalar() != head_revision():
                    return False
                tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
                conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            return True
        except Exception:  # a test changed it beyond repair: leave it to be dropped
            return False
        finally:
            engine.dispose()

    def stop(self) -> None:
        with self.admin.connect() as conn:
            for name in [*self.created, self.template]:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    try:
        server = PostgresServer(POSTGRES_ADMIN_URL)
        server.start()
    except Exception as exc:
        reason = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {str(exc).splitlines()[0]}"
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason} (REQUIRE_POSTGRES=1 forbids skipping)")
        yield None
        return
    yield server
    server.stop()


@pytest.fixture
def postgres(postgres_server: PostgresServer | None) -> PostgresServer:
    if postgres_server is None:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}; set TEST_POSTGRES_URL")
    return postgres_server


def _sqlite_backend(tmp_path: Path, *, migrated: bool = True) -> Backend:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    if migrated:
        engine = create_registry_engine(url)
        upgrade(engine)
        engine.dispose()
    return Backend("sqlite", url, tmp_path / "artifacts")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, migrated registry database of each kind, with its own artifact directory."""
    if request.param == "sqlite":
        yield _sqlite_backend(tmp_path)
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.borrow()
    yield Backend("postgres", url, tmp_path / "artifacts")
    server.give_back(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Like `backend`, but the database has no schema yet."""
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path, migrated=False)
    server: PostgresServer = request.getfixturevalue("postgres")
    return Backend("postgres", server.new_database(migrated=False), tmp_path / "artifacts")


@pytest.fixture
def registry(backend: Backend) -> Iterator[Registry]:
    reg = backend.registry()
    yield reg
    reg.close()


@dataclass(frozen=True)
class TrainedRun:
    """One short training run of `digits`, registered and promoted in its own SQLite registry."""

    backend: Backend
    run_dir: Path
    stdout: str

    @property
    def onnx_path(self) -> Path:
        return self.run_dir / "model.onnx"

    @property
    def meta_path(self) -> Path:
        return self.run_dir / "meta.json"

    @property
    def dataset_dir(self) -> Path:
        return self.run_dir / "dataset"


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    root = tmp_path_factory.mktemp("digits-run")
    backend = _sqlite_backend(root)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "--dataset",
            "digits",
            "--epochs",
            "2",
            "--max-per-class",
            "60",
            "--runs-dir",
            str(root / "runs"),
            "--register",
            "digits",
            "--promote",
            "production",
        ],
        env=backend.env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = (root / "runs").iterdir()
    return TrainedRun(backend, run_dir, proc.stdout)


# -- an S3 API server on 127.0.0.1 (moto's server mode) ------------------------------------------

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(endpoint, timeout=1)
            break
        except httpx.TransportError:
            assert proc.poll() is None, "moto_server exited"
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    yield endpoint
    proc.terminate()
    proc.wait(30)


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, object]:
    """A fresh bucket: (its store URL, a boto3 client on it)."""
    import boto3

    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    bucket = f"imgserve-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/models", client
