"""What must never happen to a registry: lost artifacts, promotions of what cannot be served,
silent contract changes, uploads left on disk, and unnamed storage failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry import ArtifactCheckError, ConflictError, Registry, StorageError
from tests.conftest import Backend
from tests.onnx_models import color_classifier, color_metadata
from tests.registry.test_cli import assert_one_line_error, run
from tests.registry.test_concurrency import ROOT, _spawn, _wait_for

# A registration that stops right before its commit until told to go on.
STALLED_REGISTRATION = """
import sys, time
from pathlib import Path
from sqlalchemy import event
from sqlalchemy.orm import Session
from registry import Registry
from registry.orm import ModelVersion
from tests.onnx_models import color_metadata

stalled, go = Path(sys.argv[2]), Path(sys.argv[3])

def stall(session):
    if any(isinstance(obj, ModelVersion) for obj in session.identity_map.values()):
        stalled.touch()
        while not go.exists():
            time.sleep(0.01)

event.listen(Session, "before_commit", stall)
info = Registry.from_settings().register(name="raced", onnx_path=sys.argv[1], metadata=color_metadata())
print(info.version)
"""

# An upload that sends one chunk, says so, then hangs: a registration in the middle of its upload.
HANGING_UPLOAD = """
import sys, time
from pathlib import Path
from registry import Registry

class Hanging:
    sent = False
    def read(self, size):
        if not self.sent:
            self.sent = True
            return b"x" * size
        Path(sys.argv[1]).touch()
        time.sleep(600)
        return b""

