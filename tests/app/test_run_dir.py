"""Where a multi-worker host puts its unix sockets (`app.host.make_run_dir`): a unix socket's path
has at most about a hundred bytes, and a deep TMPDIR must not leave the host unable to start."""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import host
from app.host import SOCKET_PATH_MAX, make_run_dir, socket_path


def deep(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name / ("d" * 100)
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory with a short path: pytest's own (tmp_path) can be long enough that the sockets
    do not fit under it, as under pytest-xdist (`.../popen-gw1/test_name0`)."""
    directory = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory)


def test_a_temp_directory_too_deep_for_the_sockets_gives_way_to_the_next(tmp_path: Path, short: Path) -> None:
    too_deep = deep(tmp_path, "a")
    run_dir = make_run_dir(2, parents=(str(too_deep), str(short)))
    assert run_dir.parent == short
    assert len(socket_path(run_dir, 1)) <= SOCKET_PATH_MAX
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700  # only this user's processes connect
    assert list(too_deep.iterdir()) == []  # nothing left where it did not fit


def test_the_temp_directory_is_used_when_the_sockets_fit(short: Path) -> None:
    assert make_run_dir(1, parents=(str(short), "/nonexistent")).parent == short


def test_no_directory_that_fits_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    first, second = deep(tmp_path, "a"), deep(tmp_path, "b")
    with pytest.raises(OSError, match="set TMPDIR to a shorter directory") as raised:
        make_run_dir(1, parents=(str(first), str(second)))
    assert str(first) in str(raised.value) and str(second) in str(raised.value)
    assert list(first.iterdir()) == [] and list(second.iterdir()) == []


def test_the_host_refuses_to_start_with_one_line_when_no_directory_fits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_room(devices: int) -> Path:
        raise OSError("no directory for the inference sockets: set TMPDIR to a shorter directory")

    monkeypatch.setattr(host, "make_run_dir", no_room)
    supervisor = host.Supervisor(host="127.0.0.1", port=0, workers=2, log_level="warning", cpus=2)
    assert supervisor.run() == 1
    err = capsys.readouterr().err
    assert err == "imgserve: no directory for the inference sockets: set TMPDIR to a shorter directory\n"
