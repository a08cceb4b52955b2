"""Clients that trickle their request bodies, for the S6 scenario: each sends its headers, then
one byte of a small multipart body every `interval` seconds, and connects again whenever the
server cuts it off. They run on their own event loop in a thread, against loopback only, until
stopped."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class TrickleStats:
    connections: int = 0
    cut_off: int = 0  # the server answered (408) or closed before the body was complete
    statuses: dict[str, int] = field(default_factory=dict)


class Tricklers:
    def __init__(self, url: str, path: str, *, clients: int = 100, interval: float = 0.5, body_bytes: int = 4096):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        assert self.host in ("127.0.0.1", "localhost", "::1"), "slow clients only target this machine"
        self.path = path
        self.clients = clients
        self.interval = interval
        self.body_bytes = body_bytes
        self.stats = TrickleStats()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def __enter__(self) -> Tricklers:
        self._thread = threading.Thread(target=self._run, name="tricklers", daemon=True)
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        self._started.set()
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self) -> None:
        boundary = "trickle"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + b"\0" * self.body_bytes
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(self.interval)
                continue
            self.stats.connections += 1
            try:
                writer.write(head)
                for i in range(len(body)):
                    writer.write(body[i : i + 1])
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        answer = await asyncio.wait_for(reader.read(64), self.interval)
                        if answer or reader.at_eof():
                            status = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/") else "closed"
                            self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
                            self.stats.cut_off += 1
                            break
            except (ConnectionError, OSError):
                self.stats.cut_off += 1
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
