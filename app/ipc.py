"""Between the front-end processes and the host's inference process: ZeroMQ over `ipc://` sockets.

Each front end holds a DEALER socket connected to the inference process's ROUTER. A message is a
JSON header frame followed by raw frames: the images go as the bytes of their uint8 array, the
probabilities come back as float32 bytes, never pickled (docs/decisions/0006). Replies carry the
request's id, so each goes to its front end (the ROUTER's routing) and to its request (the id).

    infer    header {model, version, alias, assumed, sig, shape, inflight, deadline} + images
             -> ok {version, shape[, info]} + probabilities | redecode {info} | error {code, message}
    resolve  {model, version, alias} -> ok {info} | error      (which version a request would get)
    moved    {model} -> ok {view}                               (an admin call moved an alias)
    cancel   {id}                                               (the client hung up: drop its rows)
    beat     {slot, inflight, receiving}                        (a front end's load; also when it falls to 0)

The inference process publishes its `HostView` on a PUB socket a few times a second. A front end
that has not heard from it for `DEAD_AFTER_S`, or that the supervisor tells it died (SIGUSR1),
fails what it waits for with 503 and refuses new work with 503 until a view comes again.

A front end decodes for the version it believes serves the request (``assumed``); the inference
process runs the request on what it really serves then. When that version takes other input
(its `signature` differs), the answer is `redecode` with its info, and the front end decodes
again: a swap in between never runs images prepared for another contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from app.disconnect import CancelOnHangup
from app.errors import REGISTRY_STATUS, ApiError, UnavailableError
from app.limits import InflightCounter
from app.serving import HostView, LocalServing, ModelView, Prepare, ServedVersion, run_batched
from core.contract import ModelContract
from registry import VersionInfo
from registry.errors import RegistryError

log = logging.getLogger("app.ipc")

PUBLISH_EVERY_S = 0.2
BEAT_EVERY_S = 0.5
DEAD_AFTER_S = 3.0  # no view for this long: the inference process is taken as down
FRONTEND_GONE_AFTER_S = 2.0  # no beat for this long: a front end is taken as gone
MAX_REDECODES = 3


def infer_address(run_dir: Path) -> str:
    return f"ipc://{run_dir / 'inference.sock'}"


def view_address(run_dir: Path) -> str:
    return f"ipc://{run_dir / 'view.sock'}"


def signature(contract: ModelContract) -> str:
    """What an input prepared for ``contract`` depends on: two versions with the same signature
    take the same arrays."""
    return json.dumps(
        [
            contract.input.name,
            contract.input.height,
            contract.input.width,
            contract.preprocessing.model_dump(mode="json"),
        ]
    )


def _dump(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


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


def view_to_json(view: HostView, infos: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """``infos``: serialized infos by (model, version), reused across publications."""
    for key, info in view.infos.items():
        if key not in infos:
            infos[key] = info.model_dump(mode="json")
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
        "infos": [infos[key] for key in view.infos],
        "workers": view.workers,
        "cache_counts": view.cache_counts,
    }


def view_from_json(data: dict[str, Any], infos: dict[tuple[str, int], VersionInfo]) -> HostView:
    """``infos``: parsed infos by (model, version), reused: a version's info never changes."""
    known: dict[tuple[str, int], VersionInfo] = {}
    for raw in data["infos"]:
        key = (raw["model_name"], raw["version"])
        info = infos.get(key)
        if info is None or info.sha256 != raw["sha256"] or info.status != raw["status"]:
            info = infos[key] = VersionInfo.model_validate(raw)
        known[key] = info
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


