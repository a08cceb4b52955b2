"""`python -m app --workers N`: front-end processes feeding one inference process, tested as users run it.

Every test here starts the real supervisor, its front ends and its inference process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from app.ipc import DEAD_AFTER_S
from tests.conftest import Backend, _sqlite_backend
from tests.images import solid
from tests.onnx_models import color_classifier, color_metadata
from tests.server import ROOT, Server, descendants, free_port, kill_leftovers, proc_stat, server_process

TOKEN = "workers-admin-token-0123456789"
PREDICT = "/v1/models/colors/predict"
LABEL_OF = {1: "red", 2: "green"}  # what each version answers for a red image


def colors_backend(backend: Backend, tmp_path: Path) -> Backend:
    """`colors` v1 (red→red) at production and v2 (red→green)."""
    with backend.registry() as reg:
        reg.register(name="colors", onnx_path=color_classifier(tmp_path / "v1.onnx"), metadata=color_metadata())
        reg.register(
            name="colors",
            onnx_path=color_classifier(tmp_path / "v2.onnx", permute=(1, 0, 2)),
            metadata=color_metadata(),
        )
        reg.promote(name="colors", version=1)
    return backend


def env_for(backend: Backend, **settings: str) -> dict[str, str]:
    return {
        **backend.env,
        "SERVE_ADMIN_TOKENS": f"ops:{TOKEN}",
        "SERVE_WARMUP_BATCH_SIZES": "[1]",
        "SERVE_POLL_INTERVAL_S": "0.5",
        **settings,
    }


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        base, _, rest = series.partition("{")
        if base != name:
            continue
        if all(f'{key}="{value_}"' in rest for key, value_ in labels.items()):
            total += float(value)
    return total


def children(server: Server, role: str) -> list[int]:
    """The pids of the supervisor's processes of ``role`` (inference or frontend), read from /proc.

    (Not `pgrep`: its output is all this sees, so an error of its own would read as "no process".)"""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = proc_stat(int(entry.name))
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it exited while being read
            continue
        if stat is not None and stat.parent == server.proc.pid and f"app.host {role} " in command:
            pids.append(int(entry.name))
    return sorted(pids)


def connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections to ``port`` each process holds (from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    counts = {}
    for pid in pids:
        held = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        counts[pid] = sum(1 for target in held if target.startswith("socket:[") and target[8:-1] in inodes)
    return counts


async def post_red(client: httpx.AsyncClient, server: Server) -> httpx.Response:
    return await client.post(f"{server.url}{PREDICT}", files={"images": ("r.png", solid("red"), "image/png")})


@contextlib.asynccontextmanager
async def under_load(
    server: Server, clients: int, record: Callable[[float, httpx.Response], None]
) -> AsyncIterator[None]:
    """``clients`` clients post a red image in a loop while the block runs; each answer goes to
    ``record`` with the time its request was sent."""
    stop = asyncio.Event()

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                r = await post_red(client, server)
                record(sent, r)
                if r.status_code != 200:
                    await asyncio.sleep(0.01)

    loops = [asyncio.ensure_future(client_loop()) for _ in range(clients)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*loops)


async def test_a_batch_holds_rows_from_several_front_ends_and_metrics_add_up(tmp_path: Path) -> None:
    """Every request on a new connection, so the kernel spreads them over the front ends; a model
    slow enough (a few tens of ms a batch) that rows from all of them queue behind each batch."""
    backend = _sqlite_backend(tmp_path)
    with backend.registry() as reg:
        slowish = color_classifier(tmp_path / "slowish.onnx", busy_matmuls=4)
        reg.register(name="colors", onnx_path=slowish, metadata=color_metadata())
        reg.promote(name="colors", version=1)
    env = env_for(backend, SERVE_BATCHING__MAX_BATCH_DELAY_MS="20", SERVE_BATCHING__MAX_BATCH_SIZE="64")
    with server_process(env, workers=4) as server:
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["workers"]["frontends"] == 4
        assert (ready["workers"]["inference_processes"], ready["workers"]["inference_up"]) == (1, [0])
        assert len(children(server, "frontend")) == 4
        assert len(children(server, "inference")) == 1

        # A burst of connections is spread over the front ends. (On one shared listening socket the
        # front end that woke first took nearly all of them: 27 of 32 on one of 8.)
        port = int(server.url.rsplit(":", 1)[1])
        burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        try:
            deadline = time.monotonic() + 10
            while sum((spread := connections_by_process(children(server, "frontend"), port)).values()) < 64:
                assert time.monotonic() < deadline, (
                    f"the front ends accepted only {spread}; server log:\n{server.log_text()[-4000:]}"
                )
                await asyncio.sleep(0.05)
        finally:
            for sock in burst:
                sock.close()
        print(f"64 connections over 4 front ends: {sorted(spread.values())}")
        assert min(spread.values()) >= 4, spread  # 16 each on average; fewer than 4 is a 1-in-10^5 draw
        responses: list[httpx.Response] = []

        async def one_client() -> None:  # 20 requests in a row, each on a connection of its own
            async with httpx.AsyncClient(timeout=30, headers={"Connection": "close"}) as client:
                for _ in range(20):
                    responses.append(await post_red(client, server))

        await asyncio.gather(*(one_client() for _ in range(16)))
        assert [r.status_code for r in responses] == [200] * 320
        assert {r.json()["predictions"][0]["label"] for r in responses} == {"red"}
        # The in-flight gauge comes with the front ends' beats (twice a second), by way of the view
        # the inference process publishes: up to about 0.7 s behind, more on a busy machine.
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(f"{server.url}/metrics").text
            if metric(text, "http_inference_requests_in_flight") == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    # One view of the host: the counters of every front end, summed, on whichever answered the scrape.
    assert metric(text, "http_requests_total", route="/v1/models/{name}/predict", status="200") == 320
    assert metric(text, "images_predicted_total", model="colors") == 320
    assert metric(text, "http_inference_requests_in_flight") == 0
    batches = metric(text, "batch_front_ends_count", model="colors")
    single = metric(text, "batch_front_ends_bucket", model="colors", le="1.0")
    print(f"{batches:.0f} batches, {batches - single:.0f} of them with rows from more than one front end")
    assert batches - single > 0


async def test_promotion_under_load_fails_no_request_and_versions_follow_the_alias(
    backend: Backend, tmp_path: Path
) -> None:
    colors_backend(backend, tmp_path)
    with server_process(env_for(backend), workers=4) as server:
        answers: list[tuple[float, float, int, str]] = []  # sent, answered, version, label
        failures: list[str] = []
        stop = asyncio.Event()

        async def client_loop() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        r = await post_red(client, server)
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text}")
                        continue
                    body = r.json()
                    answers.append((sent, time.monotonic(), body["version"], body["predictions"][0]["label"]))

        admin = {"Authorization": f"Bearer {TOKEN}"}
        loops = [asyncio.ensure_future(client_loop()) for _ in range(12)]
        async with httpx.AsyncClient(timeout=60, headers=admin) as ops:
            await asyncio.sleep(1.0)
            r = await ops.put(
                f"{server.url}/v1/models/colors/aliases/production", json={"version": 2, "reason": "under load"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["serving_version"] == 2
            promoted = time.monotonic()
            await asyncio.sleep(1.5)
            rolling_back = time.monotonic()
            r = await ops.post(f"{server.url}/v1/models/colors/rollback", json={"reason": "back"})
            assert r.status_code == 200, r.text
            assert r.json()["serving_version"] == 1
            rolled_back = time.monotonic()
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*loops)
        async with httpx.AsyncClient(timeout=30) as client:
            for version in (2, 1, 2):  # a pinned version: found (and loaded) first, then run as the others
                r = await client.post(
                    f"{server.url}{PREDICT}?version={version}",
                    files={"images": ("r.png", solid("red"), "image/png")},
                )
                assert r.status_code == 200, r.text
                assert (r.json()["version"], r.json()["predictions"][0]["label"]) == (version, LABEL_OF[version])
    assert failures == []
    assert all(LABEL_OF[version] == label for _, _, version, label in answers)  # each answer from its version
    # Once a move has answered, every front end serves its target: no request sent after it gets the old one.
    between = {v for sent, done, v, _ in answers if sent > promoted and done < rolling_back}
    after = {v for sent, _, v, _ in answers if sent > rolled_back}
    before = {v for _, done, v, _ in answers if done < promoted - 5}  # (none: the first 1 s is all v1)
    assert between == {2}
    assert after == {1}
    assert before <= {1}
    print(f"{len(answers)} answers, {sum(1 for a in answers if a[2] == 2)} by v2")


async def test_sigkill_of_the_inference_process_gives_only_200_and_503_and_the_host_recovers(tmp_path: Path) -> None:
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    with server_process(env_for(backend), workers=2) as server:
        statuses: list[int] = []
        missing_retry_after: list[str] = []

        def record(sent: float, r: httpx.Response) -> None:
            statuses.append(r.status_code)
            if r.status_code == 503 and "retry-after" not in r.headers:
                missing_retry_after.append(r.text)

        async with under_load(server, 8, record), httpx.AsyncClient(timeout=5) as probe:
            await asyncio.sleep(1.0)
            (victim,) = children(server, "inference")
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            # Ready, with a new inference process: right after the kill the old one is a zombie that
            # /proc no longer names, and the front ends may not have noticed yet.
            while (await probe.get(f"{server.url}/readyz")).status_code != 200 or len(
                [pid for pid in children(server, "inference") if pid != victim]
            ) != 1:
                assert time.monotonic() - killed < 60, "the host never became ready again"
                await asyncio.sleep(0.05)
            recovered = time.monotonic() - killed
            served_before = statuses.count(200)
            await asyncio.sleep(1.0)
    print(f"ready again {recovered:.2f} s after SIGKILL; {statuses.count(503)} answers 503 meanwhile")
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) > 0  # the front ends noticed, and said so
    assert missing_retry_after == []
    assert statuses.count(200) > served_before  # and serve again afterwards
    assert recovered < 30


async def test_a_front_end_that_dies_is_started_again(tmp_path: Path) -> None:
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    with server_process(env_for(backend), workers=2) as server:
        before = children(server, "frontend")
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            now = children(server, "frontend")
            if len(now) == 2 and before[0] not in now:
                break
            assert time.monotonic() < deadline, "the front end was not restarted"
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(20):  # whichever process takes the connection answers
                assert (await post_red(client, server)).status_code == 200
            while (await client.get(f"{server.url}/readyz")).json()["workers"]["frontends_up"] != 2:
                assert time.monotonic() < deadline, "the restarted front end never reported in"
                await asyncio.sleep(0.1)
        assert server.proc.poll() is None


def run_dir_of(server: Server) -> Path:
    """The directory the host's supervisor made for its sockets and metric files."""
    arguments = Path(f"/proc/{children(server, 'inference')[0]}/cmdline").read_bytes().decode().split("\0")
    return Path(arguments[arguments.index("--run-dir") + 1])


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited process its new parent has not reaped yet does not)."""
    stat = proc_stat(pid)
    return stat is not None and stat.state != "Z"


async def test_a_supervisor_killed_with_sigkill_leaves_no_process_and_no_run_directory(tmp_path: Path) -> None:
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    with server_process(env_for(backend), workers=2) as server:
        pids = children(server, "frontend") + children(server, "inference")
        run_dir = run_dir_of(server)
        assert (run_dir / "metrics").is_dir()
        server.proc.kill()  # it can neither stop its processes nor clean up
        server.proc.wait()
        killed = time.monotonic()
        while any(alive(pid) for pid in pids):
            assert time.monotonic() - killed < 15, "processes of the host outlived its supervisor"
            await asyncio.sleep(0.1)
        print(f"every process of the host gone {time.monotonic() - killed:.1f} s after its supervisor")
    assert not run_dir.exists()


@pytest.mark.parametrize("whole_group", [False, True], ids=["supervisor", "terminal"])
async def test_ctrl_c_twice_kills_the_host_at_once_without_a_traceback(tmp_path: Path, whole_group: bool) -> None:
    """The first Ctrl-C drains; a second one means "do not wait". Before, the supervisor raised a
    KeyboardInterrupt out of its drain: a traceback, its inference process left to notice it had
    gone, and the run directory left to that process to remove. ``terminal``: both Ctrl-Cs go to
    every process of the host, as a terminal sends them to its foreground job."""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    with server_process(env_for(backend), workers=2, log_level="info", own_group=whole_group) as server:
        processes = descendants(server.proc.pid)
        run_dir = run_dir_of(server)
        never = asyncio.Event()
        url = f"{server.url}{PREDICT}"
        encoded = httpx.Request("POST", url, files={"images": ("r.png", solid("red"), "image/png")})
        body = encoded.read()

        async def half_a_body() -> AsyncIterator[bytes]:  # keeps the request in flight: the drain waits for it
            yield body[: len(body) // 2]
            await never.wait()

        headers = {"content-type": encoded.headers["content-type"]}
        async with httpx.AsyncClient(timeout=30) as client:
            pending = asyncio.ensure_future(client.post(url, content=half_a_body(), headers=headers))
            sent = time.monotonic()
            while metric((await client.get(f"{server.url}/metrics")).text, "http_inference_requests_receiving") < 1:
                assert time.monotonic() - sent < 20, "the request never reached the server"
                await asyncio.sleep(0.05)

            def interrupt() -> None:
                if whole_group:
                    os.killpg(server.proc.pid, signal.SIGINT)
                else:
                    server.proc.send_signal(signal.SIGINT)

            interrupt()
            while "Waiting for connections to close" not in server.log_text():  # the drain has begun
                assert time.monotonic() - sent < 30, "the first Ctrl-C began no drain"
                await asyncio.sleep(0.05)
            interrupt()
            stopped = time.monotonic()
            try:
                assert server.proc.wait(10) == 1  # not 0: requests in flight were cut off
                took = time.monotonic() - stopped
                while any(alive(pid) for pid, _ in processes):
                    assert time.monotonic() - stopped < 10, "a process of the host outlived the second Ctrl-C"
                    await asyncio.sleep(0.05)
            finally:
                kill_leftovers(processes)
            pending.cancel()  # its body never ends: the client would wait on it, not on the host
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        log = server.log_text()
    print(f"the host gone {took:.2f} s after the second Ctrl-C")
    assert "told again to stop: killing every process" in log
    # Nor any process's: with the terminal's Ctrl-Cs, uvicorn in a front end took the second one as
    # its own force exit and logged the cancelled request and lifespan (3 runs in 6, before).
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    assert not run_dir.exists()


HANG_TIMEOUT_S = 3.0
HUNG = "has sent no heartbeat for"


async def test_a_hung_inference_process_is_killed_and_the_host_serves_again(tmp_path: Path) -> None:
    """SIGSTOP stands in for a hang (a deadlock, a driver call that never returns): the process
    keeps its sockets open, so only its silence tells. Before the supervisor watched for it, the
    host answered 503 for good while /healthz said all was well."""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    env = env_for(backend, SERVE_HANG_TIMEOUT_S=str(HANG_TIMEOUT_S))
    with server_process(env, workers=2) as server:
        answers: list[tuple[float, int, bool]] = []  # how long it took, status, Retry-After given

        def record(sent: float, r: httpx.Response) -> None:
            answers.append((time.monotonic() - sent, r.status_code, "retry-after" in r.headers))

        async with under_load(server, 4, record), httpx.AsyncClient(timeout=5) as probe:
            await asyncio.sleep(0.5)
            (victim,) = children(server, "inference")
            os.kill(victim, signal.SIGSTOP)
            stopped = time.monotonic()
            said_down = False
            while True:
                ready = await probe.get(f"{server.url}/readyz")
                said_down = said_down or ready.json()["workers"]["inference"] == "down"
                if ready.status_code == 200 and [pid for pid in children(server, "inference") if pid != victim]:
                    break
                assert time.monotonic() - stopped < 30, "the hung inference process was not replaced"
                await asyncio.sleep(0.05)
            recovered = time.monotonic() - stopped
            served_before = sum(1 for answer in answers if answer[1] == 200)
            await asyncio.sleep(0.5)
        log = server.log_text()
    assert not Path(f"/proc/{victim}").exists()  # killed, and reaped
    print(f"ready again {recovered:.2f} s after SIGSTOP; longest answer {max(a[0] for a in answers):.2f} s")
    assert f"inference-0 {HUNG}" in log
    assert {status for _, status, _ in answers} <= {200, 503}
    assert all(retry for _, status, retry in answers if status == 503)
    assert max(took for took, _, _ in answers) < 5  # a hang is answered, never waited out by the client
    assert said_down  # /readyz did not go on naming the silent process "up" meanwhile
    assert sum(1 for answer in answers if answer[1] == 200) > served_before


async def test_a_move_the_host_cannot_follow_now_is_answered_202_and_served_once_it_can(tmp_path: Path) -> None:
    """The move is in the registry before the host is told. Before, a promotion made while the
    inference process hung was answered 503: ops read that as a failed move, which had happened.

    The front end gives up on the hung process after `DEAD_AFTER_S`; the supervisor replaces it only
    later, so that the move's answer cannot come from its replacement. (With both at 3 s, a
    promotion slowed by a busy machine was once answered 200 by the new process, serving v2.)"""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    env = env_for(backend, SERVE_HANG_TIMEOUT_S=str(DEAD_AFTER_S + 5))
    with server_process(env, workers=2) as server:
        (victim,) = children(server, "inference")
        os.kill(victim, signal.SIGSTOP)
        admin = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(timeout=30, headers=admin) as client:
            moved = await client.put(f"{server.url}/v1/models/colors/aliases/production", json={"version": 2})
            assert moved.status_code == 202, moved.text
            body = moved.json()
            assert (body["move"]["from_version"], body["move"]["to_version"]) == (1, 2)
            assert "inference process" in body["unconfirmed"]  # why this host did not follow it yet
            history = (await client.get(f"{server.url}/v1/models/colors/history")).json()
            assert history[-1]["to_version"] == 2
            deadline = time.monotonic() + 30
            while True:  # the hung process is replaced, and the new one loads what the registry says
                answer = await post_red(client, server)
                if answer.status_code == 200:
                    break
                assert answer.status_code == 503 and time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert [(await post_red(client, server)).json()["version"] for _ in range(5)] == [2] * 5
            assert answer.json()["version"] == 2


async def test_a_move_whose_inference_process_is_lost_meanwhile_says_why_without_asking_for_a_retry(
    tmp_path: Path,
) -> None:
    """The move waits on a stopped inference process, which is then killed: the front end's
    connection closes, and the wait ends with the inference clients' reason. Its ", retry" used
    to reach the 202 (and the console: "recorded, but … (the inference process restarted,
    retry)"), though repeating a recorded move fails with 409."""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    with server_process(env_for(backend), workers=2) as server:
        (victim,) = children(server, "inference")
        os.kill(victim, signal.SIGSTOP)
        admin = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(timeout=30, headers=admin) as client:
            moving = asyncio.ensure_future(
                client.put(f"{server.url}/v1/models/colors/aliases/production", json={"version": 2, "no_check": True})
            )
            deadline = time.monotonic() + 10
            while True:  # recorded: the front end now waits on the stopped process
                with backend.registry() as reg:
                    if reg.aliases("colors")["production"] == 2:
                        break
                assert time.monotonic() < deadline and not moving.done(), "the move was not recorded"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            os.kill(victim, signal.SIGKILL)
            moved = await moving
            assert moved.status_code == 202, moved.text
            why = moved.json()["unconfirmed"]
            assert "inference process" in why and "retry" not in why, why
            again = await client.put(f"{server.url}/v1/models/colors/aliases/production", json={"version": 2})
            assert again.status_code == 409  # what a retry of the move would have got


