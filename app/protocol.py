"""uvicorn's httptools protocol with deadlines for request headers and for clients reading answers.

uvicorn closes a connection that idles between requests (`timeout_keep_alive`), but not one
that never sends a request, nor one that sends its headers a byte at a time: 1,000 such
connections stayed open indefinitely. Here every request's headers must be complete within
`header_timeout` seconds of the connection opening, or of the request's first byte; past it
the connection gets a 408 and is closed.

A client that sends requests but does not read the answers would hold their admission slots for
as long as it keeps the connection: once the kernel's buffers and the transport's are full, the
request writing its answer waits, in flight. Four such connections, each sending requests of 32
images and reading nothing, held all 4 slots of a server after about 175 requests each, and every
other client got 503 from then on. Here a connection whose writes have stood still (the transport
paused, above its high-water mark) for `send_timeout` seconds is aborted: the waiting requests
end, their slots free.

When a connection is lost while its request still waits for an answer, the request is told
(`app.disconnect`), so rows nobody will read are not computed.

uvicorn writes a response's status line and headers, then its body, each with a system call of
its own; here they leave together in one (`Corked`), as soon as the response is complete, before
the middleware's work after it (metrics) runs.

A client may pipeline requests (send the next before the answer to the last), but at most
`MAX_PIPELINED` wait behind the one being answered. uvicorn parses whatever a read brings: one
read of 256 KB held about 7,700 tiny requests, each queued with its own state (~3 KB), and 50
connections that pipelined without reading their answers took the server from 170 MB to over
1 GB while a normal request waited 8 s. Past the limit nothing more is parsed: the requests
already queued are answered, then the server half-closes the connection and closes it once the
client has (or after `LINGER_S`), reading and dropping what it still sends meanwhile. Closing with
unread data would reset the connection, and a reset can make the client's system drop answers
it has not read yet. HTTP/1.1 clients send the requests a closed connection left unanswered again
(RFC 9112, 9.3.2).

A request's line and headers together may hold `MAX_HEAD_BYTES`; uvicorn sets no limit, and one
connection sending headers for 4 s took the server from 164 MB to 1.6 GB. Past it the request is
answered 414 (a URL that long) or 431, and the connection is closed.

A request the parser cannot read (a malformed request line or header) gets a 400 with a JSON body,
as every other error does, and the connection is closed. These answers, and the 408s, never reach
the app, so its metrics cannot count them: the protocol reports them (`on_closed`), and the
connections it ends for a full pipeline, a head too large or a send timeout. uvicorn logs a
warning for each unparseable request; a client sending garbage would fill the log with them, so
here it is written at most once a minute, with how many it stands for (`ParserWarnings`).

This leans on uvicorn internals (`HttpToolsProtocol`'s callbacks), so uvicorn is pinned to a
range in pyproject.toml and the hostile-client tests run against a real server process.
"""

from __future__ import annotations

import asyncio
import json
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


MAX_PIPELINED = 16  # requests a connection may have waiting behind the one being answered
MAX_HEAD_BYTES = 64 * 1024  # a request's URL and headers together
HEAD_LIMIT = f"{MAX_HEAD_BYTES // 1024} KiB"  # as errors and help texts say it

TIMEOUT_RESPONSE = _closing_response(b"408 Request Timeout", "request headers not received in time")
URL_TOO_LONG_RESPONSE = _closing_response(b"414 URI Too Long", f"the request line is over {HEAD_LIMIT}")
HEADERS_TOO_LARGE_RESPONSE = _closing_response(
    b"431 Request Header Fields Too Large", f"the request line and headers are over {HEAD_LIMIT} together"
)
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


class ParserWarnings:
    """The warning for an unparseable request, at most once per ``interval`` seconds; the one
    written says how many it stands for."""

    MESSAGE = "Invalid HTTP request received."

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._held = 0

    def next(self) -> str | None:
        """The warning to write for one more unparseable request; None: not yet."""
        now = self._clock()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval
        if not held:
            return self.MESSAGE
        return (
            f"{self.MESSAGE.rstrip('.')} (and {held} more since the last such warning; "
            "http_connections_closed_early_total counts them all)"
        )