class InferenceEndpoint:
    """Serves the front ends from the model manager of this process."""

    def __init__(
        self,
        serving: LocalServing,
        run_dir: Path,
        *,
        frontends: int,
    ) -> None:
        self._serving = serving
        self._manager = serving.manager
        self._run_dir = run_dir
        self._frontends = frontends
        self.boot = uuid.uuid4().hex
        self._context = zmq.asyncio.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a reply to a front end that has gone is dropped
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._tasks: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        self._loads: dict[bytes, tuple[int, int, int, float]] = {}  # identity -> slot, inflight, receiving, seen
        self._infos: dict[tuple[str, int], dict[str, Any]] = {}
        self._loops: list[asyncio.Task[None]] = []

    def bind(self) -> None:
        self._router.bind(infer_address(self._run_dir))
        self._pub.bind(view_address(self._run_dir))

    def inflight(self) -> int:
        """Inference requests admitted by every front end, as they last said."""
        return sum(load[1] for load in self._loads.values())

    def can_grow(self, queued_requests: int) -> bool:
        """Whether requests beyond the queued ones are in flight somewhere on the host (batcher hook)."""
        return self.inflight() > queued_requests

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._receive_loop(), name="ipc-receive"),
            asyncio.create_task(self._publish_loop(), name="ipc-publish"),
        ]

    async def close(self) -> None:
        for task in [*self._loops, *self._tasks.values()]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks.values(), return_exceptions=True)
        self._router.close(linger=0)
        self._pub.close(linger=0)
        self._context.term()

    def view(self) -> HostView:
        now = time.monotonic()
        alive = {ident: load for ident, load in self._loads.items() if now - load[3] < FRONTEND_GONE_AFTER_S}
        workers = {
            "frontends": self._frontends,
            "frontends_up": len({load[0] for load in alive.values()}),
            "inference": "up",
            "inflight": sum(load[1] for load in alive.values()),
            "receiving": sum(load[2] for load in alive.values()),
            "boot": self.boot,
        }
        return replace(self._manager.view(), workers=workers, cache_counts=self._serving.cache_counts())

    def _publish(self) -> None:
        data = _dump(view_to_json(self.view(), self._infos))
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart([b"view", data], flags=zmq.NOBLOCK)

    async def _publish_loop(self) -> None:
        while True:
            try:
                self._publish()
            except Exception:  # never let reporting stop the process from serving
                log.exception("could not publish the host view")
            now = time.monotonic()
            for ident in [i for i, load in self._loads.items() if now - load[3] > 10 * FRONTEND_GONE_AFTER_S]:
                del self._loads[ident]  # a front end that died: its load no longer counts
            await asyncio.sleep(PUBLISH_EVERY_S)

    async def _receive_loop(self) -> None:
        router = self._router
        while True:
            frames = await router.recv_multipart(copy=False)
            try:
                self._dispatch(frames)
            except Exception:
                log.exception("malformed message from a front end")

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        header = json.loads(frames[1].bytes)
        op = header["op"]
        if op == "infer":
            self._loads[identity] = (header.get("slot", -1), header["inflight"], 0, time.monotonic())
            key = (identity, header["id"])
            task = asyncio.create_task(self._infer(identity, header, frames[2]))
            self._tasks[key] = task
            task.add_done_callback(lambda _: self._tasks.pop(key, None))
        elif op == "cancel":
            running = self._tasks.get((identity, header["id"]))
            if running is not None:
                running.cancel()
        elif op == "beat":
            self._loads[identity] = (header["slot"], header["inflight"], header["receiving"], time.monotonic())
        elif op in ("resolve", "moved"):
            key = (identity, header["id"])
            task = asyncio.create_task(self._control(identity, header))
            self._tasks[key] = task
            task.add_done_callback(lambda _: self._tasks.pop(key, None))
        else:
            log.warning("unknown operation %r from a front end", op)

    async def _reply(self, identity: bytes, header: dict[str, Any], *frames: Any) -> None:
        await self._router.send_multipart([identity, _dump(header), *frames], copy=False)

    async def _infer(self, identity: bytes, header: dict[str, Any], frame: zmq.Frame) -> None:
        request = header["id"]
        if header["deadline"] < time.time():
            return  # its front end has given up on it
        try:
            async with self._manager.lease(header["model"], version=header["version"], alias=header["alias"]) as loaded:
                info: VersionInfo = loaded.info
                if loaded.version != header["assumed"] and signature(info.contract) != header["sig"]:
                    await self._reply(identity, {"id": request, "status": "redecode", "info": self._info(info)})
                    return
                images = np.frombuffer(frame.buffer, dtype=np.uint8).reshape(header["shape"])
                probabilities = await run_batched(loaded, images, self._serving.metrics, header["slot"])
            answer: dict[str, Any] = {"id": request, "status": "ok", "version": info.version}
            answer["shape"] = list(probabilities.shape)
            if info.version != header["assumed"]:
                answer["info"] = self._info(info)
            await self._reply(identity, answer, np.ascontiguousarray(probabilities, dtype=np.float32).data)
        except asyncio.CancelledError:
            return  # the client hung up (or this process stops): nobody waits for the answer
        except Exception as exc:
            if not isinstance(exc, (ApiError, RegistryError)):
                log.exception("inference request failed")
            await self._reply(identity, {"id": request, "status": "error", **error_fields(exc)})

    async def _control(self, identity: bytes, header: dict[str, Any]) -> None:
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
            await self._reply(identity, answer)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            if not isinstance(exc, (ApiError, RegistryError)):
                log.exception("%s request failed", header["op"])
            await self._reply(identity, {"id": request, "status": "error", **error_fields(exc)})

    def _info(self, info: VersionInfo) -> dict[str, Any]:
        key = (info.model_name, info.version)
        data = self._infos.get(key)
        if data is None:
            data = self._infos[key] = info.model_dump(mode="json")
        return data


