"""The artifact store in an S3-compatible bucket, against a real S3 API server on 127.0.0.1
(moto's server mode): the same registry operations, corruption and loss detected, and a killed
multipart upload leaving nothing visible until gc aborts it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CREDENTIALS, Backend, _sqlite_backend
from tests.onnx_models import color_classifier, color_metadata
from tests.registry.test_cli import assert_one_line_error, run
from tests.registry.test_concurrency import ROOT, _wait_for


@pytest.fixture
def s3_backend(s3: tuple[str, object], tmp_path: Path) -> Backend:
    url, _ = s3
    local = _sqlite_backend(tmp_path)
    return Backend("sqlite+s3", local.database_url, url)  # type: ignore[arg-type]


def env_of(backend: Backend) -> dict[str, str]:
    return {**backend.env, "REGISTRY_ARTIFACTS_URL": str(backend.artifacts_dir)}


def cli(backend: Backend, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "registry", *args], env=env_of(backend), capture_output=True, text=True, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_register_read_verify_export_and_gc_in_a_bucket(
    s3_backend: Backend, s3: tuple[str, object], tmp_path: Path
) -> None:
    url, client = s3
    model = color_classifier(tmp_path / "model.onnx")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(color_metadata()))
    assert "registered colors v1" in cli(s3_backend, "register", "colors", str(model), "--meta", str(meta)).stdout
    info = json.loads(cli(s3_backend, "show", "colors:1", "--json").stdout)
    key = f"models/sha256/{info['sha256'][:2]}/{info['sha256']}"
    assert client.head_object(Bucket=url.split("/")[2], Key=key)["ContentLength"] == model.stat().st_size
    assert not (Path("models")).exists()  # nothing went to a local directory by mistake
    cli(s3_backend, "promote", "colors", "1")
    assert "checked 1 artifacts, 0 problems" in cli(s3_backend, "verify").stdout
    cli(s3_backend, "export", "colors@production", str(tmp_path / "out"))
    assert (tmp_path / "out" / "model.onnx").read_bytes() == model.read_bytes()

    with Backend("sqlite", s3_backend.database_url, url).registry() as reg:  # type: ignore[arg-type]
        assert reg.open_artifact("colors", 1) == model.read_bytes()
        orphan = tmp_path / "orphan.bin"
        orphan.write_bytes(b"left behind")
        orphan_sha, _ = reg.store.put_file(orphan)
        assert reg.gc() == []  # young: a registration may be about to reference it
        assert [sha for sha, _ in reg.gc(grace_seconds=0)] == [orphan_sha]
        assert sorted(reg.store.iter_blobs()) == [info["sha256"]]


@pytest.mark.parametrize("variable", ["REGISTRY_ARTIFACTS_DIR", "REGISTRY_ARTIFACTS_URL"])
def test_a_bucket_url_in_either_variable_is_the_bucket(
    s3_backend: Backend, s3: tuple[str, object], tmp_path: Path, variable: str
) -> None:
    """REGISTRY_ARTIFACTS_DIR=s3://bucket/prefix once became the local directory "s3:/bucket/prefix",
    where every artifact was then reported missing."""
    url, client = s3
    model = color_classifier(tmp_path / "model.onnx")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(color_metadata()))
    env = {**s3_backend.env, "REGISTRY_ARTIFACTS_DIR": "./var/artifacts", variable: url}
    proc = subprocess.run(
        [sys.executable, "-m", "registry", "register", "colors", str(model), "--meta", str(meta), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    sha = json.loads(proc.stdout)["sha256"]
    assert client.head_object(Bucket=url.split("/")[2], Key=f"models/sha256/{sha[:2]}/{sha}")
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "var").exists()  # no local directory


def test_corrupted_and_missing_objects_are_detected(
    s3_backend: Backend, s3: tuple[str, object], tmp_path: Path
) -> None:
    url, client = s3
    bucket = url.split("/")[2]
    model = color_classifier(tmp_path / "model.onnx")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(color_metadata()))
    cli(s3_backend, "register", "colors", str(model), "--meta", str(meta))
    sha = json.loads(cli(s3_backend, "show", "colors:1", "--json").stdout)["sha256"]
    key = f"models/sha256/{sha[:2]}/{sha}"
    client.put_object(Bucket=bucket, Key=key, Body=model.read_bytes()[:-4] + b"XXXX")
    proc = cli(s3_backend, "verify", check=False)
    assert proc.returncode == 6
    assert "sha256 mismatch" in proc.stderr and f"s3://{bucket}/{key}" in proc.stderr
    assert_one_line_error(cli(s3_backend, "export", "colors:1", str(tmp_path / "x"), check=False), 6, "is corrupted")
    assert_one_line_error(cli(s3_backend, "promote", "colors", "1", check=False), 8, "cannot be served")
    client.delete_object(Bucket=bucket, Key=key)
    proc = cli(s3_backend, "verify", check=False)
    assert proc.returncode == 6 and "missing" in proc.stderr


STALLED_UPLOAD = """
import sys, time
from pathlib import Path
from registry.s3 import S3ArtifactStore

