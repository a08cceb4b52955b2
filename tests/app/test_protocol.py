"""`app.protocol.Corked`: what one turn of the event loop writes on a connection leaves in one
system call (uvicorn writes a response's head and its body separately)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from app.protocol import Corked


class Recording:
    """A transport that records each call that would be a system call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []
        self.closing = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", [data]))

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(("writelines", list(data)))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close", []))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", []))
        self.closing = True

    def pause_reading(self) -> None:
        self.paused = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name == "sockname" else default


def corked() -> tuple[Corked, Recording]:
    transport = Recording()
    return Corked(cast(asyncio.Transport, transport), asyncio.get_running_loop()), transport


async def test_a_response_head_and_body_leave_in_one_call_when_the_turn_ends() -> None:
    connection, transport = corked()
    connection.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    connection.write(b"{}")
    assert transport.calls == []  # held for the rest of the turn
    await asyncio.sleep(0)
    assert transport.calls == [("writelines", [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"{}"])]
    connection.write(b"next")  # a later turn: on its own
    await asyncio.sleep(0)
    assert transport.calls[1:] == [("write", [b"next"])]


async def test_closing_writes_what_is_held_first_and_a_closed_connection_takes_nothing() -> None:
    connection, transport = corked()
    connection.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    connection.close()
    assert transport.calls == [("write", [b"HTTP/1.1 408 Request Timeout\r\n\r\n"]), ("close", [])]
    connection.write(b"too late")
    await asyncio.sleep(0)
    assert transport.calls[2:] == []


async def test_everything_else_goes_to_the_transport() -> None:
    connection, transport = corked()
    connection.pause_reading()
    assert transport.paused and connection.get_extra_info("sockname") == ("127.0.0.1", 8000)
    assert not connection.is_closing()


async def test_the_server_writes_a_response_in_one_call_before_the_work_after_it() -> None:
    """Through uvicorn's own protocol: head and body leave together once the body is sent, not
    at the end of the turn, after whatever the app (metrics middleware, say) does next."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from app.protocol import protocol_with

    transport = Recording()
    seen_after_send: list[list[tuple[str, list[bytes]]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})
        seen_after_send.append(list(transport.calls))  # the work after the response

    config = Config(app=app, lifespan="off", log_level="warning")
    protocol = protocol_with(10.0, 30.0)(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(cast(asyncio.Transport, transport))
    protocol.data_received(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
    for _ in range(5):
        await asyncio.sleep(0)
    [calls] = seen_after_send
    [(call, parts)] = calls
    assert call == "writelines" and parts[0].startswith(b"HTTP/1.1 200 OK\r\n") and parts[1] == b"{}"
    assert transport.calls == calls  # nothing more was written


async def test_connections_the_protocol_closes_are_reported_with_why() -> None:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from app.protocol import protocol_with

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the app never sees these requests")

    closed: list[str] = []
    config = Config(app=app, lifespan="off", log_level="warning")
    protocol_class = protocol_with(0.05, 0.05, closed.append)
    garbage = protocol_class(config=config, server_state=ServerState(), app_state={})
    garbage.connection_made(cast(asyncio.Transport, Recording()))
    garbage.data_received(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    silent = protocol_class(config=config, server_state=ServerState(), app_state={})
    silent.connection_made(cast(asyncio.Transport, Recording()))
    await asyncio.sleep(0.2)  # past the header deadline
    assert closed == ["malformed", "header_timeout"]


def test_the_unparseable_request_warning_is_let_through_once_a_minute_with_a_count() -> None:
    from app.protocol import ParserWarnings

    now = [0.0]
    warned = ParserWarnings(interval=60.0, clock=lambda: now[0]).next

    assert warned() == "Invalid HTTP request received."
    assert [warned() for _ in range(99)] == [None] * 99
    now[0] = 61.0
    said = warned()
    assert said is not None and "99 more" in said and "http_connections_closed_early_total" in said
    assert warned() is None
    now[0] = 200.0
    said = warned()
    assert said is not None and "1 more" in said
    now[0] = 300.0
    assert warned() == "Invalid HTTP request received."  # nothing was held back since the last one


async def test_a_connection_whose_client_reads_nothing_is_aborted_after_the_send_timeout() -> None:
    """Paused writing (the transport above its high-water mark) for the send timeout: the
    connection is dropped, with what it still held; resumed in time, nothing happens."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from app.protocol import protocol_with

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return

    closed: list[str] = []
    config = Config(app=app, lifespan="off", log_level="warning")
    protocol = protocol_with(10.0, 0.05, closed.append)(config=config, server_state=ServerState(), app_state={})
    transport = Recording()
    protocol.connection_made(cast(asyncio.Transport, transport))
    protocol.pause_writing()
    protocol.resume_writing()  # the client read: the timer stops
    await asyncio.sleep(0.1)
    assert transport.calls == [] and closed == []
    protocol.pause_writing()
    await asyncio.sleep(0.1)
    assert transport.calls == [("abort", [])] and closed == ["send_timeout"]
