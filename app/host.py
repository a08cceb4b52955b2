"""One host, all of it: `python -m app --workers N` runs a supervisor, N front ends and one inference
process per device.

    supervisor (this module's `Supervisor`)       binds the listening sockets, starts and restarts the others
    ├── front end x N  (`python -m app.host frontend`)   HTTP, auth, limits, decoding, ranking; share the port
    └── inference x K  (`python -m app.host inference`)  the model manager and the batchers, for every front end

K is `SERVE_INFERENCE_PROCESSES`: by default one per GPU (each started with `CUDA_VISIBLE_DEVICES`
naming its GPU), or one on a host without. Every front end connects to every inference process and
sends each request to the least busy one that is up (`app.ipc.Devices`).

Each front end accepts on a listening socket of its own, all bound to the one port with
SO_REUSEPORT on Linux: the kernel spreads new connections evenly over them. (On one shared socket,
whichever process woke first took a whole burst of connections: 30 of 32 keep-alive clients could
land on one front end while the other idled.) The supervisor holds these sockets; when a front
end dies, its socket is closed, so new connections go to the others until it is back.

The front ends and the inference processes talk over unix sockets in a directory the supervisor
makes (`app.ipc`). When an inference process dies, the front ends see their connections close:
what waited on it goes to another inference process when there is one up, and gets 503 at once
otherwise; the supervisor starts a new one, which loads the served versions again. A front end
that dies is started again. SIGTERM (or SIGINT) stops the front ends first, which stop accepting
and finish their requests, then the inference processes; exit 0, or 1 when one of them did not
stop cleanly (it had to be killed, or left a model run unfinished). The other processes leave
Ctrl-C to the supervisor, also when a terminal sends it to each of them: a second one makes the
supervisor kill them all at once.

A process that cannot start at all (a required GPU missing, a broken configuration: exit status 3)
stops the whole host with status 3 rather than being restarted in a loop.

A process that hangs (its event loop stuck, its sockets still open) is killed and started again:
each one's event loop beats down a pipe to the supervisor (`app.heartbeat`), and one that stops
beating for `SERVE_HANG_TIMEOUT_S` gets SIGKILL. An inference process also stops beating while a
model run has gone on for longer than any client waits for it (`SERVE_INFERENCE_TIMEOUT_S`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.heartbeat import beating

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    import uvicorn

    from app.batcher import RunsInProgress
    from app.settings import Settings

log = logging.getLogger("app.host")

FATAL = 3  # a process that cannot start: uvicorn's status when the lifespan fails, and the inference process's
STOP_FRONT_ENDS_S = 40.0  # uvicorn's graceful shutdown takes up to 30 s
STOP_INFERENCE_S = 30.0
STOP_GRACE_S = 1.5  # an inference process told to stop waits this long for front ends to say they stop too
QUICK_DEATH_S = 5.0  # a process that dies sooner than this after starting is restarted with a growing delay
SUSPENDED_S = 1.0  # the supervisor's own loop stalled this long: it was stopped (Ctrl-Z) or starved, not its children


@dataclass
class Child:
    role: str  # "inference" or "frontend"
    slot: int
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = None
    delay: float = 0.5
    restarts: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    listener: socket.socket | None = None  # a front end's listening socket, held by the supervisor too
    beats: int | None = None  # the read end of the pipe its event loop beats down (app.heartbeat)
    beat_at: float | None = None  # when it last beat; None: not yet since it started (it is importing, loading)
    hung: bool = False  # killed for not beating

    @property
    def name(self) -> str:
        return f"{self.role}-{self.slot}"


FRONT_END_INLINE_PIXELS = 256 * 256  # a front end decodes a request this size on its loop
# A unix socket's path holds at most 107 bytes on Linux and 103 on macOS and the BSDs (sun_path,
# less its closing NUL).
SOCKET_PATH_MAX = 103
MALLOC_MMAP_THRESHOLD_BYTES = 32 << 20
MALLOC_TRIM_THRESHOLD_BYTES = 64 << 20


def socket_path(run_dir: Path, device: int = 0) -> str:
    """Where inference process ``device`` listens for the front ends."""
    return str(run_dir / f"inference-{device}.sock")


def make_run_dir(devices: int, parents: tuple[str | None, ...] = (None, "/tmp")) -> Path:  # noqa: S108 - mkdtemp: private
    """A new private directory (mode 0700) for the host's unix sockets and metric files, made in the
    first of ``parents`` (None: the temp directory, `TMPDIR`) where the sockets' paths fit.

    A deep `TMPDIR` (a CI workspace, macOS's /var/folders/...) would leave the inference process
    unable to listen; /tmp is then used instead. OSError, with a message saying so, when no parent
    will do."""
    tried = []
    for parent in parents:
        run_dir = Path(tempfile.mkdtemp(prefix="imgserve-", dir=parent))
        longest = socket_path(run_dir, devices - 1)
        if len(os.fsencode(longest)) <= SOCKET_PATH_MAX:
            return run_dir
        run_dir.rmdir()
        tried.append(str(run_dir.parent))
    raise OSError(
        f"no directory for the inference sockets: a unix socket's path may have at most {SOCKET_PATH_MAX} bytes, "
        f"and under {' or '.join(tried)} it would have more; set TMPDIR to a shorter directory"
    )


def thread_budget(
    cpus: int, workers: int, environ: dict[str, str], *, cpu_inference: int = 1
) -> tuple[dict[str, str], dict[str, str]]:
    """The thread settings the front ends and the inference processes get, unless set explicitly.

    With one front end per CPU, every core already runs an event loop and its decoders, so each
    front end gets 2 decoding threads (not 2 per core of the host), and decodes a request of up to
    `FRONT_END_INLINE_PIXELS` on its event loop: small images cost mostly Python work that holds the
    GIL, which a thread cannot run beside the loop, so handing them over only adds two hand-offs.
    Photos still go to the threads: JPEG decoding lets go of the GIL, and the kernel spreads
    keep-alive connections unevenly, so the busier front ends need more than one core
    (docs/performance.md). ONNX Runtime keeps one thread per core
    in the one process that runs models: its idle threads sleep (no spinning, see app.backend), and
    with fewer, model-heavy requests (S3, S4) lost half their throughput. When ``cpu_inference``
    processes run models on the CPU, they split the cores instead of each taking them all."""
    front_end: dict[str, str] = {}
    inference: dict[str, str] = {}
    if cpu_inference > 1 and "SERVE_INTRA_OP_THREADS" not in environ:
        inference["SERVE_INTRA_OP_THREADS"] = str(max(1, cpus // cpu_inference))
    if "SERVE_DECODE_THREADS" not in environ:
        front_end["SERVE_DECODE_THREADS"] = str(max(2, min(8, 2 * cpus // workers)))
    if "SERVE_DECODE_INLINE_PIXELS" not in environ and workers >= cpus:
        front_end["SERVE_DECODE_INLINE_PIXELS"] = str(FRONT_END_INLINE_PIXELS)
    return front_end, inference


def allocator_env(environ: dict[str, str]) -> dict[str, str]:
    """glibc malloc settings every process of the host starts with, unless the operator set their own.

    Image rows cross between the processes in buffers of 100 KB to a few MB, one per message,
    allocated as it arrives and freed once its batch has run. By default glibc gives memory that
    large back to the kernel when it is freed (an munmap, or a trim of its heap's top), so every
    new buffer was paid for again in page faults: about 7 a request of 8 images (S4) in the
    inference process, where receiving such messages then cost about 1.6 times the CPU
    (docs/performance.md). With allocations up to 32 MB served from the heap, and up to 64 MB
    of free heap kept, the buffers are reused; the cost is memory a process keeps after a peak.
    Other C libraries ignore these variables. An operator's own `MALLOC_MMAP_THRESHOLD_`,
    `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` malloc settings are kept, and then none of these
    is added (either one alone keeps the faults)."""
    own = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & environ.keys()
    if own or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return {}
    return {
        "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD_BYTES),
        "MALLOC_TRIM_THRESHOLD_": str(MALLOC_TRIM_THRESHOLD_BYTES),
    }


class Supervisor:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        workers: int,
        log_level: str,
        cpus: int | None = None,
        devices: list[str | None] | None = None,
        hang_timeout_s: float = 10.0,
    ) -> None:
        """``devices``: the GPU of each inference process (`app.cpus.inference_devices`); one on the CPU by default.
        ``hang_timeout_s``: a process that has beaten once and then not for this long is killed (0: never)."""
        from app.cpus import available_cpus

        self.host = host
        self.port = port
        self.workers = workers
        self.devices = devices or [None]
        self.log_level = log_level
        self.cpus = cpus or available_cpus()
        self.hang_timeout_s = hang_timeout_s
        self._stopping = False
        self._shared: socket.socket | None = None  # without SO_REUSEPORT: the one socket every front end accepts on
        self._signals = 0

    def run(self) -> int:
        try:
            run_dir = make_run_dir(len(self.devices))
            (run_dir / "metrics").mkdir()
        except OSError as exc:
            print(f"imgserve: {exc}", file=sys.stderr)
            return 1
        try:
            self.port = _claim(self.host, self.port)
            listeners: list[socket.socket | None] = [None] * self.workers
            if REUSE_PORT:
                listeners = [listen(self.host, self.port, reuse_port=True) for _ in range(self.workers)]
            else:
                self._shared = listen(self.host, self.port)
        except OSError as exc:
            print(f"imgserve: {cannot_listen(self.host, self.port, exc)}", file=sys.stderr)
            shutil.rmtree(run_dir, ignore_errors=True)
            return 1
        base = [sys.executable, "-m", "app.host"]
        common = ["--run-dir", str(run_dir), "--log-level", self.log_level]
        front_env, inference_env = thread_budget(
            self.cpus, self.workers, dict(os.environ), cpu_inference=self.devices.count(None)
        )
        allocator = allocator_env(dict(os.environ))
        devices = ["--devices", str(len(self.devices))]
        inference = [
            Child(
                "inference",
                device,
                [*base, "inference", *common, "--frontends", str(self.workers), "--device", str(device), *devices],
                extra={**allocator, **inference_env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})},
            )
            for device, gpu in enumerate(self.devices)
        ]
        front_ends = [
            Child(
                "frontend",
                slot,
                [*base, "frontend", *common, "--slot", str(slot), *devices],
                extra={**allocator, **front_env},
                listener=listeners[slot],
            )
            for slot in range(self.workers)
        ]
        children = [*inference, *front_ends]
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        gpus = [gpu for gpu in self.devices if gpu is not None]
        log.info(
            "serving on http://%s:%d with %d front-end processes and %d inference %s (%d CPUs%s; %s)",
            self.host,
            self.port,
            self.workers,
            len(self.devices),
            "process" if len(self.devices) == 1 else "processes",
            self.cpus,
            f"; GPUs {', '.join(gpus)}" if gpus else "",
            ", ".join(f"{k}={v}" for k, v in {**front_env, **inference_env, **allocator}.items()) or "as configured",
        )
        status = 0
        try:
            for child in children:
                self._start(child)
            with contextlib.suppress(KeyboardInterrupt):  # told twice before the loop saw the first
                status = self._watch_until_stopped(children)
        finally:
            for listener in [self._shared, *(child.listener for child in front_ends)]:
                if listener is not None:  # new connections are refused once the front ends close theirs too
                    listener.close()
            status = status or self._stop_all(front_ends, inference)
            for child in children:
                self._close_beats(child)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(run_dir, ignore_errors=True)
        return status

    def _watch_until_stopped(self, children: list[Child]) -> int:
        """Restart what dies or hangs until told to stop; a status to stop the host with, or 0."""
        tick = time.monotonic()
        while not self._stopping:
            time.sleep(0.05)
            now = time.monotonic()
            if now - tick > SUSPENDED_S:  # every process stood still with it: none of them hangs
                for child in children:
                    if child.beat_at is not None:
                        child.beat_at = now
            tick = now
            for child in children:
                status = self._watch(child, now)
                if status:
                    return status
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        self._stopping = True
        if self._signals == 2:  # a second Ctrl-C: do not wait for the drain (a third changes nothing)
            raise KeyboardInterrupt

    def _start(self, child: Child) -> None:
        command = child.command
        fds: tuple[int, ...] = ()
        if child.role == "frontend":
            listener = self._shared or child.listener
            if listener is None:  # a restart: the socket closed with the process that died
                try:
                    listener = child.listener = listen(self.host, self.port, reuse_port=True)
                except OSError as exc:  # the port was taken meanwhile: try again at the next restart
                    log.error("%s cannot listen on port %d: %s", child.name, self.port, exc.strerror or exc)
                    child.restart_at = time.monotonic() + child.delay
                    return
            fds = (listener.fileno(),)
            command = [*command, "--fd", str(listener.fileno())]
        self._close_beats(child)
        beats, beat_end = os.pipe()
        os.set_blocking(beats, False)
        try:
            child.process = subprocess.Popen(
                [*command, "--beat-fd", str(beat_end)], pass_fds=(*fds, beat_end), env={**os.environ, **child.extra}
            )
        finally:
            os.close(beat_end)  # the child's now: at its exit the pipe reads as closed
        child.beats, child.beat_at, child.hung = beats, None, False
        child.started = time.monotonic()
        child.restart_at = None

    @staticmethod
    def _close_beats(child: Child) -> None:
        if child.beats is not None:
            os.close(child.beats)
            child.beats = None

    def _check_beats(self, child: Child, now: float) -> None:
        """Read what ``child`` beat since the last look; kill it when it has stopped beating."""
        if child.beats is not None:
            try:
                if os.read(child.beats, 4096):
                    child.beat_at = now
                else:  # it closed its end: it is exiting, and should be gone soon
                    self._close_beats(child)
            except BlockingIOError:  # nothing new
                pass
        timeout = self.hang_timeout_s
        if timeout and not child.hung and child.beat_at is not None and now - child.beat_at > timeout:
            assert child.process is not None
            log.error(
                "%s has sent no heartbeat for %.1f s, it hangs: killing it to start it again (SERVE_HANG_TIMEOUT_S=%g)",
                child.name,
                now - child.beat_at,
                timeout,
            )
            child.hung = True
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()

    def _watch(self, child: Child, now: float) -> int:
        """Restart ``child`` if it died (after its delay); a status to stop the host with, or 0."""
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restarts += 1
                self._start(child)
            return 0
        assert child.process is not None
        code = child.process.poll()
        if code is None:
            self._check_beats(child, now)
            return 0
        if child.listener is not None:  # connections it had not accepted are lost with it; new ones go to the others
            child.listener.close()
            child.listener = None
        if code == FATAL and child.restarts == 0:
            log.error("%s cannot start (exit status %d): stopping", child.name, code)
            return FATAL
        lived = now - child.started
        child.delay = min(10.0, child.delay * 2) if lived < QUICK_DEATH_S else 0.1
        child.restart_at = now + child.delay
        log.error("%s exited with status %d after %.1f s: restarting in %.1f s", child.name, code, lived, child.delay)
        return 0

    def _stop_all(self, front_ends: list[Child], inference: list[Child]) -> int:
        """Stop the front ends, then the inference processes; the status to exit with (see `_unclean_stop`).
        Told a second time to stop, kill them all at once: 1."""
        children = [*inference, *front_ends]
        if self._signals < 2:
            try:
                self._stop(front_ends, STOP_FRONT_ENDS_S)
                self._stop(inference, STOP_INFERENCE_S)
                return _unclean_stop(children)
            except KeyboardInterrupt:  # told again meanwhile
                pass
        log.warning("told again to stop: killing every process without waiting for the requests in flight")
        running = [child.process for child in children if child.process is not None and child.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        for process in running:
            process.wait()
        return 1

    def _stop(self, children: list[Child], timeout: float) -> None:
        """SIGTERM to each of ``children`` that runs, SIGKILL to those still there after ``timeout``."""
        running = [(c.name, c.process) for c in children if c.process is not None and c.process.poll() is None]
        for _, process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %g s of SIGTERM: killing it", name, timeout)
                process.kill()
                process.wait()


STOPPED_CLEANLY = (0, -signal.SIGTERM, -signal.SIGINT)  # a process told twice ends with the signal, its drain done


def _unclean_stop(children: list[Child]) -> int:
    """1 when a process ended the stop other than cleanly, as the one process of `--workers 1` would
    exit: it left a model run unfinished (status 1), or had to be killed. Else 0."""
    ended = [
        (child.name, child.process.poll())
        for child in children
        if child.restart_at is None and child.process is not None  # one with a restart due was logged when it died
    ]
    unclean = [(name, code) for name, code in ended if code not in (None, *STOPPED_CLEANLY)]
    for name, code in unclean:
        log.error("%s ended the stop with status %d: exiting with status 1", name, code)
    return 1 if unclean else 0


REUSE_PORT = sys.platform == "linux"  # elsewhere SO_REUSEPORT does not spread connections: one shared socket


def _socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _claim(host: str, port: int) -> int:
    """Check that ``port`` is free, without SO_REUSEPORT: a port another server holds, even one that
    shares it with SO_REUSEPORT, is refused here instead of being silently split with it. The
    port (an ephemeral one for 0)."""
    with _socket(host) as probe:
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, inheritable by the processes this one starts."""
    sock = _socket(host)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


# -- the processes it starts -------------------------------------------------------------------------


async def _until_stopped(stop: asyncio.Event) -> None:
    """Until SIGTERM, or until the supervisor is gone (killed with SIGKILL, it could not tell us)."""
    parent = os.getppid()
    while os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()
                return
    log.error("the supervisor is gone: stopping")


async def _serve_inference(run_dir: Path, frontends: int, device: int, devices: int, beat_fd: int | None) -> int:
    supervisor = os.getppid()

    def remove_run_dir_if_orphaned() -> None:
        if device == 0 and os.getppid() != supervisor:
            # The supervisor was killed and cannot remove the run directory (its sockets and metric
            # files). The front ends have stopped by now (this process waited for them), so the
            # directory is no one's any more.
            shutil.rmtree(run_dir, ignore_errors=True)

    try:
        return await _serve_models(run_dir, frontends, device, devices, beat_fd, remove_run_dir_if_orphaned)
    finally:
        remove_run_dir_if_orphaned()


async def _serve_models(
    run_dir: Path, frontends: int, device: int, devices: int, beat_fd: int | None, before_exit: Callable[[], None]
) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from app.backend import GpuUnavailableError
    from app.ipc import InferenceEndpoint
    from app.main import local_serving, ort_backend_factory
    from app.metrics import Metrics
    from app.settings import Settings
    from registry import Registry, RegistryError

    settings = Settings()
    try:
        backend_factory = ort_backend_factory(settings)
    except GpuUnavailableError as exc:
        log.error("%s", exc)
        return FATAL
    metrics = Metrics()
    try:
        registry = Registry.from_settings(settings.registry)
    except RegistryError as exc:  # a malformed setting: one line, and the host stops
        log.error("%s", exc.message)
        return FATAL
    loader_executor = ThreadPoolExecutor(2, thread_name_prefix="loader")
    endpoint: InferenceEndpoint | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # Ctrl-C reaches the supervisor, which stops us in turn
    # Beats only from here: the imports and set-up above hold the loop up to seconds on a busy host.
    with beating(beat_fd) as heartbeat:
        try:
            async with local_serving(
                settings,
                registry,
                metrics,
                can_grow=lambda queued: endpoint is not None and endpoint.can_grow(queued),
                backend_factory=backend_factory,
                loader_executor=loader_executor,
                before_exit=before_exit,
            ) as serving:
                if heartbeat is not None:
                    heartbeat.check = _no_run_outlasts(serving.manager.loader.runs, settings)
                endpoint = InferenceEndpoint(serving, run_dir, frontends=frontends, device=device, devices=devices)
                try:
                    await endpoint.start()  # the front ends hear from it while the models load
                except OSError as exc:  # it would fail the same way again: stop the host
                    log.error("cannot listen for the front ends on %s: %s", socket_path(run_dir, device), exc)
                    return FATAL
                try:
                    await serving.manager.start()
                except GpuUnavailableError as exc:
                    log.error("%s", exc)
                    return FATAL
                await _until_stopped(stop)
                await endpoint.until_front_ends_stop(grace_s=STOP_GRACE_S, limit_s=STOP_FRONT_ENDS_S)
                return 0
        finally:
            if endpoint is not None:
                await endpoint.close()
            loader_executor.shutdown(wait=True)
            registry.close()


def _no_run_outlasts(runs: RunsInProgress, settings: Settings) -> Callable[[], bool]:
    """The inference process's heartbeat check: no model run is lost (`app.serving.lost_run`).
    Such a run leaves the event loop free, so without this the process would go on beating while
    every batch after the run waits behind it. Without beats, the supervisor restarts the process."""
    from app.serving import lost_run

    said = False

    def check() -> bool:
        nonlocal said
        lost = lost_run(runs, settings.inference_timeout_s)
        if lost is None:
            said = False
            return True
        if not said:
            log.error("%s: no more heartbeats, so that the supervisor starts this process again", lost)
            said = True
        return False

    return check


def stop_quietly(server: uvicorn.Server) -> None:
    """SIGTERM and Ctrl-C stop ``server`` gracefully, and `server.run` returns: the process exits 0.

    uvicorn handles both while it serves; once it has shut down, it raises the signal again under
    the handler that was there before it started. Python's defaults would then end the process
    with status 143 (SIGTERM), or a KeyboardInterrupt traceback (Ctrl-C). This handler is the one
    it finds: it asks the server to stop, which it has by then. A signal in the moment before
    uvicorn takes over stops it as soon as it has started."""

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def _serve_front_end(run_dir: Path, slot: int, fd: int, log_level: str, devices: int, beat_fd: int | None) -> int:
    import uvicorn

    from app.main import FrontEnd, create_app, registry_settings_problem
    from app.protocol import protocol_with
    from app.settings import Settings

    settings = Settings()
    problem = registry_settings_problem(settings)
    if problem:  # its start-up would fail with a traceback
        log.error("%s", problem)
        return FATAL

    class FrontEndServer(uvicorn.Server):
        """Ctrl-C is the supervisor's: it stops this process with SIGTERM, and on a second Ctrl-C it
        kills the host. A terminal sends Ctrl-C to every process of its job, and uvicorn would take
        the second one as a force exit of its own: it cancels the requests in flight and its
        lifespan, and logs each as a traceback before the supervisor's kill lands."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig != signal.SIGINT:
                super().handle_exit(sig, frame)

    servers: list[uvicorn.Server] = []  # uvicorn's SIGTERM handler sets should_exit, also while the app starts
    front_end = FrontEnd(
        run_dir=run_dir,
        slot=slot,
        metrics_dir=run_dir / "metrics",
        devices=devices,
        stopping=lambda: any(server.should_exit for server in servers),
        heartbeat_fd=beat_fd,
    )
    app = create_app(settings, front_end=front_end)
    config = uvicorn.Config(
        app,
        root_path=settings.root_path,
        log_level=log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=30,
        http=protocol_with(
            settings.limits.header_timeout_s, settings.limits.send_timeout_s, app.state.metrics.closed_by_protocol
        ),
        timeout_keep_alive=int(max(1, round(settings.limits.keep_alive_timeout_s))),
    )
    server = FrontEndServer(config)
    servers.append(server)
    stop_quietly(server)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as FrontEndServer does while it serves
    server.run(sockets=[socket.socket(fileno=fd)])
    return 0 if server.started else FATAL


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="app.host", description="a process of a multi-worker host (internal)")
    parser.add_argument("role", choices=["inference", "frontend"])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--frontends", type=int, default=1)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--fd", type=int, default=-1)
    parser.add_argument("--device", type=int, default=0, help="an inference process: its number")
    parser.add_argument("--devices", type=int, default=1, help="the host's inference processes")
    parser.add_argument("--beat-fd", type=int, help="the pipe to beat down (app.heartbeat)")
    args = parser.parse_args(argv)
    identity = f"{args.role}-{args.device if args.role == 'inference' else args.slot}"
    logging.basicConfig(
        level=args.log_level.upper(), format=f"%(asctime)s %(levelname)s [{identity}] %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))

    from app.metrics import count_in_files

    count_in_files(args.run_dir / "metrics", identity)  # before any metric is made
    if args.role == "inference":
        try:
            import uvloop

            code = uvloop.run(_serve_inference(args.run_dir, args.frontends, args.device, args.devices, args.beat_fd))
        except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
            code = asyncio.run(_serve_inference(args.run_dir, args.frontends, args.device, args.devices, args.beat_fd))
    else:
        code = _serve_front_end(args.run_dir, args.slot, args.fd, args.log_level, args.devices, args.beat_fd)
    sys.exit(code)


if __name__ == "__main__":
    main()
