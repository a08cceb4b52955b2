"""Version allocation under real concurrent processes, and registrations killed midway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Backend
from tests.onnx_models import color_classifier, color_metadata

WORKER = """
import json, sys
from pathlib import Path
from registry import Registry
from tests.onnx_models import color_metadata
worker, count, workdir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
reg = Registry.from_settings()
Path(workdir, f"ready-{worker}").touch()
while not Path(workdir, "go").exists():
    pass
for i in range(count):
    blob = Path(workdir, f"w{worker}-{i}.onnx")
    blob.write_bytes(f"worker {worker} registration {i}".encode() * 100)
    info = reg.register(name="contended", onnx_path=blob, metadata=color_metadata(), actor=f"w{worker}")
    print(json.dumps({"version": info.version, "sha256": info.sha256, "file": blob.name}), flush=True)
"""

KILLED_WORKER = """
import sys, time
from pathlib import Path
from sqlalchemy import event
from sqlalchemy.orm import Session
from registry import Registry
from registry.orm import ModelVersion
from tests.onnx_models import color_metadata

def stall(session):
    if any(isinstance(obj, ModelVersion) for obj in session.identity_map.values()):
        Path(sys.argv[2]).touch()
        time.sleep(120)

event.listen(Session, "before_commit", stall)
Registry.from_settings().register(name="victim", onnx_path=sys.argv[1], metadata=color_metadata())
"""

ROOT = Path(__file__).resolve().parents[2]


def _spawn(code: str, args: list[str], backend: Backend) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**backend.env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_concurrent_registrations_get_distinct_consecutive_versions(backend: Backend, tmp_path: Path) -> None:
    workers, per_worker = 8, 5
    procs = [_spawn(WORKER, [str(w), str(per_worker), str(tmp_path)], backend) for w in range(workers)]
    for w, proc in enumerate(procs):
        _wait_for(tmp_path / f"ready-{w}", proc)
    (tmp_path / "go").touch()  # release them together, so they race for the same model row
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.extend(json.loads(line) for line in out.splitlines())

    assert sorted(r["version"] for r in results) == list(range(1, workers * per_worker + 1))
    with backend.registry() as reg:
        versions = reg.list_versions("contended")
        assert [v.version for v in versions] == list(range(1, 41))
        by_version = {r["version"]: r for r in results}
        for v in versions:
            expected = (tmp_path / by_version[v.version]["file"]).read_bytes()
            assert v.sha256 == by_version[v.version]["sha256"]
            assert reg.open_artifact("contended", v.version) == expected


def test_registration_killed_midway_leaves_no_version(backend: Backend, tmp_path: Path) -> None:
    model = color_classifier(tmp_path / "model.onnx")
    marker = tmp_path / "about-to-commit"
    proc = _spawn(KILLED_WORKER, [str(model), str(marker)], backend)
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)

    with backend.registry() as reg:
        assert reg.list_versions("victim") == []
        # The blob was written before the transaction: an orphan that gc may collect.
        assert len(list(reg.store.iter_blobs())) == 1
        info = reg.register(name="victim", onnx_path=model, metadata=color_metadata())
        assert info.version == 1
        assert [v.version for v in reg.list_versions("victim")] == [1]
