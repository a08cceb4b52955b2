"""The `registry` command as ops run it: a real process, real exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Backend, PostgresServer, _sqlite_backend
from tests.netutil import tcp_forwarder
from tests.onnx_models import color_classifier, color_metadata
from tests.server import free_port


def run(backend: Backend, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "registry", *args], env=backend.env, capture_output=True, text=True, timeout=60
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess[str], exit_code: int, message: str) -> None:
    assert proc.returncode == exit_code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("registry: error: ")
    assert message in lines[0]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    model = color_classifier(tmp_path / "model.onnx")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(color_metadata()))
    return model, meta


def test_readme_workflow(backend: Backend, files: tuple[Path, Path]) -> None:
    model, meta = files
    assert "registered colors v1" in run(backend, "register", "colors", str(model), "--meta", str(meta)).stdout
    assert "registered colors v2" in run(backend, "register", "colors", str(model), "--meta", str(meta)).stdout
    run(backend, "promote", "colors", "1", "--reason", "first release", "--actor", "alice")
    out = run(backend, "promote", "colors", "2", "--reason", "retrained", "--actor", "alice").stdout
    assert "colors@production: v1 -> v2" in out
    out = run(backend, "rollback", "colors", "--reason", "v2 regressed", "--actor", "bob").stdout
    assert "colors@production: v2 -> v1 (rollback by bob)" in out

    history = json.loads(run(backend, "history", "colors", "--json").stdout)
    assert [(h["from_version"], h["to_version"], h["actor"], h["reason"]) for h in history] == [
        (None, 1, "alice", "first release"),
        (1, 2, "alice", "retrained"),
        (2, 1, "bob", "v2 regressed"),
    ]
    table = run(backend, "history", "colors").stdout
    assert "v2 regressed" in table
    assert "rollback" in table

    shown = run(backend, "show", "colors@production").stdout
    assert "version:      1 (ready)" in shown
    assert "labels:       red, green, blue" in shown
    assert "checked 2 artifacts, 0 problems" in run(backend, "verify").stdout
    models = json.loads(run(backend, "models", "--json").stdout)
    assert models[0]["aliases"] == {"production": 1}
    assert "production" in run(backend, "versions", "colors").stdout


def test_actor_defaults_to_os_user(backend: Backend, files: tuple[Path, Path]) -> None:
    model, meta = files
    run(backend, "register", "colors", str(model), "--meta", str(meta))
    run(backend, "promote", "colors", "1")
    import getpass

    assert json.loads(run(backend, "history", "colors", "--json").stdout)[0]["actor"] == getpass.getuser()


def test_export_then_register_elsewhere(backend: Backend, files: tuple[Path, Path], tmp_path: Path) -> None:
    model, meta = files
    run(backend, "register", "colors", str(model), "--meta", str(meta))
    out_dir = tmp_path / "exported"
    run(backend, "export", "colors:1", str(out_dir))
    assert (out_dir / "model.onnx").read_bytes() == model.read_bytes()

    other = Backend("sqlite", f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "other-artifacts")
    run(other, "db", "upgrade")
    run(other, "register", "colors", str(out_dir / "model.onnx"), "--meta", str(out_dir / "meta.json"))
    original = json.loads(run(backend, "show", "colors:1", "--json").stdout)
    copied = json.loads(run(other, "show", "colors:1", "--json").stdout)
    assert copied["metadata"] == original["metadata"]
    assert copied["sha256"] == original["sha256"]


def test_export_keeps_other_files_unless_told_and_runs_again(files: tuple[Path, Path], tmp_path: Path) -> None:
    """A directory that already holds a different model.onnx (a training run's) is left as it is.
    (The files are the CLI's business: one kind of database is enough.)"""
    backend = _sqlite_backend(tmp_path)
    model, meta = files
    run(backend, "register", "colors", str(model), "--meta", str(meta))
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "model.onnx").write_bytes(b"a model trained here")
    proc = run(backend, "export", "colors:1", str(out_dir), check=False)
    assert_one_line_error(proc, 5, "already holds model.onnx with other contents")
    assert (out_dir / "model.onnx").read_bytes() == b"a model trained here"
    assert not (out_dir / "meta.json").exists()  # nothing written when anything is refused

    run(backend, "export", "colors:1", str(out_dir), "--overwrite")
    assert (out_dir / "model.onnx").read_bytes() == model.read_bytes()
    run(backend, "export", "colors:1", str(out_dir))  # again: the same bytes are there already
    assert sorted(p.name for p in out_dir.iterdir()) == ["meta.json", "model.onnx"]  # no temporary left

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_one_line_error(run(backend, "export", "colors:1", str(a_file), check=False), 4, "is not a directory")


def test_verify_fails_on_corruption(backend: Backend, files: tuple[Path, Path]) -> None:
    model, meta = files
    run(backend, "register", "colors", str(model), "--meta", str(meta))
    sha = json.loads(run(backend, "show", "colors:1", "--json").stdout)["sha256"]
    blob = backend.artifacts_dir / "sha256" / sha[:2] / sha
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    proc = run(backend, "verify", check=False)
    assert proc.returncode == 6
    assert "colors v1 model.onnx: sha256 mismatch" in proc.stderr
    assert_one_line_error(run(backend, "export", "colors:1", "/tmp/x", check=False), 6, "colors v1 is corrupted")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["show", "nosuch"], 3, "no model named 'nosuch'"),
        (["show", "Bad:1"], 4, "invalid model name 'Bad'"),
        (["show", "colors:x"], 4, "invalid version 'x'"),
        (["show", "colors@staging"], 3, "has no alias 'staging'"),
        (["promote", "colors", "9"], 3, "has no version 9"),
        (["promote", "colors", "1", "--alias", "Prod"], 4, "invalid alias 'Prod'"),
        (["rollback", "colors"], 3, "has no alias 'production'"),
        (["register", "colors", "missing.onnx", "--meta", "missing.json"], 4, "does not exist"),
    ],
)
def test_failures_are_one_line(
    backend: Backend, files: tuple[Path, Path], args: list[str], code: int, message: str
) -> None:
    model, meta = files
    run(backend, "register", "colors", str(model), "--meta", str(meta))
    assert_one_line_error(run(backend, *args, check=False), code, message)


