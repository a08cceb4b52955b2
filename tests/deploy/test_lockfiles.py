"""Reproducible builds: the lock files pin every dependency with hashes, agree with pyproject.toml,
and the images install them in a layer before the source."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
# lock file -> the extras of pyproject.toml it must satisfy
EXTRAS = {
    "serve.txt": ["serve", "s3"],
    "gpu.txt": ["gpu", "s3"],
    "train.txt": ["train", "s3"],
    "train-gpu.txt": ["train-gpu", "s3"],
    "dev.txt": ["serve", "train", "dev", "s3"],
}
ENVIRONMENTS = {"gpu.txt": "3.12"}  # the CUDA base image's Python; the rest run Python 3.11


def pins(lock: str) -> dict[str, str]:
    text = (LOCKS / lock).read_text()
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\n", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        name, _, version = first.partition("==")
        version = version.split()[0].rstrip("\\").strip()
        assert "--hash=sha256:" in block, f"{lock}: {name} has no hash"
        found[canonicalize_name(name.split("[")[0])] = version
    return found


@pytest.mark.parametrize("lock", sorted(EXTRAS))
def test_every_dependency_is_pinned_with_hashes_and_matches_pyproject(lock: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins(lock)
    python = ENVIRONMENTS.get(lock, "3.11")
    environment = {"python_version": python, "sys_platform": "linux", "platform_machine": "x86_64"}
    requirements = list(project["dependencies"])
    for extra in EXTRAS[lock]:
        requirements += project["optional-dependencies"][extra]
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{lock} does not pin {name}: run scripts/lock.sh"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, pyproject.toml wants {requirement.specifier}: run scripts/lock.sh"
        )
    assert not any(name.startswith(("tensorflow", "keras")) for name in pins("serve.txt"))


@pytest.mark.parametrize(
    ("dockerfile", "lock"),
    [("api.Dockerfile", "serve.txt"), ("api-gpu.Dockerfile", "gpu.txt"), ("train.Dockerfile", "${TRAIN_EXTRA}.txt")],
)
def test_images_install_the_lock_before_copying_the_source(dockerfile: str, lock: str) -> None:
    text = (ROOT / "docker" / dockerfile).read_text()
    build = text[: text.rindex("\nFROM ")]
    install = re.search(rf"pip install --require-hashes -r \"?requirements/{re.escape(lock)}", build)
    assert install is not None, f"{dockerfile} does not install requirements/{lock} with hashes"
    assert install.start() < build.index("COPY app"), f"{dockerfile} copies the source before the dependencies"
    assert "pip install --no-deps" in build  # the project itself, without resolving anything again


def test_gpu_lock_pins_the_onnxruntime_gpu_the_image_expects() -> None:
    version = re.search(r"^ARG ORT_GPU_VERSION=(\S+)", (ROOT / "docker" / "api-gpu.Dockerfile").read_text(), re.M)
    assert version is not None
    assert pins("gpu.txt")["onnxruntime-gpu"] == version.group(1)
    assert "onnxruntime" not in pins("gpu.txt")  # the two cannot be installed side by side


def test_docker_context_leaves_out_what_images_do_not_copy() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"  # everything out, then only what the images need back in
    assert "!requirements/" in rules and "!app/" in rules and "!registry/" in rules
    assert not any(rule in ("!.venv/", "!var/", "!tests/") for rule in rules)
