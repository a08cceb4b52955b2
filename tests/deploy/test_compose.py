"""compose.yaml and the Dockerfiles, checked without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from app.main import create_app
from app.settings import BatchingSettings, LimitSettings, Settings
from registry.settings import RegistrySettings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
PROFILES = ["", "gpu", "train", "monitoring", "s3"]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("REQUIRE_DOCKER_COMPOSE") == "1":
            pytest.fail("docker-compose is not installed (REQUIRE_DOCKER_COMPOSE=1 forbids skipping)")
        pytest.skip("docker-compose is not installed: apt-get install docker-compose")
    return found


EDITED = {"POSTGRES_PASSWORD": "p@ss/word:with#odd?chars", "SERVE_ADMIN_TOKENS": "ops:0123456789abcdef0123"}


def edited_env_file(tmp_path: Path) -> Path:
    """docker/.env as a user makes it: the example with the password and the token set."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.partition("=")[0].strip()
        lines.append(f"{key}={EDITED[key]}" if key in EDITED and not line.lstrip().startswith("#") else line)
    path = tmp_path / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


def compose_config(env_file: Path, *profiles: str) -> subprocess.CompletedProcess[str]:
    args = [docker_compose(), "-f", str(COMPOSE), "--env-file", str(env_file)]
    for profile in profiles:
        args += ["--profile", profile]
    environ = {k: v for k, v in os.environ.items() if k not in EDITED}
    return subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, env=environ)


@pytest.mark.parametrize("profile", PROFILES, ids=[p or "default" for p in PROFILES])
def test_compose_config_validates(profile: str, tmp_path: Path) -> None:
    proc = compose_config(edited_env_file(tmp_path), *([profile] if profile else []))
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    # Always on: the database, its migrations and the CPU API; the rest only under their profile.
    assert {"db", "migrate", "api"} <= set(services)
    assert all("profiles" not in services[name] for name in ("db", "migrate", "api"))
    profiles = {name: s["profiles"] for name, s in services.items() if "profiles" in s}
    assert profiles == {
        "api-gpu": ["gpu"],
        "trainer": ["train"],
        "prometheus": ["monitoring"],
        "minio": ["s3"],
        "minio-bucket": ["s3"],
    }
    # Values come from .env.example: nothing left unresolved.
    assert re.search(r"(?<!\$)\$\{", proc.stdout) is None  # $${...} is the container shell's, not compose's
    for name, service in services.items():  # every service is bounded and its logs rotate
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name} has no resource limits"
        assert service["logging"]["options"] == {"max-size": "10m", "max-file": "3"}, name


def test_the_unedited_example_env_does_not_work(tmp_path: Path) -> None:
    proc = compose_config(ENV_EXAMPLE)
    assert proc.returncode != 0
    assert "set POSTGRES_PASSWORD in docker/.env" in proc.stderr
    token = env_example()["SERVE_ADMIN_TOKENS"]
    with pytest.raises(ValueError, match="placeholder from an example file"):
        create_app(Settings(admin_tokens=SecretStr(token)))
    # As ops would see it: one line, exit status 2, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--port", "1"],
        env={**os.environ, "SERVE_ADMIN_TOKENS": token},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("imgserve: SERVE_ADMIN_TOKENS: the token for 'ops'")


def test_a_password_with_url_characters_reaches_the_database_intact(tmp_path: Path) -> None:
    """The password is not pasted into the URL, so `@`, `/`, `:` and `#` need no encoding."""
    from sqlalchemy.engine import make_url

    proc = compose_config(edited_env_file(tmp_path))
    assert proc.returncode == 0, proc.stderr
    env = yaml.safe_load(proc.stdout)["services"]["migrate"]["environment"]
    settings = RegistrySettings(
        database_url=env["REGISTRY_DATABASE_URL"], database_password=env["REGISTRY_DATABASE_PASSWORD"]
    )
    from registry.db import create_registry_engine

    engine = create_registry_engine(settings.database_url, password=settings.database_password.get_secret_value())
    url = make_url(engine.url)
    assert (url.host, url.port, url.username, url.database) == ("db", 5432, "imgserve", "registry")
    assert url.password == EDITED["POSTGRES_PASSWORD"]
    engine.dispose()


def test_database_healthcheck_uses_tcp_and_migrate_retries() -> None:
    services = compose()["services"]
    check = " ".join(services["db"]["healthcheck"]["test"])
    assert "pg_isready -h 127.0.0.1" in check
    command = services["migrate"]["command"]
    assert command[:3] == ["registry", "db", "upgrade"] and "--wait" in command


