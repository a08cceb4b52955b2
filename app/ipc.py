"""Between the front-end processes and the host's inference processes: unix stream sockets.

Each front end holds one connection to each inference process's socket in the supervisor's run
directory (one process per GPU; with several, `Devices` spreads the requests over them). A
message is a length-prefixed JSON header and at most one raw payload: the images go as the bytes
of their uint8 array, the probabilities come back as float32 bytes, never pickled
(docs/decisions/0006). Headers are JSON through orjson; what one turn of the event loop sends on
a connection leaves in one write. Replies carry the request's id, so each reaches its request; a
connection is one front end, so each reaches its process.

    infer    header {ids, counts, model, version, alias, assumed, sig, shape, inflight, deadline} + images
             -> {ids, counts} ok {version, shape[, info]} + probabilities | redecode {info} | error {code, message}
    resolve  {id, model, version, alias} -> ok {info} | error  (which version a request would get)
    moved    {id, model} -> ok {view}                           (an admin call moved an alias)
    cancel   {id}                                               (the client hung up: drop its rows)
    beat     {slot, inflight, receiving}                        (a front end's load, every 0.5 s)

An `infer` message carries every request a front end sent to the same model version, with images
of the same size, in one turn of its event loop: ``counts`` says how many of the rows each of the
``ids`` owns. The inference process queues them as one submission and answers them together, so
its per-request work is done once per message. A request that is cancelled has its rows taken
out while they are still queued (its count in the answer is then 0).

The inference process sends its `HostView` to every front end a few times a second (`view`). A
front end whose connection closes (the inference process died), or that has not heard from it
for `DEAD_AFTER_S` (it hangs), fails what it waits for with 503, refuses new work with 503, and
connects again until a view comes.

A front end decodes for the version it believes serves the request (``assumed``); the inference
process runs the request on what it really serves then. When that version takes other input
(its `signature` differs), the answer is `redecode` with its info, and the front end decodes
again: a swap in between never runs images prepared for another contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import struct
import time
from collections.abc import Callable, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson

from app.disconnect import CancelOnHangup
from app.errors import REGISTRY_STATUS, ApiError, UnavailableError
from app.host import socket_path
from app.limits import InflightCounter
from app.serving import HostView, LocalServing, ModelView, Prepare, ServedVersion, batch_error
from core.contract import ModelContract
from registry import VersionInfo
from registry.errors import RegistryError

if TYPE_CHECKING:
    from app.batcher import Batcher
    from app.versions import LoadedVersion

log = logging.getLogger("app.ipc")

PUBLISH_EVERY_S = 0.2
BEAT_EVERY_S = 0.5
DEAD_AFTER_S = 3.0  # no view for this long: the inference process is taken as down
STALLED_S = 1.0  # a front end's own loop late by this much: it was stopped or starved itself
ALIGN_EVERY_S = 0.5  # how often a leading front end compares its inference processes' aliases
MAX_REDECODES = 3


RECONNECT_EVERY_S = 0.1
STOP_CHECK_S = 0.25  # how often a front end waiting for its first answer checks whether it must stop
DRAIN_CHECK_S = 0.05  # how often an inference process told to stop looks whether its front ends are done
LENGTHS = struct.Struct("<IQ")  # a message: header bytes, payload bytes, then the two
STAGING_BYTES = 1 << 18  # read at once from the socket, for headers and small payloads
LARGE_PAYLOAD_BYTES = 1 << 15  # payloads from this size are read in place, not through the staging buffer


class Link(asyncio.BufferedProtocol):
    """One connection's messages: a JSON header and an optional raw payload, length-prefixed.

    The socket is read into a staging buffer, from which headers are parsed and small payloads
    copied out; a large payload (an image batch) is read by the kernel straight into an array of
    its own, so the inference process's event loop copies no image bytes.

    Messages sent are held until the event loop's current turn ends and then leave in one write:
    the answers to a whole batch cost one system call per front end, not one each."""

    def __init__(
        self,
        on_message: Callable[[Link, dict[str, Any], bytearray | None], None],
        on_lost: Callable[[Link], None],
    ) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._staging = bytearray(STAGING_BYTES)
        self._start = self._end = 0  # the bytes read and not parsed yet: self._staging[self._start:self._end]
        self._payload: bytearray | None = None  # a large payload being read in place, with its header
        self._filled = 0
        self._header: dict[str, Any] = {}
        self._out: list[bytes | memoryview] = []  # sent this turn of the event loop, not written yet
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)  # uvloop's is not an asyncio.Transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._payload is not None:
            return memoryview(self._payload)[self._filled :]
        return memoryview(self._staging)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._payload is None:
            self._end += nbytes
            self._parse()
            return
        self._filled += nbytes
        if self._filled == len(self._payload):
            payload, self._payload = self._payload, None
            self._deliver(self._header, payload)

    def _parse(self) -> None:
        staging = self._staging
        start, end = self._start, self._end
        needed = 0  # bytes the message at ``start`` needs in the staging buffer, when incomplete
        while end - start >= LENGTHS.size:
            header_size, payload_size = LENGTHS.unpack_from(staging, start)
            body = start + LENGTHS.size
            staged = header_size + (payload_size if payload_size < LARGE_PAYLOAD_BYTES else 0)
            if end - body < staged:
                needed = LENGTHS.size + staged
                break
            header = orjson.loads(memoryview(staging)[body : body + header_size])
            body += header_size
            if payload_size < LARGE_PAYLOAD_BYTES:
                start = body + payload_size
                self._deliver(header, staging[body:start] if payload_size else None)  # a copy: the buffer is reused
                continue
            have = min(end - body, payload_size)
            payload = bytearray(payload_size)
            payload[:have] = memoryview(staging)[body : body + have]
            start = body + have
            if have == payload_size:
                self._deliver(header, payload)
                continue
            self._payload, self._filled, self._header = payload, have, header  # the rest goes straight into it
            break
        # Keep what is left at the front, with room for the rest of its message.
        left = end - start
        if needed > len(staging):
            self._staging = bytearray(max(needed, 2 * len(staging)))
            self._staging[:left] = memoryview(staging)[start:end]
        elif start:
            staging[:left] = staging[start:end]
        self._start, self._end = 0, left

    def _deliver(self, header: dict[str, Any], payload: bytearray | None) -> None:
        try:
            self._on_message(self, header, payload)
        except Exception:
            log.exception("malformed message on the inference link")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(self)

    def send(self, header: dict[str, Any], payload: np.ndarray | list[np.ndarray] | None = None) -> bool:
        """Queue a message, written when this turn of the event loop ends; False when the connection
        is gone. ``payload``: a C-contiguous array, or several sent back to back as one payload; it
        must not change until then (callers send arrays they no longer touch)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        data = orjson.dumps(header)
        out = self._out
        if not out:
            asyncio.get_running_loop().call_soon(self.flush)
        if payload is None:
            out.append(LENGTHS.pack(len(data), 0) + data)
        elif isinstance(payload, np.ndarray):
            out += (LENGTHS.pack(len(data), payload.nbytes), data, payload.data.cast("B"))
        else:
            out += (LENGTHS.pack(len(data), sum(part.nbytes for part in payload)), data)
            out += [part.data.cast("B") for part in payload]
        return True

    def flush(self) -> None:
        """Write what was sent and not written yet."""
        out, self._out = self._out, []
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.writelines(out)

    def close(self) -> None:
        """Write what was sent, then close the connection."""
        self.flush()
        if self.transport is not None:
            self.transport.close()


