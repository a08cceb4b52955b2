"""Run the server as users do: `python -m app` in its own process, on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _interactive_signals() -> None:
    """In the server's process before it runs: Ctrl-C as a terminal gives it, whatever the tests
    were started with (a shell runs a job it puts in the background with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def server_process(
    env: dict[str, str],
    *,
    port: int | None = None,
    ready_timeout: float = 60,
    log_level: str = "warning",
    workers: int | None = None,
    own_group: bool = False,
) -> Iterator[Server]:
    """``workers``: front-end processes (`--workers`); None leaves the server's default (auto).
    ``own_group``: the server leads a process group of its own, which a test may signal whole."""
    port = port or free_port()
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed below
    extra = ["--workers", str(workers)] if workers is not None else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--log-level", log_level, *extra],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=own_group,
        preexec_fn=_interactive_signals,
    )
    started = time.monotonic()
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = started + ready_timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"server exited with {proc.returncode}: {log.read()}")
            try:
                if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.05)
        server.ready_after = time.monotonic() - started
        yield server
    finally:
        # Its processes, named now: once the server is gone they are no longer its children.
        processes = descendants(proc.pid)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        kill_leftovers(processes)
        log.close()


def kill_leftovers(processes: list[tuple[int, int]]) -> None:
    """SIGKILL those of ``processes`` (pids with start times, from `descendants`) that still run.

    A process the server could not stop (a test that failed left one stuck in a model run) would
    otherwise outlive the test and take CPU from the rest of the suite."""
    for pid, started in processes:
        stat = proc_stat(pid)
        if stat is not None and stat.started == started:  # not a new process given its pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class ProcStat(NamedTuple):
    state: str  # "Z": it exited, and its parent has not reaped it yet
    parent: int
    cpu_ticks: int  # user and system time, in clock ticks
    started: int  # clock ticks after boot


def proc_stat(pid: int) -> ProcStat | None:
    """What /proc/PID/stat says of a process; None once it is gone (or where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # after the command name
    except OSError:
        return None
    return ProcStat(fields[0], int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]))


def descendants(pid: int) -> list[tuple[int, int]]:
    """The processes below ``pid`` with their start times (none where there is no /proc)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat.parent, []).append((int(entry.name), stat.started))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


class Server:
    def __init__(self, proc: subprocess.Popen[str], url: str, log: IO[str]) -> None:
        self.proc = proc
        self.url = url
        self.ready_after = 0.0
        self._log = log

    def log_text(self) -> str:
        self._log.seek(0)
        return self._log.read()