def test_promoting_archived_version_fails(backend: Backend, files: tuple[Path, Path]) -> None:
    model, meta = files
    run(backend, "register", "colors", str(model), "--meta", str(meta))
    run(backend, "archive", "colors", "1")
    assert_one_line_error(run(backend, "promote", "colors", "1", check=False), 5, "archived")


def test_bad_metadata_file(backend: Backend, files: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = files
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_one_line_error(
        run(backend, "register", "c", str(model), "--meta", str(bad), check=False), 4, "not valid JSON"
    )
    bad.write_text(json.dumps({"contract": {"labels": ["x"]}}))
    assert_one_line_error(
        run(backend, "register", "c", str(model), "--meta", str(bad), check=False), 4, "invalid metadata"
    )


def test_two_extras_of_one_name_are_refused_not_one_dropped(files: tuple[Path, Path], tmp_path: Path) -> None:
    backend = _sqlite_backend(tmp_path)
    model, meta = files
    for run_name in ("a", "b"):
        (tmp_path / run_name).mkdir()
        (tmp_path / run_name / "curves.png").write_bytes(run_name.encode())
    proc = run(
        backend,
        "register",
        "colors",
        str(model),
        "--meta",
        str(meta),
        "--extra",
        str(tmp_path / "a" / "curves.png"),
        "--extra",
        str(tmp_path / "b" / "curves.png"),
        check=False,
    )
    assert_one_line_error(proc, 4, "two --extra files are named 'curves.png'")
    assert json.loads(run(backend, "models", "--json").stdout) == []  # nothing registered


def test_schema_out_of_date_and_upgrade(empty_backend: Backend) -> None:
    assert_one_line_error(run(empty_backend, "models", check=False), 7, "run `registry db upgrade`")
    assert "is at revision" in run(empty_backend, "db", "upgrade").stdout
    run(empty_backend, "models")


def test_unreachable_database(tmp_path: Path) -> None:
    down = Backend("postgres", "postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path)
    assert_one_line_error(run(down, "models", check=False), 7, "cannot reach the registry database")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus"], "No such command 'bogus'"),
        (["promote", "digits"], "Missing argument 'version'"),
        (["promote", "digits", "two"], "Invalid value for"),
        (["versions", "colors", "--colour"], "No such option: --colour"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    nowhere = Backend("sqlite", f"sqlite:///{tmp_path / 'unused.db'}", tmp_path)
    proc = run(nowhere, *args, check=False)
    assert_one_line_error(proc, 2, message)
    assert "registry --help" in proc.stderr


def test_a_corrupt_database_file_is_exit_7_for_every_command(tmp_path: Path) -> None:
    (tmp_path / "registry.db").write_bytes(b"this is not a SQLite database, just bytes" * 200)
    corrupt = Backend("sqlite", f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    for args in (["models"], ["db", "current"], ["db", "upgrade"]):
        proc = run(corrupt, *args, check=False)
        assert_one_line_error(proc, 7, "registry.db")


def test_db_upgrade_waits_for_a_database_that_is_still_starting(postgres: PostgresServer, tmp_path: Path) -> None:
    """`migrate` in compose may start before PostgreSQL accepts TCP: it retries until it does."""
    url = make_url(postgres.new_database(migrated=False))
    port = free_port()
    late = Backend("postgres", url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False), tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry", "db", "upgrade", "--wait", "60"],
        env=late.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # it said it is waiting: the database is not there yet
    assert "waiting for the registry database" in first
    with tcp_forwarder(port, (url.host or "127.0.0.1", url.port or 5432)):
        out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "is at revision" in out

    gone = Backend("postgres", url.set(host="127.0.0.1", port=free_port()).render_as_string(), tmp_path)
    proc = run(gone, "db", "upgrade", "--wait", "1", check=False)
    assert proc.returncode == 7
    waiting, error = proc.stderr.strip().splitlines()  # a progress line, then the error
    assert "waiting for the registry database" in waiting
    assert error.startswith("registry: error: cannot reach the registry database")
    assert "(tried " in error


def test_help_and_usage_errors_do_not_load_the_database_libraries() -> None:
    """`registry --help` must answer at once: none of SQLAlchemy, Alembic, pydantic or ONNX Runtime."""
    code = (
        "import sys, time\n"
        "started = time.perf_counter()\n"
        "from registry.cli import app\n"
        "try:\n"
        "    app(['--help'], prog_name='registry', standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(loaded & {'sqlalchemy', 'alembic', 'pydantic', 'onnxruntime'})\n"
        "print(heavy, f'{time.perf_counter() - started:.3f}', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    heavy, seconds = proc.stderr.strip().splitlines()[-1].rsplit(" ", 1)
    print(f"registry --help in {seconds} s")
    assert heavy == "[]"