def signature(contract: ModelContract) -> str:
    """What an input prepared for ``contract`` depends on, digested: two versions with the same
    signature take the same arrays."""
    described = json.dumps(
        [
            contract.input.name,
            contract.input.height,
            contract.input.width,
            contract.preprocessing.model_dump(mode="json"),
        ]
    )
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def error_fields(exc: BaseException) -> dict[str, Any]:
    """An exception as the status, message and headers the front end answers with."""
    if isinstance(exc, ApiError):
        return {"code": exc.status_code, "message": exc.message, "headers": exc.headers}
    if isinstance(exc, RegistryError):
        code = next((status for cls, status in REGISTRY_STATUS.items() if isinstance(exc, cls)), 500)
        return {"code": code, "message": exc.message, "headers": {"Retry-After": "1"} if code == 503 else None}
    return {"code": 500, "message": "internal server error", "headers": None}


class RemoteError(ApiError):
    """An error the inference process answered with, raised again in the front end."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None) -> None:
        super().__init__(message, headers=headers)
        self.status_code = code


# -- the view, as JSON -----------------------------------------------------------------------------


def dump_info(info: VersionInfo, dumped: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """``info`` as JSON data, serialized again only when it changed (archived) since ``dumped`` got it."""
    key = (info.model_name, info.version)
    data = dumped.get(key)
    if data is None or data["status"] != info.status or data["sha256"] != info.sha256:
        data = dumped[key] = info.model_dump(mode="json")
    return data


def parse_info(raw: dict[str, Any], parsed: dict[tuple[str, int], VersionInfo]) -> VersionInfo:
    """``raw`` as a VersionInfo, parsed again only when it differs from the one in ``parsed``."""
    key = (raw["model_name"], raw["version"])
    info = parsed.get(key)
    if info is None or info.sha256 != raw["sha256"] or info.status != raw["status"]:
        info = parsed[key] = VersionInfo.model_validate(raw)
    return info


def view_to_json(view: HostView, infos: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """``infos``: serialized infos by (model, version), reused across publications."""
    return {
        "alias": view.alias,
        "started": view.started,
        "synced": view.synced,
        "last_poll_error": view.last_poll_error,
        "models": [
            {
                "name": m.name,
                "current": m.current,
                "aliases": m.aliases,
                "last_error": m.last_error,
                "failed": [[version, when, why] for version, (when, why) in m.failed.items()],
            }
            for m in view.models.values()
        ],
        "loaded": [v.__dict__ for v in view.loaded],
        "infos": [dump_info(info, infos) for info in view.infos.values()],
        "workers": view.workers,
        "cache_counts": view.cache_counts,
    }


def view_from_json(data: dict[str, Any], infos: dict[tuple[str, int], VersionInfo]) -> HostView:
    """``infos``: parsed infos by (model, version), reused: a version's info never changes."""
    known = {(info.model_name, info.version): info for info in (parse_info(raw, infos) for raw in data["infos"])}
    return HostView(
        alias=data["alias"],
        started=data["started"],
        synced=data["synced"],
        last_poll_error=data["last_poll_error"],
        models={
            m["name"]: ModelView(
                name=m["name"],
                current=m["current"],
                aliases=m["aliases"],
                last_error=m["last_error"],
                failed={version: (when, why) for version, when, why in m["failed"]},
            )
            for m in data["models"]
        },
        loaded=[ServedVersion(**v) for v in data["loaded"]],
        infos=known,
        workers=data["workers"],
        cache_counts=data["cache_counts"],
    )


# -- the inference process's side ----------------------------------------------------------------


