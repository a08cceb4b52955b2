"""`python -m bench.transport`: how images could cross from a front end to the inference process.

Round trips of a uint8 image batch to an echo process that answers with float32 probabilities,
one request at a time, for the transports considered (docs/decisions/0006):

- ZeroMQ `ipc://`, JSON header + raw array frames (what `app.ipc` does);
- ZeroMQ `ipc://`, the array pickled into one frame;
- a unix-domain stream socket between two uvloop event loops, length-prefixed JSON header and raw
  array bytes: the server's own transport (`app.ipc.Link`), asyncio client and server;
- a `multiprocessing` pipe, the array pickled (what `concurrent.futures.ProcessPoolExecutor` does).

Prints the median and p99 round trip in microseconds per payload size.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import zmq

PAYLOADS = {
    "1 x 64x64": (1, 64, 64, 3),
    "8 x 64x64": (8, 64, 64, 3),
    "32 x 224x224": (32, 224, 224, 3),
}
CLASSES = 10


def _zmq_echo(address: str, raw: bool) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.bind(address)
    while True:
        frames = sock.recv_multipart(copy=False)
        identity = frames[0].bytes
        if raw:
            header = json.loads(frames[1].bytes)
            if header.get("stop"):
                break
            images = np.frombuffer(frames[2].buffer, dtype=np.uint8).reshape(header["shape"])
            out = np.zeros((len(images), CLASSES), dtype=np.float32)
            sock.send_multipart([identity, json.dumps({"shape": list(out.shape)}).encode(), out.data], copy=False)
        else:
            images = pickle.loads(frames[1].bytes)  # noqa: S301 - the benchmark's own bytes
            if images is None:
                break
            out = np.zeros((len(images), CLASSES), dtype=np.float32)
            sock.send_multipart([identity, pickle.dumps(out, protocol=5)])
    sock.close(linger=0)
    context.term()


async def _link_echo_main(path: str) -> None:
    """An echo server on the server's own transport (`app.ipc.Link`)."""
    from app.ipc import Link

    done = asyncio.Event()

    def answer(link: Link, header: dict[str, Any], payload: bytearray | None) -> None:
        if header.get("stop"):
            done.set()
            return
        shape = header["shape"]
        assert isinstance(shape, list)
        images = np.frombuffer(payload or b"", dtype=np.uint8).reshape(shape)
        out = np.zeros((len(images), CLASSES), dtype=np.float32)
        link.send({"shape": list(out.shape)}, out)

    server = await asyncio.get_running_loop().create_unix_server(lambda: Link(answer, lambda link: None), path)
    async with server:
        await done.wait()


def _link_echo(path: str) -> None:
    import uvloop

    uvloop.run(_link_echo_main(path))


async def _link_client(path: str, rounds: int) -> dict[str, tuple[float, float]]:
    from app.ipc import Link

    answers: asyncio.Queue[tuple[dict[str, Any], bytearray | None]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for _ in range(100):
        try:
            _, link = await loop.create_unix_connection(
                lambda: Link(lambda link, header, payload: answers.put_nowait((header, payload)), lambda link: None),
                path,
            )
            break
        except OSError:
            await asyncio.sleep(0.05)
    results = {}
    for label, shape in PAYLOADS.items():
        images = np.zeros(shape, dtype=np.uint8)
        count = rounds if images.nbytes < 1_000_000 else rounds // 10
        samples = []
        for i in range(count + min(50, count)):
            start = time.perf_counter()
            link.send({"shape": list(images.shape)}, images)
            _, payload = await answers.get()
            np.frombuffer(payload or b"", dtype=np.float32)
            if i >= min(50, count):
                samples.append((time.perf_counter() - start) * 1e6)
        samples.sort()
        results[label] = (statistics.median(samples), samples[int(len(samples) * 0.99) - 1])
    link.send({"stop": True})
    return results


def _pipe_echo(conn: Connection) -> None:
    while (images := conn.recv()) is not None:
        conn.send(np.zeros((len(images), CLASSES), dtype=np.float32))


def _time(call: Callable[[], object], rounds: int) -> tuple[float, float]:
    for _ in range(min(50, rounds)):
        call()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def measure(rounds: int = 2000) -> dict[str, dict[str, tuple[float, float]]]:
    results: dict[str, dict[str, tuple[float, float]]] = {}
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as directory:
        for raw in (True, False):
            name = "zmq ipc, raw frames" if raw else "zmq ipc, pickled"
            address = f"ipc://{Path(directory) / name.replace(' ', '').replace(',', '')}"
            echo = context.Process(target=_zmq_echo, args=(address, raw))
            echo.start()
            zcontext = zmq.Context()
            sock = zcontext.socket(zmq.DEALER)
            sock.connect(address)
            results[name] = {}
            for label, shape in PAYLOADS.items():
                images = np.zeros(shape, dtype=np.uint8)
                count = rounds if images.nbytes < 1_000_000 else rounds // 10

                def zmq_raw(images: np.ndarray = images, sock: zmq.Socket[bytes] = sock) -> object:
                    sock.send_multipart([json.dumps({"shape": list(images.shape)}).encode(), images.data], copy=False)
                    _, data = sock.recv_multipart(copy=False)
                    return np.frombuffer(data.buffer, dtype=np.float32)

                def zmq_pickled(images: np.ndarray = images, sock: zmq.Socket[bytes] = sock) -> object:
                    sock.send_multipart([pickle.dumps(images, protocol=5)])
                    (data,) = sock.recv_multipart()
                    return pickle.loads(data)  # noqa: S301 - our own echo process's bytes

                results[name][label] = _time(zmq_raw if raw else zmq_pickled, count)
            sock.send_multipart([json.dumps({"stop": True}).encode()] if raw else [pickle.dumps(None)])
            echo.join(10)
            sock.close(linger=0)
            zcontext.term()
        path = str(Path(directory) / "link.sock")
        echo = context.Process(target=_link_echo, args=(path,))
        echo.start()
        import uvloop

        results["unix socket, raw frames (app.ipc, chosen)"] = uvloop.run(_link_client(path, rounds))
        echo.join(10)
    parent, child = context.Pipe()
    echo = context.Process(target=_pipe_echo, args=(child,))
    echo.start()
    results["multiprocessing pipe, pickled"] = {}
    for label, shape in PAYLOADS.items():
        images = np.zeros(shape, dtype=np.uint8)
        count = rounds if images.nbytes < 1_000_000 else rounds // 10

        def pipe(images: np.ndarray = images) -> object:
            parent.send(images)
            return parent.recv()

        results["multiprocessing pipe, pickled"][label] = _time(pipe, count)
    parent.send(None)
    echo.join(10)
    return results


def main() -> None:
    results = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
    labels = list(PAYLOADS)
    print("| transport | " + " | ".join(f"{label} p50 / p99 (µs)" for label in labels) + " |")
    print("| --- |" + " ---: |" * len(labels))
    for name, by_payload in results.items():
        cells = [f"{by_payload[label][0]:.0f} / {by_payload[label][1]:.0f}" for label in labels]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
