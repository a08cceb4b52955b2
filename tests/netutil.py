"""A TCP forwarder on 127.0.0.1, to make a service appear (or vanish) on a port of the test's choosing."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def tcp_forwarder(port: int, target: tuple[str, int]) -> Iterator[None]:
    """Accept on 127.0.0.1:``port`` and relay every connection to ``target`` until the block ends."""
    listener = socket.create_server(("127.0.0.1", port))
    connections: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(target)
            connections.extend((client, upstream))
            threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone would leave blocked
        listener.close()
        for sock in connections:
            sock.close()
        acceptor.join(5)