class _Group:
    """The requests of one `infer` message, and what they wait on (the task that finds their
    version, then their rows' future in ``batcher``). A request that is cancelled has its rows
    taken out while they are still queued (its count becomes 0); once every one has been, the
    work is cancelled."""

    __slots__ = ("batcher", "counts", "gone", "ids", "work")

    def __init__(self, ids: list[int], counts: list[int]) -> None:
        self.ids = ids
        self.counts = counts
        self.gone: set[int] = set()  # requests cancelled
        self.work: asyncio.Future[Any] | None = None
        self.batcher: Batcher | None = None  # once the rows are queued

    def cancel(self, request: int) -> None:
        self.gone.add(request)
        work = self.work
        if work is None or work.done():
            return
        if len(self.gone) >= len(self.ids):
            work.cancel()
            return
        if self.batcher is None:
            return  # its version is being found: its rows are left out when they are queued
        index = self.ids.index(request)
        start = sum(self.counts[:index])
        if self.batcher.drop_rows(work, start, start + self.counts[index]):
            self.counts[index] = 0

    def leave_out_gone(self, images: np.ndarray) -> np.ndarray:
        """``images`` without the rows of requests cancelled before they were queued."""
        keep = np.ones(len(images), dtype=bool)
        start = 0
        for index, (request, count) in enumerate(zip(self.ids, self.counts, strict=True)):
            if request in self.gone:
                keep[start : start + count] = False
                self.counts[index] = 0
            start += count
        return images[keep]