_PARSER_WARNINGS = ParserWarnings()  # one per process, for all its connections

LINGER_S = 2.0  # after a full pipeline's last answer: how long the client has to close its side


class _StopParsing(Exception):
    """Raised from a parser callback to stop parsing what the connection sent."""


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout: float  # these two come from `protocol_with`, which the settings' values go to
    send_timeout: float
    on_closed: Callable[[str], None] | None = None  # told why, each time a connection is closed here

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._reading = True  # False once a parser callback stopped it: nothing more is parsed
        self._head_bytes = 0
        self._send_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        """uvicorn's, but a parser callback may stop reading on purpose (`_StopParsing`): that is not a
        malformed request. The warning for one that is comes at most once a minute (`ParserWarnings`)."""
        if not self._reading:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self._reading:  # a callback stopped the parser: see MAX_PIPELINED, MAX_HEAD_BYTES
                return
            if (warning := _PARSER_WARNINGS.next()) is not None:
                self.logger.warning(warning)
            self.send_400_response(ParserWarnings.MESSAGE)
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
            self._reading = False  # on_response_complete closes the connection after the queued answers
            self._closed("pipeline_full")
            raise _StopParsing
        super().on_message_begin()
        self._head_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url), URL_TOO_LONG_RESPONSE)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value), HEADERS_TOO_LARGE_RESPONSE)
        super().on_header(name, value)

    def _count_head(self, size: int, refusal: bytes) -> None:
        self._head_bytes += size
        if self._head_bytes <= MAX_HEAD_BYTES:
            return
        self._reading = False
        self._cancel_header_timer()
        self._closed("head_too_large")
        if self.cycle is None or self.cycle.response_complete:  # nothing else is being answered
            self.transport.write(refusal)
            self._linger()
        # else: the requests before it are answered, then the connection is closed (on_response_complete)
        raise _StopParsing

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """What the parser cannot read gets the JSON error body every other answer has; uvicorn's
        own is plain text."""
        self.transport.write(MALFORMED_RESPONSE)
        self.transport.close()
        self._closed("malformed")

    def on_response_complete(self) -> None:
        cast(Corked, self.transport).flush()  # the response's head and body, in one system call
        super().on_response_complete()
        if not self._reading and self.cycle is not None and self.cycle.response_complete:  # the newest is answered
            self._linger()

    def _linger(self) -> None:
        """The last answer is written: end the connection without resetting it, reading and dropping
        what the client still sends until it closes its side (at most `LINGER_S`)."""
        if self.transport.is_closing():
            return
        cast(Corked, self.transport).flush()
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        self.transport.write_eof()  # after what is buffered; the client's end of file closes the transport
        self.loop.call_later(LINGER_S, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_send_timer()
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
            self._closed("header_timeout")
        self.transport.close()

    def pause_writing(self) -> None:
        """The transport holds more than its high-water mark: the client is not reading."""
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        self._cancel_send_timer()
        super().resume_writing()

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if not self.transport.is_closing():
            self._closed("send_timeout")
        self.transport.abort()  # close() would wait for the unread answers to be written, forever

    def _closed(self, reason: str) -> None:
        if self.on_closed is not None:
            self.on_closed(reason)


def protocol_with(
    header_timeout: float, send_timeout: float, on_closed: Callable[[str], None] | None = None
) -> type[HeaderTimeoutProtocol]:
    """The protocol class uvicorn instantiates per connection, with these deadlines; ``on_closed``
    is told why each time the protocol closes a connection on its own: "malformed" (a 400),
    "header_timeout" (a 408), "head_too_large" (a 414 or 431), "pipeline_full", "send_timeout"."""
    attributes: dict[str, Any] = {"header_timeout": header_timeout, "send_timeout": send_timeout}
    if on_closed is not None:
        attributes["on_closed"] = staticmethod(on_closed)
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), attributes)
