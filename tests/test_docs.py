"""The docs cannot drift: every shell example in README.md and docs/ is run here, or marked as
needing what this machine lacks.

Marks, in a fenced block's info string:
- `bash runnable`: run as written, in a scratch directory, with the project's virtual
  environment first on PATH and a fresh SQLite registry in `var/` (`registry db upgrade` done).
- `bash runnable-server`: run against a real server the test starts on a registry holding
  `digits` v1 (promoted) and v2, with `var/samples/digit-7.png` in place, `$TOKEN` an admin
  token of that server, and `127.0.0.1:8000` pointing at it.
- `bash long-running` (starts a server or the whole suite), `bash needs-docker`,
  `bash needs-gpu`, `bash needs-cluster`: not run here.
Every block runs under `set -euo pipefail`, and `curl` fails on an HTTP error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TrainedRun, _sqlite_backend
from tests.server import server_process

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```bash(?: (?P<tag>[\w-]+))?\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
TAGS = {"runnable", "runnable-server", "long-running", "needs-docker", "needs-gpu", "needs-cluster"}
TOKEN = "docs-admin-token-0123456789abcdef"
PREAMBLE = 'set -euo pipefail\ncurl() { command curl --silent --show-error --fail-with-body "$@"; echo; }\n'

pytestmark = pytest.mark.slow


def blocks(page: Path, tag: str) -> list[str]:
    return [m["body"] for m in BLOCK.finditer(page.read_text()) if m["tag"] == tag]


def pages_with(tag: str) -> list[Path]:
    return [page for page in PAGES if blocks(page, tag)]


def run_block(body: str, *, cwd: Path, env: dict[str, str], page: Path) -> None:
    proc = subprocess.run(
        ["bash", "-c", PREAMBLE + body], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    where = page.relative_to(ROOT)
    assert proc.returncode == 0, (
        f"a block of {where} failed:\n{body}\n--- output\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )


def sandbox_env(sandbox: Path) -> dict[str, str]:
    venv = Path(sys.executable).parent
    (sandbox / ".venv").symlink_to(venv.parent, target_is_directory=True)
    return {
        **os.environ,
        "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "REGISTRY_DATABASE_URL": f"sqlite:///{sandbox / 'var' / 'registry.db'}",
        "REGISTRY_ARTIFACTS_DIR": str(sandbox / "var" / "artifacts"),
        "MPLCONFIGDIR": str(sandbox / "matplotlib"),
    }


def test_every_shell_example_is_run_or_marked() -> None:
    unmarked = []
    for page in PAGES:
        for match in re.finditer(r"^```(bash|sh|shell|console)(?P<rest>[^\n]*)$", page.read_text(), re.MULTILINE):
            tag = match["rest"].strip()
            if tag not in TAGS:
                unmarked.append(f"{page.relative_to(ROOT)}: ```{match[1]}{match['rest']}")
    assert unmarked == [], "shell blocks that are neither run nor marked as needing something absent"
    assert pages_with("runnable") and pages_with("runnable-server")


def test_every_page_is_linked_from_the_readme_and_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        if page.parent.name == "decisions" and page.name != "README.md":
            continue  # linked from the decisions index
        assert f"({page.relative_to(ROOT)}" in readme, f"README.md does not link {page.relative_to(ROOT)}"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


@pytest.mark.parametrize("page", pages_with("runnable"), ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_blocks(page: Path, tmp_path: Path) -> None:
    env = sandbox_env(tmp_path)
    subprocess.run(["registry", "db", "upgrade"], cwd=tmp_path, env=env, check=True, capture_output=True)
    for body in blocks(page, "runnable"):
        run_block(body, cwd=tmp_path, env=env, page=page)


@pytest.mark.parametrize("page", pages_with("runnable-server"), ids=lambda p: str(p.relative_to(ROOT)))
def test_blocks_against_a_running_server(page: Path, digits_run: TrainedRun, tmp_path: Path) -> None:
    env = sandbox_env(tmp_path)
    backend = _sqlite_backend(tmp_path / "var")  # var/registry.db and var/artifacts, as serve.sh makes them
    meta = json.loads(digits_run.meta_path.read_text())
    with backend.registry() as reg:
        for _ in range(2):
            reg.register(name="digits", onnx_path=digits_run.onnx_path, metadata=meta)
        reg.promote(name="digits", version=1)
    sample = tmp_path / "var" / "samples" / "digit-7.png"
    sample.parent.mkdir(parents=True)
    sample.write_bytes(next((digits_run.dataset_dir / "test_set" / "7").iterdir()).read_bytes())
    server_env = {**env, "SERVE_ADMIN_TOKENS": f"alice:{TOKEN}", "SERVE_WARMUP_BATCH_SIZES": "[1]"}
    with server_process(server_env) as server:
        address = server.url.removeprefix("http://")
        for body in blocks(page, "runnable-server"):
            run_block(body.replace("127.0.0.1:8000", address), cwd=tmp_path, env={**env, "TOKEN": TOKEN}, page=page)
