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

A client may pipeline requests (send the next before the answer to the last), but at most
`MAX_PIPELINED` wait behind the one being answered. uvicorn parses whatever a read brings: one
read of 256 KB held about 7,700 tiny requests, each queued with its own state (~3 KB), and 50
connections that pipelined without reading their answers took the server from 170 MB to over
1 GB while a normal request waited 8 s. Past the limit nothing more is read from the connection;
the requests already queued are answered, the last with `connection: close`, and the connection
is closed. HTTP/1.1 clients retry the requests a closed connection left unanswered (RFC 9112,
9.3.2).

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

import httptools
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

MAX_PIPELINED = 16  # requests a connection may have waiting behind the one being answered


class _PipelineFull(Exception):
    """Raised from a parser callback to stop parsing what the connection sent."""


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    on_refused: Callable[[int], None] | None = None  # told the status of each request refused here

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._reading = True  # False once the pipeline was full: nothing more is parsed

    def data_received(self, data: bytes) -> None:
        """uvicorn's, but a full pipeline stops reading instead of counting as a malformed request."""
        if not self._reading:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self._reading:  # on_message_begin stopped the parser: see MAX_PIPELINED
                return
            self.logger.warning(QuietParserLog.MESSAGE)
            self.send_400_response(QuietParserLog.MESSAGE)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, Corked(transport, self.loop)))
        self._arm_header_timer()  # a connection that never sends a request is closed too

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:
            self._reading = False
            newest, _ = self.pipeline[0]  # queued with appendleft
            newest.keep_alive = False  # its answer says connection: close, then the connection closes
            raise _PipelineFull
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