class InferenceEndpoint:
    """Serves the front ends from the model manager of this process."""

    def __init__(
        self, serving: LocalServing, run_dir: Path, *, frontends: int, device: int = 0, devices: int = 1
    ) -> None:
        self._serving = serving
        self._manager = serving.manager
        self._run_dir = run_dir
        self._device = device
        self._devices = devices
        self._frontends = frontends
        self._server: asyncio.AbstractServer | None = None
        self._links: set[Link] = set()
        self._tasks: dict[tuple[Link, int], asyncio.Task[None]] = {}  # control requests (resolve, moved)
        self._groups: dict[tuple[Link, int], _Group] = {}  # inference requests, by each of their ids
        self._loads: dict[Link, tuple[int, int, int]] = {}  # link -> slot, inflight, receiving
        self._stopping: set[Link] = set()  # front ends that said they are finishing their requests
        self._infos: dict[tuple[str, int], dict[str, Any]] = {}
        self._publisher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen, and send the view to the front ends from now on (also while the models load)."""
        path = socket_path(self._run_dir, self._device)
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: Link(self._dispatch, self._lost), path
        )
        self._publisher = asyncio.create_task(self._publish_loop(), name="ipc-publish")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        groups = {id(group): group.work for group in self._groups.values() if group.work is not None}
        tasks = [*self._tasks.values(), *groups.values(), *([self._publisher] if self._publisher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in list(self._links):
            link.close()

    async def until_front_ends_stop(self, *, grace_s: float, limit_s: float) -> None:
        """After this process was told to stop: serve on while front ends that are stopping too
        finish their requests. When a whole process group gets SIGTERM at once (systemd's default
        for a service), the front ends still have requests to send here. A front end says it is
        stopping in its next beat; if none has within ``grace_s``, this process stops alone (the
        supervisor starts a new one), and at most after ``limit_s``."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while self._links and (waited := loop.time() - started) < limit_s:
            if waited >= grace_s and not self._stopping:  # (a link leaves both sets when it is lost)
                return
            await asyncio.sleep(DRAIN_CHECK_S)

    def inflight(self) -> int:
        """Inference requests admitted by every front end, as they last said."""
        return sum(load[1] for load in self._loads.values())

    def can_grow(self, queued_requests: int) -> bool:
        """Whether requests beyond the queued ones are in flight somewhere on the host (batcher hook)."""
        return self.inflight() > queued_requests

    def view(self) -> HostView:
        loads = self._loads.values()
        view = self._manager.view()
        workers = {
            "frontends": self._frontends,
            "frontends_up": len({load[0] for load in loads}),
            "inference": "up",
            "inference_processes": self._devices,
            "inference_up": [self._device],
            "inference_ready": [self._device] if view.ready else [],
            "inflight": sum(load[1] for load in loads),
            "receiving": sum(load[2] for load in loads),
        }
        return replace(view, workers=workers, cache_counts=self._serving.cache_counts())

    def _publish(self) -> None:
        header = {"op": "view", "view": view_to_json(self.view(), self._infos)}
        for link in list(self._links):
            link.send(header)

    async def _publish_loop(self) -> None:
        while True:
            try:
                self._publish()
            except Exception:  # never let reporting stop the process from serving
                log.exception("could not send the host view")
            await asyncio.sleep(PUBLISH_EVERY_S)

    def _lost(self, link: Link) -> None:
        """A front end went away: its load no longer counts, and what it asked for is not wanted."""
        self._links.discard(link)
        self._loads.pop(link, None)
        self._stopping.discard(link)
        for (owner, _), task in list(self._tasks.items()):
            if owner is link:
                task.cancel()
        for (owner, _), group in list(self._groups.items()):
            if owner is link and group.work is not None:
                group.work.cancel()

    def _dispatch(self, link: Link, header: dict[str, Any], payload: bytearray | None) -> None:
        self._links.add(link)
        op = header["op"]
        if op == "infer":
            self._loads[link] = (header["slot"], header["inflight"], 0)
            group = _Group(header["ids"], header["counts"])
            loaded = self._manager.lease_now(header["model"], header["version"], header["alias"])
            if loaded is not None:
                self._infer_now(link, header, payload, loaded, group)
            else:
                self._watch(link, group, asyncio.create_task(self._infer(link, header, payload, group)))
        elif op == "cancel":
            key = (link, header["id"])
            cancelled = self._groups.get(key)
            if cancelled is not None:
                del self._groups[key]  # counted once
                cancelled.cancel(header["id"])
            elif (running := self._tasks.get(key)) is not None:
                running.cancel()
        elif op == "beat":
            self._loads[link] = (header["slot"], header["inflight"], header["receiving"])
            if header["stopping"]:
                self._stopping.add(link)
        elif op in ("resolve", "moved"):
            self._spawn(link, header["id"], self._control(link, header))
        else:
            log.warning("unknown operation %r from a front end", op)

    def _answered(self, link: Link, group: _Group) -> None:
        """The requests of ``group`` are done: count them out of the load ``link`` last reported, so
        a front end that goes quiet does not keep batches waiting for requests it no longer has."""
        groups = self._groups
        for request in group.ids:
            if groups.get((link, request)) is group:
                del groups[(link, request)]
        load = self._loads.get(link)
        if load is not None and load[1] > 0:
            self._loads[link] = (load[0], max(0, load[1] - len(group.ids)), load[2])

    def _watch(self, link: Link, group: _Group, work: asyncio.Future[Any]) -> None:
        """``group`` now waits on ``work`` (its task, then its rows' future): once each of its
        requests has been cancelled, so is the work."""
        if group.work is None:
            for request in group.ids:
                self._groups[(link, request)] = group
        group.work = work

    def _spawn(self, link: Link, request: int, work: Any) -> None:
        key = (link, request)
        task = asyncio.create_task(work)
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key) if self._tasks.get(key) is task else None)

    def _infer_now(
        self, link: Link, header: dict[str, Any], payload: bytearray | None, loaded: LoadedVersion, group: _Group
    ) -> None:
        """Run a message's requests on ``loaded`` (acquired; released here): their rows go to the
        batcher as one submission and the answer leaves from the batch's callback, with no task. The
        requests to the served version come here straight from the socket; this event loop serves
        every front end, so what it does per message is what caps the host (docs/workers.md)."""
        if header["deadline"] < time.time():
            self._done(link, loaded, group)  # its front end has given up on them
            return
        info = loaded.info
        if loaded.version != header["assumed"] and signature(info.contract) != header["sig"]:
            link.send({"ids": group.ids, "counts": group.counts, "status": "redecode", "info": self._info(info)})
            self._done(link, loaded, group)
            return
        try:  # whatever fails here, the lease is released: a version with a lease left can never retire
            images = np.frombuffer(payload or b"", dtype=np.uint8).reshape(header["shape"])
            if sum(group.counts) != len(images):
                raise ValueError(f"{len(images)} rows for requests of {sum(group.counts)}")
            if group.gone:  # cancelled while their version was found
                if len(group.gone) >= len(group.ids):
                    self._done(link, loaded, group)
                    return
                images = group.leave_out_gone(images)
            future = loaded.batcher.enqueue(images, header["slot"], len(group.ids) - len(group.gone))
        except Exception as exc:
            self._done(link, loaded, group)
            self._send_error(link, group, batch_error(exc, loaded, self._serving.metrics))
            return
        self._watch(link, group, future)
        group.batcher = loaded.batcher
        future.add_done_callback(lambda future: self._answer_now(link, header, loaded, group, future))

    def _answer_now(
        self,
        link: Link,
        header: dict[str, Any],
        loaded: LoadedVersion,
        group: _Group,
        future: asyncio.Future[np.ndarray],
    ) -> None:
        self._done(link, loaded, group)
        if future.cancelled():
            return  # the clients hung up (or this process stops): nobody waits for the answer
        exc = future.exception()
        if exc is not None:
            self._send_error(link, group, batch_error(exc, loaded, self._serving.metrics))
            return
        probabilities = loaded.probabilities(future.result())
        answer: dict[str, Any] = {"ids": group.ids, "counts": group.counts, "status": "ok", "version": loaded.version}
        answer["shape"] = list(probabilities.shape)
        if loaded.version != header["assumed"]:
            answer["info"] = self._info(loaded.info)
        link.send(answer, np.ascontiguousarray(probabilities, dtype=np.float32))

    def _done(self, link: Link, loaded: LoadedVersion, group: _Group) -> None:
        loaded.release()
        self._answered(link, group)

    def _send_error(self, link: Link, group: _Group, exc: BaseException) -> None:
        if not isinstance(exc, (ApiError, RegistryError)):
            log.error("inference request failed", exc_info=exc)
        link.send({"ids": group.ids, "counts": group.counts, "status": "error", **error_fields(exc)})

    async def _infer(self, link: Link, header: dict[str, Any], payload: bytearray | None, group: _Group) -> None:
        """Requests `lease_now` could not serve (a pinned version or another alias, or nothing loaded
        yet): the version is found (and loaded) first, then they go on as the others."""
        try:
            loaded = await self._manager.acquire(header["model"], version=header["version"], alias=header["alias"])
        except asyncio.CancelledError:
            self._answered(link, group)  # the clients hung up (or this process stops): nobody waits
            return
        except Exception as exc:
            self._answered(link, group)
            self._send_error(link, group, exc)
            return
        self._infer_now(link, header, payload, loaded, group)

    async def _control(self, link: Link, header: dict[str, Any]) -> None:
        request = header["id"]
        try:
            if header["op"] == "resolve":
                async with self._manager.lease(
                    header["model"], version=header["version"], alias=header["alias"]
                ) as loaded:
                    answer = {"id": request, "status": "ok", "info": self._info(loaded.info)}
            else:  # moved
                await self._serving.moved(header["model"])
                self._publish()  # the other front ends see it now, not at the next tick
                answer = {"id": request, "status": "ok", "view": view_to_json(self.view(), self._infos)}
            link.send(answer)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            if not isinstance(exc, (ApiError, RegistryError)):
                log.exception("%s request failed", header["op"])
            link.send({"id": request, "status": "error", **error_fields(exc)})

    def _info(self, info: VersionInfo) -> dict[str, Any]:
        return dump_info(info, self._infos)