# -- the front end's side ---------------------------------------------------------------------------


class RemoteServing:
    """`app.serving.Serving` for a front-end process: the work goes to the inference process."""

    def __init__(self, run_dir: Path, *, slot: int, counter: InflightCounter, timeout_s: float, alias: str) -> None:
        self._run_dir = run_dir
        self._slot = slot
        self._counter = counter
        self._timeout_s = timeout_s
        self._alias = alias
        self._context = zmq.asyncio.Context()
        self._dealer = self._context.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 0)
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"view")
        self._sub.setsockopt(zmq.CONFLATE, 0)
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], list[zmq.Frame]]]] = {}
        self._next_id = 0
        self._infos: dict[tuple[str, int], VersionInfo] = {}
        self._sigs: dict[tuple[str, int], str] = {}
        self._view: HostView | None = None
        self._boot: str | None = None
        self._heard = 0.0  # monotonic time of the last view
        self._down: str | None = "the inference process has not started yet"
        self._loops: list[asyncio.Task[None]] = []
        self._sent_idle = True

    async def start(self) -> None:
        self._dealer.connect(infer_address(self._run_dir))
        self._sub.connect(view_address(self._run_dir))
        self._loops = [
            asyncio.create_task(self._reply_loop(), name="ipc-replies"),
            asyncio.create_task(self._view_loop(), name="ipc-view"),
            asyncio.create_task(self._beat_loop(), name="ipc-beat"),
        ]

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._fail_pending("the server is shutting down")
        self._dealer.close(linger=0)
        self._sub.close(linger=0)
        self._context.term()

    # -- health ---------------------------------------------------------------------------------

    def inference_died(self) -> None:
        """The supervisor says the inference process died (SIGUSR1): fail what waits on it now."""
        self._mark_down("the inference process restarted, retry")

    def _mark_down(self, why: str) -> None:
        if self._down is None:
            log.warning("inference process down: %s", why)
        self._down = why
        self._fail_pending(why)

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(UnavailableError(why, headers={"Retry-After": "1"}))

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
        if self._down is not None:
            return replace(view, inference_error=self._down)
        return view

    async def _view_loop(self) -> None:
        while True:
            _, data = await self._sub.recv_multipart()
            try:
                view = view_from_json(json.loads(data), self._infos)
            except Exception:
                log.exception("malformed view from the inference process")
                continue
            boot = (view.workers or {}).get("boot")
            if self._boot is not None and boot != self._boot:
                self._fail_pending("the inference process restarted, retry")
            self._boot = boot
            self._heard = time.monotonic()
            self._view = view
            if self._down is not None:
                log.info("inference process up")
                self._down = None

    async def _beat_loop(self) -> None:
        parent = os.getppid()
        while True:
            await asyncio.sleep(BEAT_EVERY_S)
            if os.getppid() != parent:  # the supervisor is gone (SIGKILL): stop as if told to
                log.error("the supervisor is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                parent = os.getppid()
            self.beat()
            if self._down is None and time.monotonic() - self._heard > DEAD_AFTER_S:
                self._mark_down(f"the inference process has not answered for {DEAD_AFTER_S:g} s")

    def beat(self) -> None:
        """Tell the inference process this front end's load (it times batches by the host's)."""
        counter = self._counter
        self._send_nowait({"op": "beat", "slot": self._slot, "inflight": counter.value, "receiving": counter.receiving})

    def went_idle(self) -> None:
        """The admission counter fell to zero: say so now, so no batch waits for requests that are done."""
        self.beat()

    def _send_nowait(self, header: dict[str, Any], *frames: Any) -> None:
        with contextlib.suppress(zmq.Again):  # nobody to send to: the inference process is down
            self._dealer.send_multipart([_dump(header), *frames], flags=zmq.NOBLOCK, copy=False)

    # -- requests -------------------------------------------------------------------------------

    async def _reply_loop(self) -> None:
        while True:
            frames = await self._dealer.recv_multipart(copy=False)
            try:
                header = json.loads(frames[0].bytes)
            except ValueError:
                log.error("malformed reply from the inference process")
                continue
            future = self._pending.pop(header["id"], None)
            if future is not None and not future.done():
                future.set_result((header, frames[1:]))

    async def _request(
        self, header: dict[str, Any], *frames: Any, scope: MutableMapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], list[zmq.Frame]]:
        if self._down is not None:
            raise UnavailableError(self._down, headers={"Retry-After": "1"})
        self._next_id += 1
        request = header["id"] = self._next_id
        future: asyncio.Future[tuple[dict[str, Any], list[zmq.Frame]]] = asyncio.get_running_loop().create_future()
        self._pending[request] = future
        try:
            try:
                await self._dealer.send_multipart([_dump(header), *frames], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._mark_down("the inference process is not reachable")
                raise UnavailableError("the inference process is not reachable", headers={"Retry-After": "1"}) from None
            with CancelOnHangup(scope):
                async with asyncio.timeout(self._timeout_s):
                    return await future
        except TimeoutError:
            raise UnavailableError(
                f"the inference process did not answer within {self._timeout_s:g} s", headers={"Retry-After": "1"}
            ) from None
        except BaseException:
            if not future.done() or future.cancelled():  # the client hung up, or a time-out: drop its rows
                self._send_nowait({"op": "cancel", "id": request})
            raise
        finally:
            self._pending.pop(request, None)

    def _signature(self, info: VersionInfo) -> str:
        key = (info.model_name, info.version)
        sig = self._sigs.get(key)
        if sig is None:
            sig = self._sigs[key] = signature(info.contract)
        return sig

    def _info_from(self, header: dict[str, Any]) -> VersionInfo:
        raw = header["info"]
        key = (raw["model_name"], raw["version"])
        info = self._infos.get(key)
        if info is None or info.sha256 != raw["sha256"]:
            info = self._infos[key] = VersionInfo.model_validate(raw)
        return info

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
            images = await prepare(info)
            header = {
                "op": "infer",
                "slot": self._slot,
                "model": name,
                "version": version,
                "alias": alias,
                "assumed": info.version,
                "sig": self._signature(info),
                "shape": list(images.shape),
                "inflight": self._counter.value,
                "deadline": time.time() + self._timeout_s,
            }
            answer, frames = await self._request(header, np.ascontiguousarray(images).data, scope=scope)
            status = answer["status"]
            if status == "ok":
                if "info" in answer:
                    info = self._info_from(answer)
                probabilities = np.frombuffer(frames[0].buffer, dtype=np.float32).reshape(answer["shape"])
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
        return view
