"""scripts/serve.sh installs only on the first start or after pyproject.toml changed: a restart
with nothing to install runs no pip and needs no package index. Run here with stand-ins for the
venv's programs that record how they were called."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = """#!/bin/sh
echo "$(basename "$0") $*" >> "$(dirname "$0")/../../calls.log"
cat > /dev/null 2>&1 || true
"""


def start(project: Path) -> list[str]:
    log = project / "calls.log"
    log.unlink(missing_ok=True)
    proc = subprocess.run(
        ["bash", "scripts/serve.sh"], cwd=project, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines()


def test_a_restart_installs_nothing_until_pyproject_changes(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "serve.sh", project / "scripts" / "serve.sh")
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for program in ("python", "registry"):
        (bin_dir / program).write_text(STAND_IN)
        (bin_dir / program).chmod(0o755)
    (project / "var" / "samples").mkdir(parents=True)
    (project / "var" / "samples" / "digit-7.png").write_bytes(b"png")

    first = start(project)
    assert any("-m pip install" in call for call in first)  # no stamp yet: install
    again = start(project)
    assert not any("pip" in call for call in again)
    assert again[-1].startswith("python -m app")  # it went straight to serving
    with (project / "pyproject.toml").open("a") as fh:
        fh.write("\n# a dependency changed\n")
    assert any("-m pip install" in call for call in start(project))
