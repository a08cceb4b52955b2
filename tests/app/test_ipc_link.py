"""`app.ipc.Link`, the framing between front ends and the inference process.

The multi-worker tests (`test_workers.py`) run it end to end; here the framing's edges: messages
cut anywhere, several in one read, headers larger than the staging buffer, payloads read in
place, and what one turn of the event loop sends leaving in one write (over real unix sockets)."""

from __future__ import annotations

import asyncio
import os
import platform
import random
import socket
import subprocess
import sys
from typing import Any

import numpy as np
import orjson
import pytest

from app import ipc
from app.host import allocator_env
from app.ipc import LENGTHS, Link
from tests.server import ROOT


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    data = orjson.dumps(header)
    return LENGTHS.pack(len(data), len(payload)) + data + payload


def receive(stream: bytes, cuts: list[int]) -> list[tuple[dict[str, Any], bytes | None]]:
    """What a Link delivers when ``stream`` arrives in pieces cut at ``cuts``: each piece read the
    way a transport reads, into the buffer the link offers, at most as much as it offers."""
    got: list[tuple[dict[str, Any], bytes | None]] = []
    link = Link(lambda _, header, payload: got.append((header, None if payload is None else bytes(payload))), print)
    pos = 0
    for end in [*cuts, len(stream)]:
        while pos < end:
            buffer = link.get_buffer(-1)
            n = min(len(buffer), end - pos)
            assert n > 0, "the link offered no room to read into"
            buffer[:n] = stream[pos : pos + n]
            link.buffer_updated(n)
            pos += n
    return got


