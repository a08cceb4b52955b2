"""Hostile clients against a real server process: slow and idle connections, decode bombs,
malformed protocol input. Every answer is a documented 4xx (never a 5xx), the server stays ready,
and its memory comes back after the bursts.

The server runs with short timeouts (headers 1 s, bodies 3 s) so the module stays quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import _sqlite_backend
from tests.images import solid
from tests.onnx_models import color_classifier, color_metadata
from tests.server import Server, server_process

TOKEN = "hostile-admin-token-0123456789"
BYTES_INPUT = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]}
STATUSES: list[tuple[str, int]] = []  # every answer this module got: none may be >= 500


def rss_mb(pid: int) -> float:
    """The resident memory of ``pid`` and of its children (a host's front ends and inference process)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1]) / 1024
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return total + sum(rss_mb(int(child)) for child in children)


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One process, and a host of two front ends: the limits below are per front end."""
    root = tmp_path_factory.mktemp("hostile")
    backend = _sqlite_backend(root)
    with backend.registry() as reg:
        reg.register(name="colors", onnx_path=color_classifier(root / "m.onnx"), metadata=color_metadata())
        reg.promote(name="colors", version=1)
    env = {
        **backend.env,
        "SERVE_ADMIN_TOKENS": f"ops:{TOKEN}",
        "SERVE_LIMITS__HEADER_TIMEOUT_S": "1",
        "SERVE_LIMITS__BODY_TIMEOUT_S": "3",
        "SERVE_LIMITS__SEND_TIMEOUT_S": "2",
        "SERVE_LIMITS__MAX_INFLIGHT_REQUESTS": "4",
        "SERVE_WARMUP_BATCH_SIZES": "[1]",
    }
    with server_process(env, workers=request.param) as running:
        running.workers = request.param  # type: ignore[attr-defined]
        running.ready_rss = rss_mb(running.proc.pid)  # type: ignore[attr-defined]
        yield running


def record(name: str, response: httpx.Response) -> httpx.Response:
    STATUSES.append((name, response.status_code))
    return response


def predict(server: Server, client: httpx.Client | None = None, image: bytes | None = None) -> httpx.Response:
    files = {"images": ("r.png", image or solid("red"), "image/png")}
    if client is None:
        return record("predict", httpx.post(f"{server.url}/v1/models/colors/predict", files=files, timeout=30))
    return record("predict", client.post(f"{server.url}/v1/models/colors/predict", files=files))


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"connection still open after {timeout} s") from None
    except ConnectionResetError:
        pass
    return data


def test_connections_that_never_send_a_request_are_closed(server: Server) -> None:
    sockets = [socket.create_connection(address(server)) for _ in range(200)]
    try:
        started = time.monotonic()
        answers = [read_until_closed(sock, timeout=15) for sock in sockets]
        print(f"200 idle connections closed after {time.monotonic() - started:.1f} s")
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers)
    finally:
        for sock in sockets:
            sock.close()
    assert predict(server).status_code == 200


def test_headers_sent_a_byte_at_a_time_are_cut_off(server: Server) -> None:
    with socket.create_connection(address(server)) as sock:
        request = b"POST /v1/models/colors/predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() - started > 10:
                break
        if not closed:
            assert read_until_closed(sock, timeout=10).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 10


async def test_slow_senders_neither_hold_slots_nor_stay_forever(server: Server) -> None:
    """Twelve clients trickle their bodies (the server allows 4 requests in flight): normal
    requests beside them are all answered, and the tricklers get 408 once their time is up."""
    body = httpx.Request("POST", server.url, files={"images": ("r.png", solid("red"), "image/png")})
    payload = body.read()
    headers = {"content-type": body.headers["content-type"]}

    async def trickle() -> bytes:
        for i in range(len(payload)):
            yield payload[i : i + 1]
            await asyncio.sleep(0.2)

    async with httpx.AsyncClient(timeout=30) as slow, httpx.AsyncClient(timeout=30) as fast:
        tricklers = [
            asyncio.ensure_future(
                slow.post(f"{server.url}/v1/models/colors/predict", content=trickle(), headers=headers)
            )
            for _ in range(12)
        ]
        await asyncio.sleep(0.5)
        normal = []
        for _ in range(20):
            r = await fast.post(
                f"{server.url}/v1/models/colors/predict", files={"images": ("r.png", solid("red"), "image/png")}
            )
            normal.append(record("beside tricklers", r).status_code)
        assert normal == [200] * 20
        started = time.monotonic()
        results = await asyncio.gather(*tricklers, return_exceptions=True)
        print(f"tricklers ended {time.monotonic() - started:.1f} s after the normal requests")
    for result in results:
        if isinstance(result, httpx.Response):
            record("trickler", result)
            assert result.status_code == 408, result.text
            assert "request body" in result.json()["error"]
        else:  # the server closed the connection after its 408 while the client was still sending
            assert isinstance(result, httpx.TransportError), repr(result)


def _bilevel_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_pipelining_without_reading_neither_grows_memory_nor_delays_others(server: Server) -> None:
    """Each connection sends a read's worth (256 KB, ~7,500 requests) of pipelined requests and
    reads nothing: the server queues a few per connection, answers them, and closes."""
    from app.protocol import MAX_PIPELINED

    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    pipelined = request * (256_000 // len(request))
    before = closed_early(httpx.get(f"{server.url}/metrics", timeout=10).text, "pipeline_full")
    connections = [socket.create_connection(address(server)) for _ in range(20)]
    try:
        for sock in connections:
            sock.sendall(pipelined)
        started = time.monotonic()
        assert predict(server).status_code == 200
        beside = time.monotonic() - started
        answers = [read_until_closed(sock, timeout=10) for sock in connections]
    finally:
        for sock in connections:
            sock.close()
    print(f"a request beside 20 pipelining connections took {beside * 1000:.0f} ms")
    assert beside < 2  # it took 8 s behind 50 such connections when all their requests were queued
    for answer in answers:
        assert answer.count(b"HTTP/1.1 200 OK") == MAX_PIPELINED + 1  # the one being answered, and those queued
        assert answer.endswith(b"}")  # whole, then the end of the stream, not a reset
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert closed_early(metrics, "pipeline_full") - before == len(connections)
    with socket.create_connection(address(server)) as sock:  # moderate pipelining is served whole
        sock.sendall(request * 3)
        sock.settimeout(10)
        got = b""
        while got.count(b"HTTP/1.1 200 OK") < 3 and (chunk := sock.recv(65536)):
            got += chunk
        assert got.count(b"HTTP/1.1 200 OK") == 3 and b"connection: close" not in got


def unread_by_server(server: Server, client: socket.socket) -> int | None:
    """The bytes ``client`` sent that the server's process has not read yet (the receive queue of
    the server's end of the connection, from /proc); None once that end is gone."""
    server_port, client_port = address(server)[1], client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(end.rsplit(":", 1)[1], 16) for end in fields[1:3])
        if (local, remote) == (server_port, client_port):
            return int(fields[4].split(":")[1], 16)
    return None