AWS_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_the_s3_profile_points_every_service_at_the_minio_bucket(tmp_path: Path) -> None:
    env_file = edited_env_file(tmp_path)
    env_file.write_text(
        env_file.read_text()
        .replace("REGISTRY_ARTIFACTS_URL=\n", "REGISTRY_ARTIFACTS_URL=s3://imgserve/artifacts\n")
        .replace("AWS_ENDPOINT_URL=\n", "AWS_ENDPOINT_URL=http://minio:9000\n")
        .replace("AWS_ACCESS_KEY_ID=\n", "AWS_ACCESS_KEY_ID=imgserve\n")
        .replace("AWS_SECRET_ACCESS_KEY=\n", "AWS_SECRET_ACCESS_KEY=a-secret-of-minio\n")
    )
    proc = compose_config(env_file, "s3", "train")
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    for name in ("migrate", "api", "trainer"):
        environment = services[name]["environment"]
        assert environment["REGISTRY_ARTIFACTS_URL"] == "s3://imgserve/artifacts", name
        assert environment["AWS_ENDPOINT_URL"] == "http://minio:9000", name
    assert services["minio"]["environment"]["MINIO_ROOT_USER"] == "imgserve"
    assert services["minio-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    # The same code path as any bucket: the registry opens an S3 store from that environment.
    from registry.artifacts import open_store
    from registry.s3 import S3ArtifactStore

    settings = RegistrySettings(artifacts_url=services["api"]["environment"]["REGISTRY_ARTIFACTS_URL"])
    store = open_store(settings.artifacts_url or settings.artifacts_dir)
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix) == ("imgserve", "artifacts/")


def _setting_exists(key: str) -> bool:
    if key.startswith("REGISTRY_"):
        return key.removeprefix("REGISTRY_").lower() in RegistrySettings.model_fields
    name = key.removeprefix("SERVE_").lower()
    if "__" in name:
        group, field = name.split("__", 1)
        nested = {"batching": BatchingSettings, "limits": LimitSettings}.get(group)
        return nested is not None and field in nested.model_fields
    return name in Settings.model_fields


def test_every_variable_compose_sets_is_accepted() -> None:
    services = compose()["services"]
    entrypoint = (DOCKER / "train-entrypoint.sh").read_text()
    for name, service in services.items():
        for key in service.get("environment", {}):
            if key.startswith(("SERVE_", "REGISTRY_")):
                assert _setting_exists(key), f"{name}: {key} is not a setting"
            elif key.startswith("TRAIN_"):
                assert f"${{{key}" in entrypoint, f"{name}: {key} is not read by train-entrypoint.sh"
            elif key.startswith("AWS_"):  # boto3's standard variables, for a bucket as the artifact store
                assert key in AWS_VARIABLES, f"{name}: {key} is not a variable boto3 reads"
            elif name == "minio":
                assert key.startswith("MINIO_"), f"{name}: unexpected variable {key}"
            else:
                assert name == "db" and key.startswith("POSTGRES_"), f"{name}: unexpected variable {key}"
    example = env_example()
    referenced = set(re.findall(r"\$\{([A-Z_0-9]+)", COMPOSE.read_text()))
    assert referenced - set(example) == set(), "variables compose.yaml reads but .env.example omits"


def test_api_settings_load_from_the_compose_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    api_env = compose()["services"]["api"]["environment"]
    example = env_example()
    for key, value in api_env.items():
        resolved = re.sub(r"\$\{([A-Z_0-9]+)(:[-?][^}]*)?\}", lambda m: example.get(m.group(1), ""), str(value))
        monkeypatch.setenv(key, resolved)
    settings = Settings()
    assert settings.port == 8000
    assert settings.host == "0.0.0.0"
    assert settings.batching.max_batch_size == int(example["SERVE_BATCHING__MAX_BATCH_SIZE"])
    assert settings.registry.database_url == "postgresql+psycopg://imgserve@db:5432/registry"
    assert settings.registry.artifacts_dir == "/data/artifacts"
    assert isinstance(settings.admin_tokens, SecretStr)
    with pytest.raises(ValueError, match="placeholder"):  # well-formed, but the example's: refused
        create_app(settings)