store = S3ArtifactStore(sys.argv[1])
marker = Path(sys.argv[3])

def stall(params, **kwargs):
    if params.get("PartNumber", 1) > 1:  # the first part is in: the upload is under way
        marker.touch()
        time.sleep(600)

store.client.meta.events.register("before-parameter-build.s3.UploadPart", stall)
store.put_file(Path(sys.argv[2]))
"""


def test_a_killed_multipart_upload_leaves_nothing_visible_and_gc_aborts_it(
    s3_backend: Backend, s3: tuple[str, object], tmp_path: Path
) -> None:
    url, client = s3
    bucket = url.split("/")[2]
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(20 * 1024 * 1024))  # three parts of 8 MB
    marker = tmp_path / "stalled"
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLED_UPLOAD, url, str(big), str(marker)],
        env={**env_of(s3_backend), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(marker, proc, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # nothing visible
    assert len(client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    # gc aborts uploads begun before its grace period (moto dates every upload 2010, so the grace
    # cannot be shown protecting a live one here; a real bucket reports the true start).
    cli(s3_backend, "gc", "--grace", "0")
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_unreachable_bucket_is_one_line_naming_the_store(tmp_path: Path, s3_endpoint: str) -> None:
    local = _sqlite_backend(tmp_path)
    backend = Backend("sqlite+s3", local.database_url, "s3://no-such-bucket/models")  # type: ignore[arg-type]
    model = color_classifier(tmp_path / "model.onnx")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(color_metadata()))
    env = {**env_of(backend), **CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}
    proc = subprocess.run(
        [sys.executable, "-m", "registry", "register", "colors", str(model), "--meta", str(meta)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(proc, 9, "artifact store s3://no-such-bucket/models")
    assert "NoSuchBucket" in proc.stderr


def test_a_local_store_is_copied_into_a_bucket(backend: Backend, s3: tuple[str, object], tmp_path: Path) -> None:
    """Moving a deployment: `registry store copy s3://…`, then point REGISTRY_ARTIFACTS_URL at it."""
    url, _ = s3
    model = color_classifier(tmp_path / "model.onnx")
    plot = tmp_path / "curves.png"
    plot.write_bytes(b"not really a plot")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(color_metadata()))
    run(backend, "register", "colors", str(model), "--meta", str(meta), "--extra", str(plot))
    run(backend, "register", "colors", str(model), "--meta", str(meta))  # the same blob twice
    out = run(backend, "store", "copy", url).stdout
    assert "copied 2 artifacts" in out and "0 problems" in out
    assert "copied 0 artifacts" in run(backend, "store", "copy", url).stdout  # idempotent
    moved = Backend(backend.kind, backend.database_url, url)  # type: ignore[arg-type]
    assert "checked 3 artifacts, 0 problems" in cli(moved, "verify").stdout
    assert cli(moved, "export", "colors:2", str(tmp_path / "out")).returncode == 0
    assert (tmp_path / "out" / "model.onnx").read_bytes() == model.read_bytes()


def test_an_endpoint_that_is_no_url_is_one_line(tmp_path: Path) -> None:
    local = _sqlite_backend(tmp_path)
    env = {**local.env, "REGISTRY_ARTIFACTS_URL": "s3://bucket/prefix", "AWS_ENDPOINT_URL": "not a url"}
    proc = subprocess.run(
        [sys.executable, "-m", "registry", "gc", "--dry-run"], env=env, capture_output=True, text=True, timeout=120
    )
    assert_one_line_error(proc, 4, "artifact store 's3://bucket/prefix': cannot make an S3 client: Invalid endpoint")