def test_clients_that_do_not_read_their_answers_are_cut_off(server: Server) -> None:
    """Each connection asks for the API description (45 KB) up to 150 times and reads nothing:
    more than the kernel's buffers hold. The answer that can no longer be written would keep its
    request, and an inference request its admission slot, for as long as the client keeps the
    connection; after SERVE_LIMITS__SEND_TIMEOUT_S (2 s here) it is cut.

    A request is sent only once the server has read the ones before it, so the connection never
    has more than a request or two waiting: a slow server (a busy machine) would otherwise find
    more than `MAX_PIPELINED` in one read and end the connection for that instead. Once an answer
    cannot be written, the server stops reading, and so does the sending."""
    request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
    before = closed_early(httpx.get(f"{server.url}/metrics", timeout=10).text, "send_timeout")
    connections = []
    for _ in range(3):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # small, to fill sooner
        sock.connect(address(server))
        sock.settimeout(5)
        connections.append(sock)
    try:
        sent = [0] * len(connections)
        last_sent = time.monotonic()
        while min(sent) < 150 and time.monotonic() - last_sent < 1:  # a second without a send: all stalled
            for i, sock in enumerate(connections):
                if sent[i] < 150 and unread_by_server(server, sock) == 0:
                    with contextlib.suppress(OSError):  # already cut off
                        sock.sendall(request)
                    sent[i] += 1
                    last_sent = time.monotonic()
            time.sleep(0.005)
        print(f"requests sent on each connection: {sent}")
        started = time.monotonic()
        cut: set[int] = set()
        while len(cut) < len(connections) and time.monotonic() - started < 30:
            cut |= {i for i, sock in enumerate(connections) if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)}
            time.sleep(0.1)
        print(f"{len(cut)} of {len(connections)} connections cut off within {time.monotonic() - started:.1f} s")
    finally:
        for sock in connections:
            sock.close()
    assert len(cut) == len(connections)
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert closed_early(metrics, "send_timeout") - before == len(connections)
    assert predict(server).status_code == 200