async def test_a_hung_front_end_is_replaced_but_a_host_stopped_whole_is_not(tmp_path: Path) -> None:
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    env = env_for(backend, SERVE_HANG_TIMEOUT_S=str(HANG_TIMEOUT_S))
    with server_process(env, workers=2, own_group=True) as server:
        before = children(server, "frontend") + children(server, "inference")
        # Ctrl-Z stops every process of the host, the supervisor too: after `fg` none has hung.
        os.killpg(server.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(2 * HANG_TIMEOUT_S)
        os.killpg(server.proc.pid, signal.SIGCONT)
        await asyncio.sleep(HANG_TIMEOUT_S + 1)
        assert children(server, "frontend") + children(server, "inference") == before
        assert HUNG not in server.log_text()
        assert "inference process 0 down" not in server.log_text()  # no front end took it for hung either

        victim = before[0]
        os.kill(victim, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while len([pid for pid in children(server, "frontend") if pid != victim]) != 2:
            assert time.monotonic() < deadline, "the hung front end was not replaced"
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(20):  # none lands on the hung one: its listening socket went with it
                assert (await post_red(client, server)).status_code == 200
        assert "frontend-0 " + HUNG in server.log_text()
        assert children(server, "inference") == before[2:]


def stalling_backend(tmp_path: Path) -> Backend:
    """`colors` v1 at production, whose run on a blue image never ends (`color_classifier`)."""
    backend = _sqlite_backend(tmp_path)
    with backend.registry() as reg:
        stalls = color_classifier(tmp_path / "stalls.onnx", stall_on_blue=True)
        reg.register(name="colors", onnx_path=stalls, metadata=color_metadata())
        reg.promote(name="colors", version=1)
    return backend


async def test_a_model_run_that_never_ends_gets_the_inference_process_started_again(tmp_path: Path) -> None:
    """A run that never returns (as a hung GPU call would) leaves the inference process's event
    loop free: only the run's length shows that nothing it computes can reach a client now."""
    backend = stalling_backend(tmp_path)
    env = env_for(
        backend,
        SERVE_HANG_TIMEOUT_S=str(HANG_TIMEOUT_S),
        SERVE_INFERENCE_TIMEOUT_S="2",
        # In the inference thread, where a GPU call runs: a lone row run on the event loop instead
        # would stop the loop itself, which the test of a hung inference process covers.
        SERVE_BATCHING__INLINE_BELOW_MS="0",
    )
    with server_process(env, workers=2) as server:
        (first,) = children(server, "inference")
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await post_red(client, server)).status_code == 200
            sent = time.monotonic()
            blue = await client.post(f"{server.url}{PREDICT}", files={"images": ("b.png", solid("blue"), "image/png")})
            assert blue.status_code == 503 and "retry-after" in blue.headers
            assert time.monotonic() - sent < 5  # the client waited SERVE_INFERENCE_TIMEOUT_S, not the run
            while (await post_red(client, server)).status_code != 200 or children(server, "inference") == [first]:
                assert time.monotonic() - sent < 40, "the inference process with the endless run was not replaced"
                await asyncio.sleep(0.1)
            replaced = time.monotonic() - sent
        log = server.log_text()
    print(f"serving again {replaced:.1f} s after the endless run began")
    assert "a model run has gone on for" in log
    assert f"inference-0 {HUNG}" in log
    assert first not in children(server, "inference")


@pytest.mark.parametrize("how", ["1-SIGTERM", "2-SIGTERM", "2-SIGTERM-then-supervisor-SIGKILL"])
async def test_a_stop_does_not_wait_for_a_model_run_that_never_ends(tmp_path: Path, how: str) -> None:
    """Once a run has outlasted every client's wait, nothing it computes can reach anyone, and no
    run can be cancelled. Before, a stop waited for it: for good with one process, for the
    supervisor's SIGKILL 30 s later with several, and for good again once the supervisor was
    killed itself (its inference process then stayed behind, spinning). A single process also
    kept its clients waiting on the run without end, and its liveness probe passed."""
    workers = int(how[0])
    backend = stalling_backend(tmp_path)
    env = env_for(
        backend,
        SERVE_INFERENCE_TIMEOUT_S="2",
        SERVE_BATCHING__INLINE_BELOW_MS="0",  # in an inference thread, as a GPU call runs
        SERVE_HANG_TIMEOUT_S="0",  # only the stop may end the run's process here
    )
    with server_process(env, workers=workers, log_level="info") as server:
        processes = descendants(server.proc.pid)
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                blue = {"images": ("b.png", solid("blue"), "image/png")}
                sent = time.monotonic()
                answer = await client.post(f"{server.url}{PREDICT}", files=blue)
                assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
                assert time.monotonic() - sent < 5  # SERVE_INFERENCE_TIMEOUT_S, with one process as with several
                if workers == 1:  # no supervisor restarts it: the liveness probe must
                    # The run began after the request was queued, so it is lost a moment after the 503.
                    while (live := await client.get(f"{server.url}/healthz")).status_code == 200:
                        assert time.monotonic() - sent < 10, "/healthz did not report the lost run"
                        await asyncio.sleep(0.1)
                    assert live.status_code == 503 and live.json()["status"] == "hung"
                    assert live.json()["error"].startswith("a model run has gone on for")
                    assert (await client.get(f"{server.url}/v2/health/live")).json() == {"live": False}
            run_dir = run_dir_of(server) if workers > 1 else None
            stopped = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            if how.endswith("supervisor-SIGKILL"):
                await asyncio.sleep(0.3)
                server.proc.kill()
            while server.proc.poll() is None or any(alive(pid) for pid, _ in processes):
                assert time.monotonic() - stopped < 15, "a process of the host waited on the endless run"
                await asyncio.sleep(0.1)
            took = time.monotonic() - stopped
        finally:  # its supervisor killed, the fixture no longer finds them
            kill_leftovers(processes)
        log = server.log_text()
    print(f"every process gone {took:.1f} s after SIGTERM")
    assert "exiting without waiting for it" in log
    if not how.endswith("supervisor-SIGKILL"):
        assert server.proc.returncode == 1  # not 0: the stop left a run unfinished, with one process as with several
    if how == "2-SIGTERM":
        assert "inference-0 ended the stop with status 1: exiting with status 1" in log
    assert run_dir is None or not run_dir.exists()


def loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def test_only_the_inference_process_loads_onnx_runtime(tmp_path: Path) -> None:
    """ONNX Runtime costs a process ~20 MB: on a 16-core host, 16 front ends would carry it for nothing."""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    with server_process(env_for(backend), workers=2) as server:
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(10):
                assert (await post_red(client, server)).status_code == 200
        (inference,) = children(server, "inference")
        assert "onnxruntime" in loaded_libraries(inference)
        front_ends = children(server, "frontend")
        assert len(front_ends) == 2
        for pid in [*front_ends, server.proc.pid]:
            assert "onnxruntime" not in loaded_libraries(pid), f"process {pid} loaded ONNX Runtime"


def test_every_process_of_the_host_starts_with_the_allocator_settings(tmp_path: Path) -> None:
    """Image buffers are reused rather than faulted in again (`app.host.allocator_env`), in the
    inference process and the front ends alike. (An operator's own settings: test_thread_budget.py.)"""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    environ = {k: v for k, v in env_for(backend).items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    with server_process(environ, workers=2) as server:
        pids = [*children(server, "inference"), *children(server, "frontend")]
        assert len(pids) == 3
        for pid in pids:
            variables = dict(
                entry.split(b"=", 1)
                for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if b"=" in entry
            )
            assert variables[b"MALLOC_MMAP_THRESHOLD_"] == str(32 << 20).encode()
            assert variables[b"MALLOC_TRIM_THRESHOLD_"] == str(64 << 20).encode()


async def test_a_host_whose_temp_directory_is_too_deep_for_unix_sockets_still_serves(tmp_path: Path) -> None:
    """A unix socket's path has at most ~100 bytes; under a deep TMPDIR the host puts its sockets in /tmp."""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    with server_process({**env_for(backend), "TMPDIR": str(deep)}, workers=2) as server:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await post_red(client, server)
            assert response.status_code == 200, response.text
        assert server.proc.poll() is None


@pytest.mark.parametrize("second_workers", ["2", "1"])
def test_a_second_host_on_the_same_port_is_refused_not_let_in_beside_the_first(
    tmp_path: Path, second_workers: str
) -> None:
    """The front ends share the port with SO_REUSEPORT; another server started on it by mistake must
    not quietly take half of the connections. A single process is refused the same way, before it
    loads anything."""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    with server_process(env_for(backend), workers=2) as server:
        port = server.url.rsplit(":", 1)[1]
        second = subprocess.run(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", port, "--workers", second_workers],
            env=env_for(backend),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert second.stderr == f"imgserve: cannot listen on 127.0.0.1:{port}: Address already in use\n"
        for _ in range(10):  # each on a new connection: all of them reach the first host
            response = httpx.post(
                f"{server.url}{PREDICT}",
                files={"images": ("r.png", solid("red"), "image/png")},
                headers={"Connection": "close"},
            )
            assert response.status_code == 200


@pytest.mark.parametrize("workers", [1, 2])
async def test_rows_of_clients_that_hang_up_are_dropped_before_inference(tmp_path: Path, workers: int) -> None:
    """A slow model (a second or two per batch) runs the first request; the others are admitted
    and queue behind it. Their clients hang up meanwhile: their rows must not run."""
    backend = _sqlite_backend(tmp_path)
    with backend.registry() as reg:
        slow = color_classifier(tmp_path / "slow.onnx", busy_matmuls=64)
        reg.register(name="colors", onnx_path=slow, metadata=color_metadata())
        reg.promote(name="colors", version=1)
    # The first row starts a batch at once (no delay to wait for company). One ONNX Runtime
    # thread: the slow batch keeps one core busy, not both, so the processes that notice the
    # hang-ups get to run meanwhile.
    env = env_for(
        backend,
        SERVE_BATCHING__MAX_BATCH_SIZE="256",
        SERVE_BATCHING__MAX_BATCH_DELAY_MS="0",
        SERVE_BATCHING__MAX_CONCURRENT_BATCHES="1",
        SERVE_INTRA_OP_THREADS="1",
    )
    clients = 40
    with server_process(env, workers=workers) as server:
        request = httpx.Request(
            "POST", f"{server.url}{PREDICT}", files={"images": ("r.png", solid("red"), "image/png")}
        )
        body = request.read()
        host, port = server.url.removeprefix("http://").split(":")
        head = (
            f"POST {PREDICT} HTTP/1.1\r\nHost: {host}\r\ncontent-type: {request.headers['content-type']}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()

        def wait_in_flight(count: int) -> None:
            """Until the host has admitted ``count`` inference requests (with workers, as the
            inference process last heard from its front ends)."""
            deadline = time.monotonic() + 30
            while (now := metric(httpx.get(f"{server.url}/metrics").text, "http_inference_requests_in_flight")) < count:
                assert time.monotonic() < deadline, f"{now:.0f} requests in flight, waited for {count}"
                time.sleep(0.05)

        sockets = [socket.create_connection((host, int(port))) for _ in range(clients)]
        sockets[0].sendall(head + body)
        wait_in_flight(1)  # it runs: the model is busy for a second or two
        for sock in sockets[1:]:
            sock.sendall(head + body)
        wait_in_flight(clients)  # every one admitted: the others wait in the queue
        for sock in sockets:
            sock.close()
        # Until every request is accounted for: run (counted when its batch ends), or dropped when
        # its batch was taken. (Waiting for the counts to stand still for 3 s instead ended while the
        # first batch still ran, on a machine busy enough to make it take longer.)
        deadline = time.monotonic() + 120
        while True:
            text = httpx.get(f"{server.url}/metrics").text
            done = metric(text, "batch_rows_dropped_total", model="colors") + metric(
                text, "batch_size_rows_sum", model="colors"
            )
            if done >= clients:
                break
            assert time.monotonic() < deadline, f"only {done:.0f} of {clients} requests were run or dropped"
            time.sleep(0.2)
        time.sleep(0.5)  # a row run or counted twice would show by now
        text = httpx.get(f"{server.url}/metrics").text
    dropped = metric(text, "batch_rows_dropped_total", model="colors")
    ran = metric(text, "batch_size_rows_sum", model="colors")  # rows that went through the model
    answered = metric(text, "http_requests_total", route="/v1/models/{name}/predict", status="200")
    gone = metric(text, "http_requests_total", route="/v1/models/{name}/predict", status="499")
    print(f"workers={workers}: of {clients} requests whose clients hung up, {ran:.0f} ran, {dropped:.0f} dropped")
    # The server saw the hang-ups, and the rows still queued were taken out unrun.
    assert gone == clients
    assert (ran, dropped) == (1, clients - 1)
    assert answered == 0  # (a request whose client left while its batch ran is logged 499, not 200)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_host_that_cannot_start_exits_with_status_3(tmp_path: Path, workers: str) -> None:
    """And at once: the front ends, still waiting for their first answer from the inference process
    (up to SERVE_INFERENCE_TIMEOUT_S), stop when the supervisor tells them to."""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    env = env_for(backend, SERVE_REQUIRE_GPU="true", SERVE_PROVIDERS="cuda", SERVE_INFERENCE_TIMEOUT_S="300")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--port", str(free_port()), "--workers", workers, "--log-level", "warning"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - started < 25  # 40 s before: until the supervisor killed the front ends
    assert "GPU" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- several inference processes (one per GPU; here two on the CPU) -----------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time ``pid`` has used."""
    stat = proc_stat(pid)
    assert stat is not None, f"process {pid} is gone"
    return stat.cpu_ticks / os.sysconf("SC_CLK_TCK")


async def test_two_inference_processes_share_the_requests_and_both_follow_a_promotion(tmp_path: Path) -> None:
    """The layout of a host with two GPUs (`SERVE_INFERENCE_PROCESSES=2`), on the CPU."""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    env = env_for(backend, SERVE_INFERENCE_PROCESSES="2", SERVE_POLL_INTERVAL_S="30")  # moves come from the API
    with server_process(env, workers=2) as server:
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["workers"]["inference_processes"] == 2
        assert ready["workers"]["inference_up"] == [0, 1]
        inference = children(server, "inference")
        assert len(inference) == 2
        spent = {pid: cpu_seconds(pid) for pid in inference}
        answers: list[tuple[float, int, str]] = []  # sent, version, label
        failures: list[str] = []

        def record(sent: float, r: httpx.Response) -> None:
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                answers.append((sent, r.json()["version"], r.json()["predictions"][0]["label"]))

        admin = {"Authorization": f"Bearer {TOKEN}"}
        async with under_load(server, 8, record), httpx.AsyncClient(timeout=60, headers=admin) as ops:
            await asyncio.sleep(1.5)
            r = await ops.put(f"{server.url}/v1/models/colors/aliases/production", json={"version": 2})
            assert r.status_code == 200, r.text
            assert r.json()["serving_version"] == 2
            promoted = time.monotonic()
            await asyncio.sleep(1.5)
        used = {pid: cpu_seconds(pid) - spent[pid] for pid in inference}
    print(f"{len(answers)} answers; CPU seconds of each inference process meanwhile: {used}")
    assert failures == []
    assert all(LABEL_OF[version] == label for _, version, label in answers)
    # The move answered once both processes served v2 (the registry is not polled here), so no
    # request sent after it was answered by v1, whichever process ran it.
    assert {v for sent, v, _ in answers if sent > promoted} == {2}
    # Both ran requests: an idle one spends about 0.01 s of CPU in these 3 s on its reports; under
    # load each spent 0.2-0.4 s here, and 0.14-0.21 s beside `stress-ng --cpu 2`.
    assert min(used.values()) > 0.05, used


MOVED = r"inference process \d down: .* \((\d+) requests waited on it\)"


async def test_sigkill_of_one_of_two_inference_processes_gives_only_200(tmp_path: Path) -> None:
    """What waited on the killed process runs on the other one; new requests go there until the
    killed one is back and has loaded the model. The model takes a few ms a batch, so requests
    spend most of their time waiting on an inference process, and some wait on the one killed."""
    backend = _sqlite_backend(tmp_path)
    with backend.registry() as reg:
        slowish = color_classifier(tmp_path / "slowish.onnx", busy_matmuls=2)
        reg.register(name="colors", onnx_path=slowish, metadata=color_metadata())
        reg.promote(name="colors", version=1)
    with server_process(env_for(backend, SERVE_INFERENCE_PROCESSES="2"), workers=2) as server:
        statuses: list[int] = []
        others: list[str] = []

        def record(sent: float, r: httpx.Response) -> None:
            statuses.append(r.status_code)
            if r.status_code != 200:
                others.append(f"{r.status_code} {r.text}")

        async with under_load(server, 8, record), httpx.AsyncClient(timeout=5) as probe:
            await asyncio.sleep(1.0)
            # A kill finds requests waiting on its process nearly always; on a busy machine the
            # clients themselves can be the slowest part, and a kill then finds none. It is
            # repeated (on whichever process has the lowest pid) until one does, at most 4 times.
            kills = 0
            while kills < 4:
                kills += 1
                victim = children(server, "inference")[0]
                os.kill(victim, signal.SIGKILL)
                killed = time.monotonic()
                while True:  # back, and loaded: the next kill may leave it the only one to serve
                    workers = (await probe.get(f"{server.url}/readyz")).json()["workers"]
                    now = children(server, "inference")
                    if workers["inference_ready"] == [0, 1] and len(now) == 2 and victim not in now:
                        break
                    assert time.monotonic() - killed < 60, f"the killed process never came back: {workers}"
                    await asyncio.sleep(0.05)
                recovered = time.monotonic() - killed
                moved = sum(int(n) for n in re.findall(MOVED, server.log_text()))
                if moved:
                    break
            served_before = len(statuses)
            await asyncio.sleep(1.0)
        log = server.log_text()
    print(f"{kills} kill(s); up again {recovered:.2f} s after the last; {len(statuses)} answers, {moved} moved over")
    assert moved > 0  # some were waiting on a killed process when it died
    assert others == []
    assert len(statuses) > served_before
    assert re.search(r"inference-\d exited", log)  # the supervisor saw it, and started it again


async def test_a_move_made_outside_the_server_reaches_every_inference_process_without_a_poll(tmp_path: Path) -> None:
    """The registry is polled once an hour here. After a move made with the ops CLI, inference
    process 1 starts again (as after a crash) and reads it; process 0 has not polled since. Only
    the front ends comparing the two processes' aliases can make process 0 follow: without that,
    the host would answer from v1 and v2 for the rest of the hour."""
    backend = colors_backend(_sqlite_backend(tmp_path), tmp_path)
    env = env_for(backend, SERVE_INFERENCE_PROCESSES="2", SERVE_POLL_INTERVAL_S="3600")
    with server_process(env, workers=2, log_level="info") as server:
        with backend.registry() as reg:  # what `python -m registry promote colors 2` does
            reg.promote(name="colors", version=2)
        before = children(server, "inference")
        os.kill(before[1], signal.SIGKILL)
        killed = time.monotonic()
        async with httpx.AsyncClient(timeout=10) as client:
            while True:  # until process 1 is back and both have followed the move
                now = children(server, "inference")
                workers = (await client.get(f"{server.url}/readyz")).json()["workers"]
                model = (await client.get(f"{server.url}/v1/models/colors")).json()
                current = sorted(v["version"] for v in model["loaded"] if v["role"] == "current")
                if before[1] not in now and len(now) == 2 and workers["inference"] == "up" and current == [2]:
                    break
                assert time.monotonic() - killed < 30, f"still serving {current} (processes {now}): {workers}"
                await asyncio.sleep(0.1)
            # Requests in a row all go to process 0 (the tie goes to the first), which now runs v2.
            answers = [(await post_red(client, server)).json() for _ in range(5)]
        log = server.log_text()
    print(f"both processes serve v2 {time.monotonic() - killed:.2f} s after the restart began")
    assert [(a["version"], a["predictions"][0]["label"]) for a in answers] == [(2, "green")] * 5
    assert "disagree on the aliases of colors" in log