def test_ports_and_healthchecks_line_up() -> None:
    services = compose()["services"]
    routes = set(create_app(Settings()).openapi()["paths"])
    for name in ("api", "api-gpu"):
        service = services[name]
        container_port = str(service["ports"][0]).rsplit(":", 1)[1]
        assert container_port == service["environment"]["SERVE_PORT"] == "8000"
        path = re.search(r"127\.0\.0\.1:\d+(/\w+)", " ".join(service["healthcheck"]["test"])).group(1)
        assert path in routes
    for dockerfile in ("api.Dockerfile", "api-gpu.Dockerfile"):
        text = (DOCKER / dockerfile).read_text()
        assert "EXPOSE 8000" in text
        assert "SERVE_PORT=8000" in text
        healthcheck = re.search(r"HEALTHCHECK .*\n\s+CMD (.*)", text).group(1)
        assert "/readyz" in healthcheck
    assert "/readyz" in routes
    assert services["api"]["ports"][0].startswith("${API_PORT_RANGE")  # a range, so replicas can scale


def test_trainer_and_api_share_the_artifact_volume() -> None:
    services = compose()["services"]

    def mount(service: str) -> tuple[str, str, bool]:
        for volume in services[service]["volumes"]:
            parts = volume.split(":")
            if parts[1] == services[service]["environment"]["REGISTRY_ARTIFACTS_DIR"]:
                return parts[0], parts[1], parts[2:] == ["ro"]
        raise AssertionError(f"{service} does not mount its REGISTRY_ARTIFACTS_DIR")

    assert mount("trainer") == ("artifacts", "/data/artifacts", False)
    assert mount("api") == ("artifacts", "/data/artifacts", True)
    assert mount("api-gpu") == ("artifacts", "/data/artifacts", True)
    assert "artifacts" in compose()["volumes"]
    assert services["migrate"]["command"][:3] == ["registry", "db", "upgrade"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"


def _final_stage(dockerfile: str) -> str:
    text = (DOCKER / dockerfile).read_text()
    return text[text.rindex("\nFROM ") :]


@pytest.mark.parametrize("dockerfile", ["api.Dockerfile", "api-gpu.Dockerfile", "train.Dockerfile"])
def test_images_run_as_a_non_root_user(dockerfile: str) -> None:
    users = re.findall(r"^USER (\S+)", _final_stage(dockerfile), re.MULTILINE)
    assert users, f"{dockerfile}: the final stage sets no USER"
    assert users[-1] not in ("root", "0")


def test_api_images_have_healthchecks_and_the_gpu_image_requires_a_gpu() -> None:
    for dockerfile in ("api.Dockerfile", "api-gpu.Dockerfile"):
        assert "HEALTHCHECK" in _final_stage(dockerfile)
    gpu = (DOCKER / "api-gpu.Dockerfile").read_text()
    assert "SERVE_REQUIRE_GPU=true" in _final_stage("api-gpu.Dockerfile")
    version = re.search(r"^ARG ORT_GPU_VERSION=(\S+)", gpu, re.MULTILINE).group(1)
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)", gpu, re.MULTILINE).group(1)
    assert version == "1.31.1"  # the build that ran on the H100
    assert re.match(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-", base), "onnxruntime-gpu 1.31 needs CUDA 13 + cuDNN 9"


def _pip_extras(dockerfile: str) -> set[str]:
    lines = [line for line in (DOCKER / dockerfile).read_text().splitlines() if "pip install" in line]
    return {extra for line in lines for group in re.findall(r"\.\[([^\]]+)\]", line) for extra in group.split(",")}


BANNED = ("tensorflow", "keras", "tf2onnx", "tf-keras")


def test_cpu_image_installs_only_the_serve_extra() -> None:
    assert _pip_extras("api.Dockerfile") == {"serve", "s3"}
    assert _pip_extras("api-gpu.Dockerfile") == {"gpu", "s3"}
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for requirement in project["dependencies"] + extras["serve"] + extras["s3"]:
        assert not requirement.lower().startswith(BANNED), requirement


def test_serve_install_cannot_pull_tensorflow(tmp_path: Path) -> None:
    """Resolve `.[serve,s3]` as the image does (nothing installed) and list what it would bring."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            f"{ROOT}[serve,s3]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0 and "Could not find a version" in proc.stderr + proc.stdout:
        pytest.fail(f"pip could not resolve .[serve,s3]: {proc.stderr[-500:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "onnxruntime" in names and "fastapi" in names
    assert not {n for n in names if n.startswith(BANNED)}, names