@pytest.mark.parametrize(
    ("start", "filler", "status"),
    [
        (b"GET /healthz", b"a" * 1000, b"414"),  # the URL never ends
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Fill: " + b"a" * 1000 + b"\r\n", b"431"),
    ],
    ids=["url", "headers"],
)
def test_a_request_head_that_never_ends_is_refused_before_it_grows(
    server: Server, start: bytes, filler: bytes, status: bytes
) -> None:
    """Without a limit, one connection sending headers for 4 s took the server from 164 MB to 1.6 GB."""
    before = closed_early(httpx.get(f"{server.url}/metrics", timeout=10).text, "head_too_large")
    with socket.create_connection(address(server)) as sock:
        sock.sendall(start)
        sent, started = 0, time.monotonic()
        with contextlib.suppress(OSError):  # the server closed the connection after its answer
            while sent < 20 * 2**20 and time.monotonic() - started < 10:
                if select.select([sock], [], [], 0)[0]:  # answered: stop before the server has to reset
                    break
                sock.sendall(filler * 100)
                sent += len(filler) * 100
        answer = read_until_closed(sock, timeout=10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert "over 64 KiB" in json.loads(body)["error"]
    STATUSES.append(("endless head", int(status)))
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert closed_early(metrics, "head_too_large") - before == 1
    cookie = {"Cookie": "c" * 30_000}  # a large head that is still allowed
    assert record("large cookie", httpx.get(f"{server.url}/healthz", headers=cookie, timeout=10)).status_code == 200


def test_decode_bombs_are_refused_before_decoding(server: Server) -> None:
    bomb = _bilevel_png(6300)  # ~5 KB, 39.7 MP: under the header limit, over the decoded-pixel one
    assert len(bomb) < 10_000
    started = time.monotonic()
    r = predict(server, image=bomb)
    assert r.status_code == 413
    assert "decodes to 6300x6300" in r.json()["error"]
    many = [("images", (f"{i}.png", bomb, "image/png")) for i in range(64)]
    r = record("bombs", httpx.post(f"{server.url}/v1/models/colors/predict", files=many, timeout=30))
    assert r.status_code == 413
    assert time.monotonic() - started < 5  # headers only: no second of CPU per image


def test_a_request_over_its_pixel_budget_is_refused_and_a_large_legal_one_is_served(server: Server) -> None:
    big = solid("red", (3000, 3000))  # 9 MP each
    eight = [("images", (f"{i}.png", big, "image/png")) for i in range(8)]
    r = record("budget", httpx.post(f"{server.url}/v1/models/colors/predict", files=eight, timeout=60))
    assert r.status_code == 413
    assert "decode to 72000000 pixels together" in r.json()["error"]
    four = eight[:4]  # 36 MP: under the budget, decoded and classified
    r = record("large", httpx.post(f"{server.url}/v1/models/colors/predict", files=four, timeout=60))
    assert r.status_code == 200
    assert [p["label"] for p in r.json()["predictions"]] == ["red"] * 4


@pytest.mark.parametrize(
    ("name", "method", "path", "kwargs", "status"),
    [
        ("huge version", "POST", f"/v1/models/colors/predict?version={2**63}", {"files": {"images": ("a", b"x")}}, 400),
        ("huge v2 version", "GET", f"/v2/models/colors/versions/{2**63}/ready", {}, 404),
        ("superscript digit", "GET", "/v2/models/colors/versions/%C2%B3", {}, 404),
        ("arabic digit", "POST", "/v2/models/colors/versions/%D9%A1/infer", {"json": BYTES_INPUT}, 404),
        (
            "unicode header length",
            "POST",
            "/v2/models/colors/infer",
            {"content": b"{}", "headers": {"Inference-Header-Content-Length": "\u00b2".encode()}},
            400,
        ),
        (
            "nested json",
            "POST",
            "/v2/models/colors/infer",
            {"content": b"[" * 20000 + b"]" * 20000, "headers": {"content-type": "application/json"}},
            400,
        ),
        (
            "gzip bomb",
            "POST",
            "/v2/models/colors/infer",
            {"content": gzip.compress(b"0" * 50_000_000), "headers": {"content-encoding": "gzip"}},
            413,
        ),
        ("no body", "POST", "/v1/models/colors/predict", {}, 400),
        (
            "not an image",
            "POST",
            "/v1/models/colors/predict",
            {"content": b"hello", "headers": {"content-type": "image/png"}},
            400,
        ),
        ("text/plain", "POST", "/predict", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
        ("bad json admin", "PUT", "/v1/models/colors/aliases/production", {"content": b"{x"}, 401),
        ("405", "POST", "/v1/models/colors/aliases/production", {}, 405),
        ("unknown route", "GET", "/v3/nothing", {}, 404),
        ("bad model name", "GET", "/v1/models/..%2F..%2Fetc", {}, 404),
        (
            "65 files",
            "POST",
            "/v1/models/colors/predict",
            {"files": [("images", (f"{i}", b"x")) for i in range(65)]},
            413,
        ),
        (
            "huge body",
            "POST",
            "/v1/models/colors/predict",
            {"content": b"\0" * (11 * 1024 * 1024), "headers": {"content-type": "image/png"}},
            413,
        ),
    ],
)
def test_malformed_requests_get_documented_client_errors(
    server: Server, name: str, method: str, path: str, kwargs: dict, status: int
) -> None:
    r = record(name, httpx.request(method, f"{server.url}{path}", timeout=30, **kwargs))
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert "error" in r.json()


def test_a_declared_huge_body_is_refused_before_it_is_sent(server: Server) -> None:
    with socket.create_connection(address(server)) as sock:
        sock.sendall(
            b"POST /v2/models/colors/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999999\r\n\r\n{}"
        )
        answer = read_until_closed(sock, timeout=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    STATUSES.append(("declared huge body", 413))


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/models/colors/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /readyz HTTP/1.1\r\nHost x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello sent to the plain port
    ],
    ids=["content-length", "header-without-colon", "tls-hello"],
)
def test_unparseable_requests_get_a_json_400_and_a_closed_connection(server: Server, request_bytes: bytes) -> None:
    with socket.create_connection(address(server)) as sock:
        sock.sendall(request_bytes)
        answer = read_until_closed(sock, timeout=10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"content-type: application/json" in head.lower()
    assert "malformed HTTP request" in json.loads(body)["error"]
    STATUSES.append(("unparseable", 400))


def test_a_client_sending_garbage_is_counted_and_does_not_fill_the_log(server: Server) -> None:
    for _ in range(30):
        with socket.create_connection(address(server)) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost x\r\n\r\n")
            assert read_until_closed(sock, timeout=10).startswith(b"HTTP/1.1 400")
    with socket.create_connection(address(server)) as sock:  # and one that never sends its headers
        assert read_until_closed(sock, timeout=10).startswith(b"HTTP/1.1 408")
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert closed_early(metrics, "malformed") >= 30  # with the earlier tests' own
    assert closed_early(metrics, "header_timeout") >= 1
    warnings = [line for line in server.log_text().splitlines() if "Invalid HTTP request received" in line]
    assert 1 <= len(warnings) <= server.workers, warnings  # type: ignore[attr-defined] # once a minute per front end


def closed_early(metrics: str, reason: str) -> float:
    prefix = f'http_connections_closed_early_total{{reason="{reason}"}} '
    return sum(float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("upgrade", ["h2c", "websocket"])
def test_upgrade_requests_get_an_answer(server: Server, upgrade: str) -> None:
    """The server speaks neither HTTP/2 nor WebSocket: an upgrade request is answered as HTTP/1.1
    (h2c) or refused (no WebSocket route), never with a 5xx or a dropped connection."""
    headers = {"Connection": "Upgrade", "Upgrade": upgrade}
    if upgrade == "websocket":
        headers |= {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    r = record(f"upgrade {upgrade}", httpx.get(f"{server.url}/healthz", headers=headers, timeout=10))
    assert r.status_code == (200 if upgrade == "h2c" else 403), r.text


def test_head_on_health_routes(server: Server) -> None:
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert record("head", httpx.head(f"{server.url}{path}", timeout=10)).status_code == 200


def test_after_all_that_the_server_is_ready_and_gave_its_memory_back(server: Server) -> None:
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    assert predict(server).status_code == 200
    errors = [(name, status) for name, status in STATUSES if status >= 500]
    assert errors == []
    ready = server.ready_rss  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while (now := rss_mb(server.proc.pid)) > 1.5 * ready and time.monotonic() < deadline:
        time.sleep(0.2)  # the heap is handed back once decoding has gone idle
    print(f"RSS {ready:.0f} MB at ready, {now:.0f} MB after {len(STATUSES)} hostile and normal requests")
    assert now <= 1.5 * ready
