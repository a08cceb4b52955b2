"""uvicorn's httptools protocol with a deadline for request headers.

uvicorn closes a connection that idles between requests (`timeout_keep_alive`), but not one
that never sends a request, nor one that sends its headers a byte at a time: 1,000 such
connections stayed open indefinitely. Here every request's headers must be complete within
`header_timeout` seconds of the connection opening, or of the request's first byte; past it
the connection gets a 408 and is closed.

When a connection is lost while its request still waits for an answer, the request is told
(`app.disconnect`), so rows nobody will read are not computed.

uvicorn writes a response's status line and headers, then its body, each with a system call of
its own; here they leave together in one (`Corked`), as soon as the response is complete, before
the middleware's work after it (metrics) runs.

A request the parser cannot read (a malformed request line or header) gets a 400 with a JSON body,
as every other error does, and the connection is closed. These answers, and the 408s, never reach
the app, so its metrics cannot count them: the protocol reports them (`on_refused`). uvicorn logs a
warning for each unparseable request; a client sending garbage would fill the log with them, so
that warning is let through at most once a minute, with how many it stands for (`QuietParserLog`).

This leans on uvicorn internals (`HttpToolsProtocol`'s callbacks), so uvicorn is pinned to a
range in pyproject.toml and the hostile-client tests run against a real server process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.disconnect import hang_up


def _closing_response(status: bytes, error: str) -> bytes:
    """A JSON error response, sent before the connection is closed."""
    body = json.dumps({"error": error}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


TIMEOUT_RESPONSE = _closing_response(b"408 Request Timeout", "request headers not received in time")
MALFORMED_RESPONSE = _closing_response(
    b"400 Bad Request", "malformed HTTP request: the request line or headers could not be parsed"
)


class Corked:
    """A connection's transport whose writes are held until `flush` (the protocol calls it when a
    response is complete) or the end of the event loop's turn, and then leave together, in one
    `writev`. Everything else goes straight to the transport; closing writes what is held first."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        held, self._held = self._held, []
        if not held or self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class QuietParserLog(logging.Filter):
    """Lets uvicorn's warning about an unparseable request through at most once per ``interval``
    seconds; the one let through says how many it stands for."""

    MESSAGE = "Invalid HTTP request received."

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.MESSAGE:
            return True
        now = self._clock()
        if now < self._next:
            self._held += 1
            return False
        if self._held:
            record.msg = "%s (and %d more since the last such warning; http_protocol_errors_total counts them all)"
            record.args = (self.MESSAGE.rstrip("."), self._held)
        self._held = 0
        self._next = now + self.interval
        return True


_UVICORN_LOG = logging.getLogger("uvicorn.error")  # the logger uvicorn's protocols write to


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    on_refused: Callable[[int], None] | None = None  # told the status of each request refused here

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, Corked(transport, self.loop)))
        self._arm_header_timer()  # a connection that never sends a request is closed too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """What the parser cannot read gets the JSON error body every other answer has; uvicorn's
        own is plain text."""
        self.transport.write(MALFORMED_RESPONSE)
        self.transport.close()
        self._refused(400)

    def on_response_complete(self) -> None:
        cast(Corked, self.transport).flush()  # the response's head and body, in one system call
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            hang_up(
                cast("MutableMapping[str, Any]", cycle.scope)
            )  # a request waiting for its batch stops waiting (app.disconnect)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # between requests, nothing is running
            self.transport.write(TIMEOUT_RESPONSE)
            self._refused(408)
        self.transport.close()

    def _refused(self, status: int) -> None:
        if self.on_refused is not None:
            self.on_refused(status)


def protocol_with(
    header_timeout: float, on_refused: Callable[[int], None] | None = None
) -> type[HeaderTimeoutProtocol]:
    """The protocol class uvicorn instantiates per connection, with this deadline; ``on_refused``
    is told the status (400, 408) of each request answered here, before the app. uvicorn's warning
    for each unparseable request is thinned from here on (`QuietParserLog`)."""
    if not any(isinstance(existing, QuietParserLog) for existing in _UVICORN_LOG.filters):
        _UVICORN_LOG.addFilter(QuietParserLog())
    attributes: dict[str, Any] = {"header_timeout": header_timeout}
    if on_refused is not None:
        attributes["on_refused"] = staticmethod(on_refused)
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), attributes)
