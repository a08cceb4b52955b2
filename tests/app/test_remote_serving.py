"""A front end's side of the link (`app.ipc.RemoteServing`) against a stand-in inference process
on a real unix socket: how a turn's requests leave, and how their answers come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from app.errors import UnavailableError
from app.host import socket_path
from app.ipc import Link, RemoteServing
from app.limits import InflightCounter


class StandIn:
    """Records what a front end sends; answers an infer message when told, with one row of
    probabilities per image: [its first pixel, its image's request index, 0]."""

    def __init__(self) -> None:
        self.messages: list[tuple[dict[str, Any], bytearray | None]] = []
        self.link: Link | None = None
        self.arrived = asyncio.Event()

    def on_message(self, link: Link, header: dict[str, Any], payload: bytearray | None) -> None:
        self.link = link
        if header["op"] in ("infer", "cancel"):
            self.messages.append((header, payload))
            self.arrived.set()

    def answer(self, header: dict[str, Any], payload: bytearray | None) -> None:
        assert self.link is not None
        images = np.frombuffer(payload or b"", dtype=np.uint8).reshape(header["shape"])
        owner = np.repeat(np.arange(len(header["counts"])), header["counts"])
        rows = np.stack([images[:, 0, 0, 0], owner, np.zeros(len(images))], axis=1).astype(np.float32)
        ok = {"ids": header["ids"], "counts": header["counts"], "status": "ok", "version": 1, "shape": [len(rows), 3]}
        self.link.send(ok, rows)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def remote(tmp_path: Path) -> AsyncIterator[tuple[RemoteServing, StandIn]]:
    stand_in = StandIn()
    server = await asyncio.get_running_loop().create_unix_server(
        lambda: Link(stand_in.on_message, lambda _: None), socket_path(tmp_path)
    )
    serving = RemoteServing(
        tmp_path, slot=0, counter=InflightCounter(), timeout_s=5, alias="production", max_message_rows=4
    )
    _, link = await asyncio.get_running_loop().create_unix_connection(
        lambda: Link(serving._on_message, serving._on_lost), socket_path(tmp_path)
    )
    serving._link, serving._down = link, None  # connected (no view needed for what is tested here)
    serving._sigs[("colors", 1)] = "sig"
    yield serving, stand_in
    link.close()
    server.close()


INFO: Any = SimpleNamespace(model_name="colors", version=1)


def images(first: int, count: int = 1, size: int = 4) -> np.ndarray:
    out = np.zeros((count, size, size, 3), dtype=np.uint8)
    out[:, 0, 0, 0] = np.arange(first, first + count)
    return out


async def test_requests_of_one_turn_leave_in_one_message_per_version_and_size_and_get_their_own_rows(
    remote: tuple[RemoteServing, StandIn],
) -> None:
    serving, stand_in = remote
    calls = [
        serving._infer_once("colors", None, None, INFO, images(10), None),
        serving._infer_once("colors", None, None, INFO, images(20, count=2), None),
        serving._infer_once("colors", None, None, INFO, images(30, size=8), None),  # another size
        serving._infer_once("colors", 1, None, INFO, images(40), None),  # pinned: another version asked for
        serving._infer_once("colors", None, None, INFO, images(50), None),
    ]
    tasks = [asyncio.ensure_future(call) for call in calls]
    await stand_in.wait_for(3)
    headers = [header for header, _ in stand_in.messages]
    assert [(h["counts"], h["shape"][:2], h["version"]) for h in headers] == [
        ([1, 2, 1], [4, 4], None),
        ([1], [1, 8], None),
        ([1], [1, 4], 1),
    ]
    assert len({request for h in headers for request in h["ids"]}) == 5
    for message in stand_in.messages:
        stand_in.answer(*message)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    firsts = [probabilities[:, 0].tolist() for _, probabilities in results]
    assert firsts == [[10], [20, 21], [30], [40], [50]]
    assert [answer["status"] for answer, _ in results] == ["ok"] * 5


async def test_a_request_cancelled_after_leaving_says_so_and_the_rest_of_its_message_is_answered(
    remote: tuple[RemoteServing, StandIn],
) -> None:
    serving, stand_in = remote
    gone = asyncio.ensure_future(serving._infer_once("colors", None, None, INFO, images(1), None))
    stays = asyncio.ensure_future(serving._infer_once("colors", None, None, INFO, images(2), None))
    await stand_in.wait_for(1)
    (header, payload) = stand_in.messages[0]
    gone.cancel()  # its client hung up
    await stand_in.wait_for(2)
    assert stand_in.messages[1][0] == {"op": "cancel", "id": header["ids"][0]}
    stand_in.answer(header, payload)
    answer, probabilities = await asyncio.wait_for(stays, 5)
    assert answer["status"] == "ok" and probabilities[:, 0].tolist() == [2]
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert not serving._pending


async def test_an_error_answer_reaches_every_request_of_the_message(remote: tuple[RemoteServing, StandIn]) -> None:
    serving, stand_in = remote
    tasks = [asyncio.ensure_future(serving._infer_once("colors", None, None, INFO, images(i), None)) for i in range(3)]
    await stand_in.wait_for(1)
    header, _ = stand_in.messages[0]
    assert stand_in.link is not None
    stand_in.link.send({"ids": header["ids"], "counts": header["counts"], "status": "error", "code": 503})
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [(answer["status"], probabilities) for answer, probabilities in results] == [("error", None)] * 3


async def test_a_message_holds_no_more_rows_than_a_batch(remote: tuple[RemoteServing, StandIn]) -> None:
    """Here a batch holds 4 rows: a message never makes the batcher run a larger one, except a
    request that is larger alone."""
    serving, stand_in = remote
    sizes = [2, 2, 1, 6, 3]
    tasks = [
        asyncio.ensure_future(serving._infer_once("colors", None, None, INFO, images(10 * i, count=n), None))
        for i, n in enumerate(sizes)
    ]
    await stand_in.wait_for(4)
    assert [header["counts"] for header, _ in stand_in.messages] == [[2, 2], [1], [6], [3]]
    for message in stand_in.messages:
        stand_in.answer(*message)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [probabilities[:, 0].tolist() for _, probabilities in results] == [
        [10 * i + k for k in range(n)] for i, n in enumerate(sizes)
    ]


async def test_a_request_not_answered_in_time_gets_503_with_retry_after_and_its_rows_are_cancelled(
    remote: tuple[RemoteServing, StandIn],
) -> None:
    serving, stand_in = remote
    serving._timeout_s = 0.3  # SERVE_INFERENCE_TIMEOUT_S
    serving._heard = time.monotonic()  # the inference process is alive: it just never answers this request
    beats = asyncio.ensure_future(serving._beat_loop())  # which also fails what waited too long
    late = asyncio.ensure_future(serving._infer_once("colors", None, None, INFO, images(1), None))
    await stand_in.wait_for(1)  # it left, and the stand-in never answers it
    header, _ = stand_in.messages[0]
    with pytest.raises(UnavailableError) as caught:
        await asyncio.wait_for(late, 5)
    beats.cancel()
    assert caught.value.status_code == 503
    assert caught.value.headers == {"Retry-After": "1"}
    assert "did not answer within 0.3 s" in caught.value.message
    await stand_in.wait_for(2)  # so the inference process drops its rows instead of running them
    assert stand_in.messages[1][0] == {"op": "cancel", "id": header["ids"][0]}
    assert not serving._pending