Registry.from_settings().store.put_stream(Hanging())
"""


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_gc_during_a_registration_of_content_already_stored_loses_nothing(backend: Backend, tmp_path: Path) -> None:
    model = color_classifier(tmp_path / "model.onnx")
    with backend.registry() as reg:
        sha, _ = reg.store.put_file(model)  # what a registration killed two hours ago left behind
        _age(reg.store.path_for(sha), 7200)
    proc = _spawn(STALLED_REGISTRATION, [str(model), str(tmp_path / "stalled"), str(tmp_path / "go")], backend)
    _wait_for(tmp_path / "stalled", proc)  # its blob is stored, its version not yet committed
    with backend.registry() as reg:
        assert reg.gc() == []  # with the default grace: the registration has just written the blob again
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    with backend.registry() as reg:
        assert reg.verify() == (1, [])
        assert reg.open_artifact("raced", int(out)) == model.read_bytes()


def test_gc_removes_the_uploads_of_killed_registrations_at_once(backend: Backend, tmp_path: Path) -> None:
    dead = _spawn(HANGING_UPLOAD, [str(tmp_path / "dead-hangs")], backend)
    live = _spawn(HANGING_UPLOAD, [str(tmp_path / "live-hangs")], backend)
    try:
        _wait_for(tmp_path / "dead-hangs", dead)
        _wait_for(tmp_path / "live-hangs", live)
        tmp = backend.artifacts_dir / "tmp"
        assert len(list(tmp.iterdir())) == 2
        dead.send_signal(signal.SIGKILL)
        dead.wait(30)
        run(backend, "gc")  # the default grace of an hour
        (left,) = tmp.iterdir()  # the live upload is kept
        assert f"-{live.pid}-" in left.name
        live.send_signal(signal.SIGKILL)
        live.wait(30)
        run(backend, "gc")
        assert list(tmp.iterdir()) == []
    finally:
        for proc in (dead, live):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def test_gc_still_honours_the_grace_for_young_unreferenced_blobs(registry: Registry, tmp_path: Path) -> None:
    blob = tmp_path / "orphan.bin"
    blob.write_bytes(b"a blob nobody references yet")
    sha, _ = registry.store.put_file(blob)
    assert registry.gc() == []
    _age(registry.store.path_for(sha), 7200)
    assert [s for s, _ in registry.gc()] == [sha]
    assert not registry.store.path_for(sha).exists()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("corrupt", "is corrupted"),
        ("missing", "is missing from the store"),
        ("not-onnx", "ONNX Runtime cannot load the graph"),
        ("contract", "graph has no input 'image'"),
        ("labels", "graph output has 3 columns"),
    ],
)
def test_promotion_refuses_a_version_that_cannot_be_served(
    registry: Registry, tmp_path: Path, breakage: str, message: str
) -> None:
    good = color_classifier(tmp_path / "good.onnx")
    registry.register(name="colors", onnx_path=good, metadata=color_metadata())
    registry.promote(name="colors", version=1)
    meta = color_metadata()
    if breakage == "contract":
        path = color_classifier(tmp_path / "v2.onnx", input_name="pixels")
    elif breakage == "labels":
        path = color_classifier(tmp_path / "v2.onnx", gain=3.0)
        meta = color_metadata(labels=["red", "green", "blue", "alpha"])
    elif breakage == "not-onnx":
        path = tmp_path / "v2.onnx"
        path.write_bytes(b"definitely not a protobuf")
    else:
        path = color_classifier(tmp_path / "v2.onnx", gain=5.0)
    info = registry.register(name="colors", onnx_path=path, metadata=meta, allow_contract_change=breakage == "labels")
    blob = registry.store.path_for(info.sha256)
    if breakage == "corrupt":
        blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    elif breakage == "missing":
        blob.unlink()

    with pytest.raises(ArtifactCheckError, match=message):
        registry.promote(name="colors", version=2)
    assert registry.aliases("colors") == {"production": 1}

    # An emergency move skips the check, and the history says so.
    move = registry.promote(name="colors", version=2, check=False, reason="on call says so")
    assert move.checked is False
    with pytest.raises(ArtifactCheckError, match=message):
        registry.check_version("colors", 2)
    assert [(m.to_version, m.checked) for m in registry.history("colors")] == [(1, True), (2, False)]


def test_rollback_checks_its_target_too(registry: Registry, tmp_path: Path) -> None:
    registry.register(name="colors", onnx_path=color_classifier(tmp_path / "a.onnx"), metadata=color_metadata())
    registry.register(
        name="colors", onnx_path=color_classifier(tmp_path / "b.onnx", gain=5.0), metadata=color_metadata()
    )
    registry.promote(name="colors", version=1)
    registry.promote(name="colors", version=2)
    registry.store.path_for(registry.get_version("colors", 1).sha256).unlink()
    with pytest.raises(ArtifactCheckError, match="colors v1 cannot be served"):
        registry.rollback(name="colors")
    assert registry.aliases("colors") == {"production": 2}
    assert registry.rollback(name="colors", check=False).checked is False
    assert registry.aliases("colors") == {"production": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": ["red", "green", "teal"]}, "labels [red, green, blue] -> [red, green, teal]"),
        ({"size": 32}, "input size 16x16 -> 32x32"),
        ({"kind": "sigmoid"}, "output softmax -> sigmoid"),
    ],
)
def test_a_contract_change_is_refused_unless_allowed_and_then_recorded(
    registry: Registry, tmp_path: Path, change: dict, message: str
) -> None:
    model = color_classifier(tmp_path / "model.onnx")
    registry.register(name="colors", onnx_path=model, metadata=color_metadata())
    with pytest.raises(ConflictError, match=r"changes its contract from v1: .*--allow-contract-change") as refused:
        registry.register(name="colors", onnx_path=model, metadata=color_metadata(**change))
    assert message in str(refused.value)
    assert [v.version for v in registry.list_versions("colors")] == [1]
    info = registry.register(
        name="colors", onnx_path=model, metadata=color_metadata(**change), allow_contract_change=True
    )
    assert info.version == 2
    assert info.contract_change is not None and message in info.contract_change
    assert registry.get_version("colors", 2).contract_change == info.contract_change
    # The same contract again is no change; an unchanged registration records nothing.
    assert registry.register(name="colors", onnx_path=model, metadata=color_metadata(**change)).contract_change is None


def test_archive_is_recorded_in_the_history(registry: Registry, tmp_path: Path) -> None:
    model = color_classifier(tmp_path / "model.onnx")
    registry.register(name="colors", onnx_path=model, metadata=color_metadata())
    registry.register(name="colors", onnx_path=model, metadata=color_metadata())
    registry.archive(name="colors", version=2, actor="carol", reason="bad eval")
    (entry,) = registry.history("colors")
    assert (entry.alias, entry.action, entry.from_version, entry.actor, entry.reason) == (
        None,
        "archive",
        2,
        "carol",
        "bad eval",
    )
    with pytest.raises(ConflictError, match="archived already"):
        registry.archive(name="colors", version=2)
    assert registry.history("colors", "production") == []  # alias filters leave archives out


def test_cli_promotion_check_and_no_check(backend: Backend, tmp_path: Path) -> None:
    model = color_classifier(tmp_path / "model.onnx")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(color_metadata()))
    run(backend, "register", "colors", str(model), "--meta", str(meta))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx at all")
    run(backend, "register", "colors", str(broken), "--meta", str(meta))
    assert "colors v1 can be served" in run(backend, "check", "colors:1").stdout
    assert_one_line_error(run(backend, "check", "colors:2", check=False), 8, "cannot load the graph")
    assert_one_line_error(run(backend, "promote", "colors", "2", check=False), 8, "colors v2 cannot be served")
    assert json.loads(run(backend, "models", "--json").stdout)[0]["aliases"] == {}
    out = run(backend, "promote", "colors", "2", "--no-check", "--reason", "incident 42").stdout
    assert "(promote by" in out and "unchecked)" in out
    assert "promote (unchecked)" in run(backend, "history", "colors").stdout


def test_cli_contract_change_needs_the_flag(backend: Backend, tmp_path: Path) -> None:
    model = color_classifier(tmp_path / "model.onnx")
    meta, changed = tmp_path / "meta.json", tmp_path / "changed.json"
    meta.write_text(json.dumps(color_metadata()))
    changed.write_text(json.dumps(color_metadata(labels=["red", "green", "teal"])))
    run(backend, "register", "colors", str(model), "--meta", str(meta))
    proc = run(backend, "register", "colors", str(model), "--meta", str(changed), check=False)
    assert_one_line_error(proc, 5, "changes its contract from v1: labels")
    out = run(backend, "register", "colors", str(model), "--meta", str(changed), "--allow-contract-change").stdout
    assert "contract change allowed and recorded: from v1: labels" in out
    assert "contract:     changed from v1: labels" in run(backend, "show", "colors:2").stdout


def test_cli_archive_records_actor_and_reason(backend: Backend, tmp_path: Path) -> None:
    model = color_classifier(tmp_path / "model.onnx")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(color_metadata()))
    run(backend, "register", "colors", str(model), "--meta", str(meta))
    run(backend, "archive", "colors", "1", "--actor", "dana", "--reason", "superseded")
    (entry,) = json.loads(run(backend, "history", "colors", "--json").stdout)
    assert (entry["action"], entry["from_version"], entry["actor"], entry["reason"]) == (
        "archive",
        1,
        "dana",
        "superseded",
    )


def _full_disk_command(artifacts: Path, command: list[str]) -> list[str]:
    """``command`` in a private mount namespace whose artifact directory is a 64 KiB tmpfs."""
    script = f'mount -t tmpfs -o size=64k tmpfs "{artifacts}" && exec "$@"'
    return ["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", *command]


def test_a_full_disk_is_one_line_naming_the_store_and_nothing_is_registered(backend: Backend, tmp_path: Path) -> None:
    backend.artifacts_dir.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(_full_disk_command(backend.artifacts_dir, ["true"]), capture_output=True, text=True)
    if probe.returncode != 0:
        reason = f"cannot mount a small tmpfs in a user namespace here: {probe.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI forbids skipping)")
        pytest.skip(reason)
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(256 * 1024))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(color_metadata()))
    command = [sys.executable, "-m", "registry", "register", "colors", str(big), "--meta", str(meta)]
    proc = subprocess.run(
        _full_disk_command(backend.artifacts_dir, command),
        env=backend.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(proc, 9, f"artifact store {backend.artifacts_dir}: cannot write an artifact")
    assert "No space left on device" in proc.stderr
    with backend.registry() as reg:
        assert reg.list_models() == []


def test_storage_errors_from_the_library_name_the_store(registry: Registry, tmp_path: Path) -> None:
    registry.store.root.mkdir(parents=True, exist_ok=True)
    (registry.store.root / "tmp").write_text("a file where the upload directory should be")
    model = color_classifier(tmp_path / "model.onnx")
    with pytest.raises(StorageError, match=r"artifact store .*: cannot create an upload file"):
        registry.register(name="colors", onnx_path=model, metadata=color_metadata())
