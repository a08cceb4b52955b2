"""What the containers run, as plain processes, in compose order, against a fresh PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import PostgresServer
from tests.server import ROOT, server_process

COMPOSE = ROOT / "docker" / "compose.yaml"
TOKEN = "ops-token-0123456789abcdef"
pytestmark = pytest.mark.postgres


def run(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_compose_order_with_two_api_replicas(postgres: PostgresServer, tmp_path: Path) -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    artifacts = tmp_path / "artifacts"  # the shared `artifacts` volume
    base = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "REGISTRY_DATABASE_URL": postgres.new_database(migrated=False),
        "REGISTRY_ARTIFACTS_DIR": str(artifacts),
    }

    # 1. migrate: exactly the service's command.
    run(services["migrate"]["command"], base)

    # 2. trainer: the image's entrypoint with the service's TRAIN_* variables, made short.
    trainer_env = {k: str(v) for k, v in services["trainer"]["environment"].items() if k.startswith("TRAIN_")}
    trainer_env.update(
        TRAIN_DATASET="digits",
        TRAIN_EPOCHS="1",
        TRAIN_MAX_PER_CLASS="30",
        TRAIN_MODEL_NAME="digits",
        TRAIN_PROMOTE="production",
        TRAIN_MIN_ACCURACY="0",
        TRAIN_RUNS_DIR=str(tmp_path / "runs"),
    )
    out = run(["sh", "docker/train-entrypoint.sh"], {**base, **trainer_env}).stdout
    assert "digits v1, promoted to production" in out

    # A second version, the way ops move one between registries: export, then register.
    run([sys.executable, "-m", "registry", "export", "digits@production", str(tmp_path / "export")], base)
    run(
        [
            sys.executable,
            "-m",
            "registry",
            "register",
            "digits",
            str(tmp_path / "export" / "model.onnx"),
            "--meta",
            str(tmp_path / "export" / "meta.json"),
        ],
        base,
    )

    # 3. two api replicas on the same database and artifacts.
    api_env = {**base, "SERVE_POLL_INTERVAL_S": "1", "SERVE_ADMIN_TOKENS": f"ops:{TOKEN}"}
    png = next((tmp_path / "runs").rglob("test_set/3/*.png")).read_bytes()

    def version(url: str) -> int:
        r = httpx.post(f"{url}/v1/models/digits/predict", files={"images": ("3.png", png, "image/png")}, timeout=10)
        assert r.status_code == 200, r.text
        return int(r.json()["version"])

    with server_process(api_env, workers=1) as a, server_process(api_env, workers=1) as b:
        assert version(a.url) == version(b.url) == 1
        r = httpx.put(
            f"{a.url}/v1/models/digits/aliases/production",
            json={"version": 2, "reason": "rollout"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        promoted_at = time.monotonic()
        assert version(a.url) == 2  # the replica that took the call swapped before answering
        while version(b.url) != 2:
            # Its poll interval (1 s) plus loading; generous, as a loaded machine loads slowly.
            assert time.monotonic() - promoted_at < 1.0 + 30.0, "replica b did not follow its poll"
            time.sleep(0.1)
        print(f"replica b followed after {time.monotonic() - promoted_at:.2f} s (poll interval 1 s)")
    history = run([sys.executable, "-m", "registry", "history", "digits"], base).stdout
    assert "ops" in history and "rollout" in history