# -- the front end's side ---------------------------------------------------------------------------


class _Forming:
    """Inference requests of this turn of the event loop for one version, with images of one size:
    they leave as one `infer` message when the turn ends."""

    __slots__ = ("alias", "ids", "info", "name", "parts", "rows", "version")

    def __init__(self, name: str, version: int | None, alias: str | None, info: VersionInfo) -> None:
        self.name = name
        self.version = version
        self.alias = alias
        self.info = info
        self.ids: list[int] = []
        self.parts: list[np.ndarray] = []
        self.rows = 0


class _TimedOut(Exception):
    """A request waited for the inference process past `SERVE_INFERENCE_TIMEOUT_S`."""


class RemoteServing:
    """`app.serving.Serving` for a front-end process: the work goes to the inference process."""

    def __init__(
        self,
        run_dir: Path,
        *,
        slot: int,
        counter: InflightCounter,
        timeout_s: float,
        alias: str,
        max_message_rows: int = 32,
        device: int = 0,
        devices: int = 1,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        """``max_message_rows``: the rows one `infer` message may hold (the batch size, so a message
        never makes a batch larger than the batcher's limit; one request larger than that goes alone).
        ``device``: which of the host's ``devices`` inference processes this one reaches; each is told
        its share of the front end's load (`Devices` spreads the requests evenly). ``stopping``: the
        front end is finishing its requests before it exits; its beats say so."""
        self._run_dir = run_dir
        self._device = device
        self._devices = devices
        self._max_message_rows = max_message_rows
        self._slot = slot
        self._counter = counter
        self._timeout_s = timeout_s
        self._alias = alias
        self._stopping = stopping
        self._link: Link | None = None
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], Any]]] = {}  # by request id: answer, payload
        self._deadlines: dict[int, float] = {}  # by request id, in the order they were sent, which is theirs too
        self._forming: dict[tuple[Any, ...], _Forming] = {}  # inference requests of this turn, not sent yet
        self._formed: list[_Forming] = []  # of this turn too, and full
        self._next_id = 0
        self._infos: dict[tuple[str, int], VersionInfo] = {}
        self._sigs: dict[tuple[str, int], str] = {}
        self._view: HostView | None = None
        self._heard = 0.0  # monotonic time of the last view
        self._ready = False  # the last view's readiness
        self._down: str | None = "the inference process has not started yet"
        self._lost = asyncio.Event()
        self._heard_once = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._connect_loop(), name="ipc-connect"),
            asyncio.create_task(self._beat_loop(), name="ipc-beat"),
        ]

    async def wait_connected(self, timeout_s: float, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Wait until the inference process has been heard from (False after ``timeout_s``, or as
        soon as ``stopping()`` says so). A front end that takes connections before that would
        answer them 503."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._heard_once.is_set():
            left = deadline - loop.time()
            if left <= 0 or stopping():
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, STOP_CHECK_S)):
                    await self._heard_once.wait()
        return True

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._fail_pending("the server is shutting down")
        link, self._link = self._link, None  # closing it ourselves is no loss to report
        if link is not None:
            link.close()

    # -- the connection and health --------------------------------------------------------------

    async def _connect_loop(self) -> None:
        """Keep one connection to the inference process; after a loss, connect again."""
        loop = asyncio.get_running_loop()
        path = socket_path(self._run_dir, self._device)
        while True:
            try:
                _, link = await loop.create_unix_connection(lambda: Link(self._on_message, self._on_lost), path)
            except OSError:  # not listening (yet, or again)
                await asyncio.sleep(RECONNECT_EVERY_S)
                continue
            self._lost.clear()
            self._link = link
            self.beat()  # says who we are and what we carry, before any request
            await self._lost.wait()
            await asyncio.sleep(RECONNECT_EVERY_S)

    def _on_lost(self, link: Link) -> None:
        if link is self._link:
            self._link = None
            self._mark_down("the inference process restarted, retry")
            self._lost.set()

    def _mark_down(self, why: str) -> None:
        if self._down is None:
            log.warning(
                "inference process %d down: %s (%d requests waited on it)", self._device, why, len(self._pending)
            )
        self._down = why
        self._fail_pending(why)

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(UnavailableError(why, headers={"Retry-After": "1"}))

    def hung(self) -> str | None:
        return None  # the supervisor restarts a hung inference process; this front end answers

    def view(self) -> HostView:
        view = self._view
        if view is None:
            return HostView(
                alias=self._alias,
                started=False,
                synced=False,
                last_poll_error=None,
                models={},
                loaded=[],
                infos={},
                inference_error=self._down,
            )
        if self._down is not None:  # what it last said of itself no longer holds
            workers = view.workers and {**view.workers, "inference": "down", "inference_up": [], "inference_ready": []}
            return replace(view, inference_error=self._down, workers=workers)
        return view

    def _on_message(self, link: Link, header: dict[str, Any], payload: bytearray | None) -> None:
        if header.get("op") == "view":
            view = self._view = view_from_json(header["view"], self._infos)
            self._ready = view.ready
            self._heard = time.monotonic()
            self._heard_once.set()
            if self._down is not None:
                log.info("inference process %d up", self._device)
                self._down = None
            return
        pending = self._pending
        ids = header.get("ids")
        if ids is None:  # a control request's answer
            future = pending.pop(header["id"], None)
            if future is not None and not future.done():
                future.set_result((header, payload))
            return
        probabilities = None  # an infer message's answer, to each of its requests
        if header["status"] == "ok":
            probabilities = np.frombuffer(payload or b"", dtype=np.float32).reshape(header["shape"])
        offset = 0
        for request, count in zip(ids, header["counts"], strict=True):
            future = pending.pop(request, None)
            if future is not None and not future.done():
                future.set_result((header, None if probabilities is None else probabilities[offset : offset + count]))
            offset += count

    async def _beat_loop(self) -> None:
        parent = os.getppid()
        last = time.monotonic()
        while True:
            await asyncio.sleep(BEAT_EVERY_S)
            now = time.monotonic()
            if now - last > BEAT_EVERY_S + STALLED_S:  # this process stood still (Ctrl-Z), not only its peer:
                self._heard = now  # what it said meanwhile is still to be read
            last = now
            if os.getppid() != parent:  # the supervisor is gone (SIGKILL): stop as if told to
                log.error("the supervisor is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                parent = os.getppid()
            self.beat()
            self._expire(time.monotonic())
            if self._down is None and time.monotonic() - self._heard > DEAD_AFTER_S:
                self._mark_down(f"the inference process has not answered for {DEAD_AFTER_S:g} s")

    def _expire(self, now: float) -> None:
        """Fail what waited past its deadline. Once a beat, not a timer per request: a timer cost a
        front end about 4% of its time, and half a second more on a 30 s time-out is no loss."""
        deadlines = self._deadlines
        expired = []
        for request, deadline in deadlines.items():
            if deadline > now:
                break
            expired.append(request)
        for request in expired:
            del deadlines[request]
            future = self._pending.get(request)
            if future is not None and not future.done():
                future.set_exception(_TimedOut())

    @property
    def device(self) -> int:
        """Which of the host's inference processes this one reaches."""
        return self._device

    @property
    def down(self) -> str | None:
        """Why the inference process cannot be reached now; None while it can."""
        return self._down

    @property
    def ready(self) -> bool:
        """Up, and serving every served model (its last view said so)."""
        return self._down is None and self._ready

    @property
    def waiting(self) -> int:
        """This front end's requests waiting on the inference process."""
        return len(self._pending)

    def _share(self, count: int) -> int:
        devices = self._devices
        return count if devices == 1 else -(-count // devices)

    def beat(self) -> None:
        """Tell the inference process this front end's load (it times batches by the host's)."""
        counter = self._counter
        inflight, receiving = self._share(counter.value), self._share(counter.receiving)
        self._send(
            {
                "op": "beat",
                "slot": self._slot,
                "inflight": inflight,
                "receiving": receiving,
                "stopping": self._stopping(),
            }
        )

    def _send(self, header: dict[str, Any], payload: np.ndarray | list[np.ndarray] | None = None) -> bool:
        link = self._link
        return link is not None and link.send(header, payload)

    # -- requests -------------------------------------------------------------------------------

    def _new_request(self) -> int:
        """The next request's id; 503 while the inference process is down."""
        if self._down is not None:
            raise UnavailableError(self._down, headers={"Retry-After": "1"})
        self._next_id += 1
        return self._next_id

    async def _request(self, header: dict[str, Any]) -> tuple[dict[str, Any], bytearray | None]:
        """A control request (resolve, moved) and its answer."""
        request = header["id"] = self._new_request()
        if not self._send(header):
            raise UnavailableError("the inference process is not reachable", headers={"Retry-After": "1"})
        return await self._wait(request, None)

    async def _infer_once(
        self,
        name: str,
        version: int | None,
        alias: str | None,
        info: VersionInfo,
        images: np.ndarray,
        scope: MutableMapping[str, Any] | None,
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        """Run ``images`` (C-contiguous uint8) as prepared for ``info``: the answer, and the
        probabilities when it is ok. They leave with the turn's other requests for that version."""
        request = self._new_request()
        key = (name, version, alias, info.version, images.shape[1:])
        forming = self._forming.get(key)
        if forming is not None and forming.rows + len(images) > self._max_message_rows:
            self._formed.append(forming)  # full: the request starts another message
            forming = None
        if forming is None:
            if not self._forming and not self._formed:
                asyncio.get_running_loop().call_soon(self._send_forming)
            forming = self._forming[key] = _Forming(name, version, alias, info)
        forming.ids.append(request)
        forming.parts.append(images)
        forming.rows += len(images)
        return await self._wait(request, scope)

    def _send_forming(self) -> None:
        """Send this turn's inference requests, one message per version and image size. A request
        that stopped waiting meanwhile (its client hung up) is left out."""
        groups = [*self._formed, *self._forming.values()]
        self._forming, self._formed = {}, []
        pending = self._pending
        for group in groups:
            ids, parts = [], []
            for request, images in zip(group.ids, group.parts, strict=True):
                if request in pending:
                    ids.append(request)
                    parts.append(images)
            if not ids:
                continue
            counts = [len(images) for images in parts]
            header = {
                "op": "infer",
                "ids": ids,
                "counts": counts,
                "slot": self._slot,
                "model": group.name,
                "version": group.version,
                "alias": group.alias,
                "assumed": group.info.version,
                "sig": self._signature(group.info),
                "shape": [sum(counts), *parts[0].shape[1:]],
                "inflight": self._share(self._counter.value),
                "deadline": time.time() + self._timeout_s,
            }
            if not self._send(header, parts):
                unreachable = UnavailableError("the inference process is not reachable", headers={"Retry-After": "1"})
                for request in ids:
                    future = pending.pop(request, None)
                    if future is not None and not future.done():
                        future.set_exception(unreachable)

    async def _wait(self, request: int, scope: MutableMapping[str, Any] | None) -> tuple[dict[str, Any], Any]:
        """The answer to ``request``, sent (or leaving with this turn's message) and not answered
        yet: it can only arrive on a later turn, after it is registered here."""
        future: asyncio.Future[tuple[dict[str, Any], Any]] = asyncio.get_running_loop().create_future()
        self._pending[request] = future
        self._deadlines[request] = time.monotonic() + self._timeout_s
        try:
            with CancelOnHangup(scope):
                return await future
        except _TimedOut:  # (`_expire`)
            raise UnavailableError(
                f"the inference process did not answer within {self._timeout_s:g} s", headers={"Retry-After": "1"}
            ) from None
        finally:
            self._pending.pop(request, None)
            self._deadlines.pop(request, None)
            if not future.done() or future.cancelled() or isinstance(future.exception(), _TimedOut):
                self._send({"op": "cancel", "id": request})  # the client hung up, or a time-out: drop its rows

    def _signature(self, info: VersionInfo) -> str:
        key = (info.model_name, info.version)
        sig = self._sigs.get(key)
        if sig is None:
            sig = self._sigs[key] = signature(info.contract)
        return sig

    def _info_from(self, header: dict[str, Any]) -> VersionInfo:
        return parse_info(header["info"], self._infos)

    @staticmethod
    def _raise(header: dict[str, Any]) -> None:
        raise RemoteError(header["code"], header["message"], header.get("headers"))

    async def _guess(self, name: str, version: int | None, alias: str | None) -> VersionInfo:
        """The version a request will likely get, to prepare its input for."""
        view = self.view()
        if version is None and (alias is None or alias == self._alias):
            view.served(name)  # 404 / 503 as the served model's state says
            info = view.current_info(name)
            if info is not None:
                return info
        elif version is not None:
            info = view.loaded_info(name, version) or self._infos.get((name, version))
            if info is not None:
                return info
        header, _ = await self._request({"op": "resolve", "model": name, "version": version, "alias": alias})
        if header["status"] != "ok":
            self._raise(header)
        return self._info_from(header)

    async def infer(
        self,
        name: str,
        prepare: Prepare,
        *,
        version: int | None = None,
        alias: str | None = None,
        scope: MutableMapping[str, Any] | None = None,
    ) -> tuple[VersionInfo, np.ndarray]:
        info = await self._guess(name, version, alias)
        for _ in range(MAX_REDECODES):
            images = np.ascontiguousarray(await prepare(info), dtype=np.uint8)
            answer, probabilities = await self._infer_once(name, version, alias, info, images, scope)
            status = answer["status"]
            if status == "ok" and probabilities is not None:
                if "info" in answer:
                    info = self._info_from(answer)
                return info, probabilities
            if status == "redecode":
                info = self._info_from(answer)
                continue
            self._raise(answer)
        raise UnavailableError(f"{name} is changing versions, retry", headers={"Retry-After": "1"})

    async def moved(self, name: str) -> HostView:
        header, _ = await self._request({"op": "moved", "model": name})
        if header["status"] != "ok":
            self._raise(header)
        view = view_from_json(header["view"], self._infos)
        self._view = view
        self._ready = view.ready
        return view


class Devices:
    """`app.serving.Serving` for a front end of a host with several inference processes (one per
    GPU, `SERVE_INFERENCE_PROCESSES`), each reached by a `RemoteServing`.

    A request goes to the process that is up with the fewest of this front end's requests waiting
    on it; when that process is lost while the request waits, the request is run again on another
    one that is up (inference has no side effects), so a crash costs its clients time, not a 503.
    An admin move is followed by every process before it answers. The view is that of a process
    that is ready (else of one that is up), with the loaded versions' queues and the load added
    up over all of them (`merge_views`).

    A move made elsewhere (the ops CLI) is seen by each process at its own poll, or when it
    starts again after a crash. With ``lead`` (one front end of the host), the processes' alias
    maps are compared every `ALIGN_EVERY_S`; when the ones that are up disagree about a model,
    each is told to read the registry again, as after an admin move (`_align`). The host then
    answers from two versions for about one load, not for up to a poll interval, or for good
    when a restarted process read a move the others had not polled yet."""

    def __init__(self, parts: list[RemoteServing], *, lead: bool = False) -> None:
        self._parts = parts
        self._lead = lead
        self._merged: tuple[list[tuple[HostView | None, str | None]], HostView] | None = None
        self._moving = 0  # admin moves in progress: the processes disagree on purpose meanwhile
        self._told: dict[str, frozenset[tuple[tuple[str, int], ...]]] = {}  # model -> the disagreement acted on
        self._aligning: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for part in self._parts:
            await part.start()
        if self._lead:
            self._aligning = asyncio.create_task(self._align_loop(), name="ipc-align")

    async def wait_connected(self, timeout_s: float, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Wait until every inference process has been heard from (the models load at the same
        time in each); False when none has after ``timeout_s`` or once ``stopping()``."""
        await asyncio.gather(*(part.wait_connected(timeout_s, stopping) for part in self._parts))
        return any(part.down is None for part in self._parts)

    async def close(self) -> None:
        if self._aligning is not None:
            self._aligning.cancel()
            await asyncio.gather(self._aligning, return_exceptions=True)
        await asyncio.gather(*(part.close() for part in self._parts))

    async def _align_loop(self) -> None:
        while True:
            await asyncio.sleep(ALIGN_EVERY_S)
            try:
                await self._align()
            except Exception:  # never let this stop the front end from serving
                log.exception("could not compare the inference processes' aliases")

    async def _align(self) -> None:
        """Tell every process that is up to read the registry again for each model whose alias map
        they disagree on, and wait until they have; once for each disagreement (a process that
        still disagrees afterwards, say because the registry failed it, catches up at its poll)."""
        if self._moving:
            return
        up = [part for part in self._parts if part.down is None]  # up: a view has come
        views = [view for part in up if (view := part._view) is not None and view.synced]
        tells = []
        for name in sorted({name for view in views for name in view.models}):
            maps = frozenset(tuple(sorted(view.models[name].aliases.items())) for view in views if name in view.models)
            if len(maps) < 2:
                self._told.pop(name, None)
                continue
            if self._told.get(name) == maps:
                continue
            self._told[name] = maps
            seen = " / ".join(", ".join(f"{alias}=v{version}" for alias, version in m) or "none" for m in sorted(maps))
            log.info(
                "inference processes disagree on the aliases of %s (%s): each reads the registry again", name, seen
            )
            tells += [self._tell(part, name) for part in up]
        await asyncio.gather(*tells)

    @staticmethod
    async def _tell(part: RemoteServing, name: str) -> None:
        try:
            await part.moved(name)
        except (ApiError, RegistryError) as exc:  # it goes on serving what it has and polls again
            log.warning("inference process %d could not follow %s: %s", part.device, name, exc)

    def _pick(self, besides: RemoteServing | None = None) -> RemoteServing | None:
        """The ready process with the fewest requests waiting; else one that is up (a restarted
        one still loading, which answers what it can or says why not); else None."""
        best: RemoteServing | None = None
        for part in self._parts:
            if part.ready and part is not besides and (best is None or part.waiting < best.waiting):
                best = part
        if best is None:
            for part in self._parts:
                if part.down is None and part is not besides:
                    return part
        return best

    async def infer(
        self,
        name: str,
        prepare: Prepare,
        *,
        version: int | None = None,
        alias: str | None = None,
        scope: MutableMapping[str, Any] | None = None,
    ) -> tuple[VersionInfo, np.ndarray]:
        part = self._pick() or self._parts[0]  # none up: the first says why (503)
        try:
            return await part.infer(name, prepare, version=version, alias=alias, scope=scope)
        except UnavailableError:
            other = self._pick(besides=part) if part.down is not None else None
            if other is None:  # a time-out, the model's own state, or no other process up
                raise
            return await other.infer(name, prepare, version=version, alias=alias, scope=scope)

    async def moved(self, name: str) -> HostView:
        """Every process that is up follows the move before the admin call answers; one that is
        down (or goes down meanwhile) loads what the registry says when it is back. When one could
        not load the new target, its view is the answer: the admin call then reports its error and
        the version it still serves, not the others' success."""
        up = [part for part in self._parts if part.down is None] or self._parts[:1]
        self._moving += 1
        try:
            results = await asyncio.gather(*(part.moved(name) for part in up), return_exceptions=True)
        finally:
            self._moving -= 1
        views = []
        for part, result in zip(up, results, strict=True):
            if isinstance(result, HostView):
                views.append(result)
            elif not (isinstance(result, UnavailableError) and part.down is not None):
                raise result
        if not views:  # every one went down meanwhile
            raise UnavailableError("no inference process is up, retry", headers={"Retry-After": "1"})
        for view in views:
            model = view.models.get(name)
            if model is not None and model.last_error is not None:
                return view
        return self.view()

    def hung(self) -> str | None:
        return None

    def view(self) -> HostView:
        states = [(part._view, part.down) for part in self._parts]
        merged = self._merged
        if merged is not None and all(
            old[0] is new[0] and old[1] == new[1] for old, new in zip(merged[0], states, strict=True)
        ):
            return merged[1]
        view = merge_views([part.view() for part in self._parts])
        self._merged = (states, view)
        return view


def merge_views(views: list[HostView]) -> HostView:
    """The host as its inference processes (``views``, one each) report it, for a front end's routes."""
    up = sorted((view for view in views if view.inference_error is None), key=lambda view: not view.ready)
    if not up:
        return views[0]
    base = up[0]  # a ready one when there is one: a process still loading does not make the host unready
    loaded: dict[tuple[str, int, str], ServedVersion] = {}
    for view in up:
        for served in view.loaded:
            key = (served.name, served.version, served.role)
            seen = loaded.get(key)
            loaded[key] = served if seen is None else replace(seen, queued_rows=seen.queued_rows + served.queued_rows)
    infos: dict[tuple[str, int], VersionInfo] = {}
    for view in up:
        infos.update(view.infos)
    workers = [view.workers or {} for view in up]
    counts: dict[str, int] = {}
    for view in up:
        for outcome, count in (view.cache_counts or {}).items():
            counts[outcome] = counts.get(outcome, 0) + count
    return replace(
        base,
        loaded=list(loaded.values()),
        infos=infos,
        workers={
            "frontends": workers[0].get("frontends"),
            "frontends_up": max(w.get("frontends_up", 0) for w in workers),
            "inference": "up" if len(up) == len(views) else "degraded",
            "inference_processes": len(views),
            "inference_up": sorted(device for w in workers for device in w.get("inference_up", [])),
            "inference_ready": sorted(device for w in workers for device in w.get("inference_ready", [])),
            "inflight": sum(w.get("inflight", 0) for w in workers),
            "receiving": sum(w.get("receiving", 0) for w in workers),
        },
        cache_counts=counts if base.cache_counts is not None else None,
    )
