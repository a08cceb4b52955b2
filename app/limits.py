"""Limits enforced in front of the application: request body size, and requests in flight."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLargeError, error_body

INFERENCE_SUFFIXES = ("/predict", "/infer")


class BodyLimitMiddleware:
    """413 for a declared Content-Length over the limit; for chunked bodies, once the count passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        limit = self.max_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


class InflightCounter:
    """Inference requests between arrival and answer, shared by the admission gate and the batchers."""

    def __init__(self) -> None:
        self.value = 0

    def others_than(self, queued: int) -> bool:
        """Whether requests beyond the ``queued`` ones are in flight (and may join a batch)."""
        return self.value > queued


class AdmissionMiddleware:
    """Sheds inference requests past `max_inflight` at once, with 503 and Retry-After, unread.

    The batcher's queue bound limits rows waiting for ONNX Runtime, but under a flood the
    requests pile up before that, in the event loop (parsing, reading, decoding), and
    every accepted request waits behind them. Refusing at the door keeps the latency of
    accepted requests bounded, and a refusal costs almost nothing.
    """

    def __init__(
        self, app: ASGIApp, max_inflight: int, counter: InflightCounter, on_shed: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.counter = counter
        self._on_shed = on_shed
        # Refusals come by the thousand per second under a flood: their answers are made once.
        message = f"server overloaded: {max_inflight} requests in flight, retry shortly"
        self._refusals = {prefix: _payload(prefix, message) for prefix in ("/v1", "/v2")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(INFERENCE_SUFFIXES):
            await self.app(scope, receive, send)
            return
        if self.counter.value >= self.max_inflight:
            if self._on_shed is not None:
                self._on_shed()
            payload = self._refusals["/v2" if scope["path"].startswith("/v2") else "/v1"]
            await _send(send, payload, status=503, extra_headers=[(b"retry-after", b"1")])
            return
        self.counter.value += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.counter.value -= 1


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