@pytest.mark.parametrize("seed", range(5))
def test_messages_cut_anywhere_arrive_whole_and_in_order(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [0, 1, 100, ipc.LARGE_PAYLOAD_BYTES - 1, ipc.LARGE_PAYLOAD_BYTES, 300_000, 5]
    messages = [({"id": i, "op": "infer"}, rng.randbytes(size)) for i, size in enumerate(sizes * 3)]
    rng.shuffle(messages)
    stream = b"".join(frame(header, payload) for header, payload in messages)
    cuts = sorted(rng.sample(range(1, len(stream)), 200))
    got = receive(stream, cuts)
    assert [header for header, _ in got] == [header for header, _ in messages]
    assert [payload or b"" for _, payload in got] == [payload for _, payload in messages]
    assert all(payload is None for (_, payload), (_, sent) in zip(got, messages, strict=True) if not sent)


def test_one_byte_at_a_time() -> None:
    messages = [({"id": 1}, b"abc"), ({"id": 2}, b""), ({"id": 3}, bytes(range(256)) * 200)]
    stream = b"".join(frame(header, payload) for header, payload in messages)
    got = receive(stream, list(range(1, 200)) + list(range(len(stream) - 50, len(stream))))
    assert got == [({"id": 1}, b"abc"), ({"id": 2}, None), ({"id": 3}, bytes(range(256)) * 200)]


def test_a_header_larger_than_the_staging_buffer() -> None:
    """The host view grows with the loaded versions; the staging buffer grows with it."""
    big = {"op": "view", "infos": ["x" * 1000] * (2 * ipc.STAGING_BYTES // 1000)}
    stream = frame(big) + frame({"id": 2}, b"after")
    got = receive(stream, [7, ipc.STAGING_BYTES // 2, ipc.STAGING_BYTES + 3])
    assert got == [(big, None), ({"id": 2}, b"after")]


async def test_an_image_batch_arrives_as_a_writable_array_of_its_own() -> None:
    images = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    payloads: list[bytearray | None] = []
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    done = asyncio.Event()
    link = Link(lambda _, header, payload: payloads.append(payload), lambda _: done.set())
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: link, right)
    with left:
        left.setblocking(False)
        await loop.sock_sendall(left, frame({"shape": list(images.shape)}, images.tobytes()) * 2)
    await asyncio.wait_for(done.wait(), 10)
    first, second = payloads
    assert first is not None and second is not None and first is not second
    received = np.frombuffer(first, dtype=np.uint8).reshape(images.shape)
    np.testing.assert_array_equal(received, images)
    assert received.flags.writeable  # its own memory, not a view of a buffer the link reuses


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def writelines(self, data: Any) -> None:
        self.writes.append(b"".join(bytes(part) for part in data))

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_what_one_turn_sends_leaves_in_one_write_in_order() -> None:
    """A batch's answers to one front end: one system call, not one each."""
    link = Link(lambda *_: None, lambda _: None)
    transport = Recording()
    link.connection_made(transport)
    answers = [np.full((1, 10), i, dtype=np.float32) for i in range(5)]
    for i, answer in enumerate(answers):
        assert link.send({"id": i, "status": "ok"}, answer)
    link.send({"op": "view"})
    assert transport.writes == []  # not before the turn ends
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
    got = receive(transport.writes[0], [])
    assert [header for header, _ in got] == [{"id": i, "status": "ok"} for i in range(5)] + [{"op": "view"}]
    for (_, payload), answer in zip(got, answers, strict=False):
        assert payload is not None
        np.testing.assert_array_equal(np.frombuffer(payload, dtype=np.float32).reshape(1, 10), answer)


async def test_closing_writes_what_was_sent_first() -> None:
    link = Link(lambda *_: None, lambda _: None)
    transport = Recording()
    link.connection_made(transport)
    link.send({"id": 1, "status": "error", "code": 503})
    link.close()
    assert transport.closed
    assert receive(transport.writes[0], []) == [({"id": 1, "status": "error", "code": 503}, None)]
    assert not link.send({"id": 2})  # a closed link takes nothing more
    await asyncio.sleep(0)
    assert len(transport.writes) == 1


# Receives image batches of 1 to 4 requests of 8 rows through a Link, keeping the last 8 alive as the
# batcher's queue would, and prints the page faults per message over the second half (the first
# half grows the heap to its working size).
RECEIVER = """
import asyncio, collections, random, resource, socket, sys, threading
import numpy as np, orjson, uvloop
from app.host import allocator_env
from app.ipc import LENGTHS, Link
from tests.server import ROOT

MESSAGES, ROWS = int(sys.argv[1]), 8 * 64 * 64 * 3

def send(sock):
    payloads, sizes = [bytes(k * ROWS) for k in (1, 2, 3, 4)], random.Random(0)
    with sock:
        for i in range(MESSAGES):
            header, payload = orjson.dumps({"id": i}), sizes.choice(payloads)
            sock.sendall(LENGTHS.pack(len(header), len(payload)) + header + payload)

async def main():
    mine, theirs = socket.socketpair()
    kept, half, closed = collections.deque(maxlen=8), [], asyncio.Event()
    def on_message(link, header, payload):
        kept.append(np.frombuffer(payload, np.uint8))
        if header["id"] == MESSAGES // 2:
            half.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    loop = asyncio.get_running_loop()
    await loop.create_unix_connection(lambda: Link(on_message, lambda _: closed.set()), sock=mine)
    threading.Thread(target=send, args=(theirs,)).start()
    await closed.wait()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - half[0]) / (MESSAGES - MESSAGES // 2))

uvloop.run(main())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator settings are glibc's")
def test_image_batches_arriving_one_after_another_reuse_memory_instead_of_faulting_it_in() -> None:
    """With the allocator settings every process of a host starts with (`app.host.allocator_env`),
    receiving costs no page faults once the heap has grown. With glibc's defaults, freed buffers go
    back to the kernel: 1.4-2.9 faults a message here, about 7 a request of 8 images in a host
    under load."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    environ.update(allocator_env(environ))
    done = subprocess.run(
        [sys.executable, "-c", RECEIVER, "1000"], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    faults = float(done.stdout)
    assert faults < 0.5, f"{faults:.2f} page faults a message"
