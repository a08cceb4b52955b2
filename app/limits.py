"""Limits enforced in front of the application: the request body's size and pace, requests in
flight, and the pixels being decoded.

Hostile or broken clients must not take capacity from the others:
- a body must arrive within `body_timeout_s` and, after 5 s, at `min_body_rate` bytes/s on
  average (408 otherwise), so a trickling sender cannot hold a request open for an hour;
- a request counts against `max_inflight_requests` only once its body has arrived, so slow
  senders cannot fill the slots that requests ready to run need;
- decoding is budgeted in pixels, server-wide (`DecodeBudget`), so a burst of decode-heavy
  requests is refused with 503 rather than queued for minutes of CPU.
Connections idle before their first request, or slow to send headers, are closed by the
HTTP protocol (`app.protocol`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLargeError, RequestTimeoutError, UnavailableError, error_body

log = logging.getLogger("app.limits")

INFERENCE_SUFFIXES = ("/predict", "/infer")
MIN_RATE_GRACE_S = 5.0
CLOSE = {"Connection": "close"}  # the rest of a refused body is not worth reading


class BodyLimitMiddleware:
    """413 for a body over the limit (declared or counted); 408 for one that arrives too slowly."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        timeout_s: float = 60.0,
        min_rate: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await _reject(scope, send, f"request body is {declared} bytes, the limit is {self.max_bytes}")
                    return
                break
        received = 0
        complete = False
        limit = self.max_bytes
        started = self.clock()
        deadline = started + self.timeout_s

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: what follows is a disconnect, whenever it comes
                return await receive()
            now = self.clock()
            until = deadline
            if self.min_rate:  # when the average rate would fall below the minimum
                until = min(until, started + max(MIN_RATE_GRACE_S, received / self.min_rate))
            try:
                async with asyncio.timeout(max(0.0, until - now)):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(
                    _too_slow(received, self.clock() - started, self.timeout_s), headers=CLOSE
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes", headers=CLOSE)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, send)


def _too_slow(received: int, elapsed: float, timeout_s: float) -> str:
    if elapsed >= timeout_s:
        return f"request body not complete after {timeout_s:g} s ({received} bytes arrived)"
    return f"request body arriving too slowly: {received} bytes in {elapsed:.1f} s"


class InflightCounter:
    """Inference requests between arrival and answer, shared by the admission gate and the batchers."""

    def __init__(self) -> None:
        self.value = 0  # admitted: bodies arrived, not answered yet
        self.receiving = 0  # let in, bodies still arriving (they hold no slot)

    def others_than(self, queued: int) -> bool:
        """Whether requests beyond the ``queued`` ones are in flight (and may join a batch)."""
        return self.value > queued


class AdmissionMiddleware:
    """Sheds inference requests past `max_inflight` with 503 and Retry-After.

    A request takes its slot when its body has arrived: a client still sending holds no slot,
    so slow senders cannot starve requests ready to run. When the slots are already taken as a
    request arrives, it is refused unread, which costs almost nothing under a flood.

    The batcher's queue bound limits rows waiting for ONNX Runtime, but under a flood the
    requests pile up before that, in the event loop (parsing, decoding), and every accepted
    request waits behind them. Refusing at the door keeps the latency of accepted requests
    bounded.
    """

    def __init__(
        self, app: ASGIApp, max_inflight: int, counter: InflightCounter, on_shed: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.counter = counter
        self._on_shed = on_shed
        # Refusals come by the thousand per second under a flood: their answers are made once.
        self._message = f"server overloaded: {max_inflight} requests in flight, retry shortly"
        self._refusals = {prefix: _payload(prefix, self._message) for prefix in ("/v1", "/v2")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(INFERENCE_SUFFIXES):
            await self.app(scope, receive, send)
            return
        counter = self.counter
        if counter.value >= self.max_inflight:
            self._shed()
            payload = self._refusals["/v2" if scope["path"].startswith("/v2") else "/v1"]
            await _send(send, payload, status=503, extra_headers=[(b"retry-after", b"1")])
            return
        admitted = receiving = False

        async def admitting_receive() -> Message:
            nonlocal admitted, receiving
            message = await receive()
            if not admitted and message["type"] == "http.request" and not message.get("more_body", False):
                if receiving:
                    counter.receiving -= 1
                    receiving = False
                if counter.value >= self.max_inflight:
                    self._shed()
                    raise UnavailableError(self._message, headers={"Retry-After": "1"})
                counter.value += 1
                admitted = True
            elif not admitted and not receiving and message["type"] == "http.request":
                counter.receiving += 1
                receiving = True
            return message

        try:
            await self.app(scope, admitting_receive, send)
        finally:
            if admitted:
                counter.value -= 1
            if receiving:
                counter.receiving -= 1

    def _shed(self) -> None:
        if self._on_shed is not None:
            self._on_shed()


class DecodeBudget:
    """Pixels being decoded (or waiting for a decoding thread), server-wide, bounded.

    `take` refuses at once when a request's pixels would pass the capacity: waiting would only
    queue seconds of CPU behind the requests already decoding. After a burst, once nothing is
    being decoded, the heap the decoders freed is handed back to the OS (``on_idle``)."""

    def __init__(
        self, capacity: int, *, on_idle: Callable[[], None] | None = None, idle_after: int = 16_000_000
    ) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._on_idle = on_idle
        self._idle_after = idle_after
        self._since_idle = 0

    def take(self, pixels: int) -> None:
        if self.in_use + pixels > self.capacity:
            raise UnavailableError(
                f"server busy decoding images ({self.in_use} of {self.capacity} pixels in progress), retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_use += pixels
        self._since_idle += pixels

    def give_back(self, pixels: int) -> None:
        self.in_use -= pixels
        if self.in_use == 0 and self._since_idle >= self._idle_after and self._on_idle is not None:
            self._since_idle = 0
            self._on_idle()


def _payload(path: str, message: str) -> bytes:
    return json.dumps(error_body(path, message)).encode()


async def _reject(scope: Scope, send: Send, message: str) -> None:
    await _send(send, _payload(scope.get("path", ""), message), status=413)


async def _send(
    send: Send, payload: bytes, *, status: int, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": payload})
