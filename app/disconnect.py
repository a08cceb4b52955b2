"""Stop waiting for a batch when the client has hung up, so its rows are dropped before inference.

The HTTP protocol (`app.protocol`) calls the hook a request has put in its ASGI scope when the
connection is lost before the answer went out. While a request waits for its batch, that hook
cancels the wait: the batcher skips rows whose caller is gone, and the inference process is
told to. Without the protocol (an in-process test client), nothing calls the hook and the
request simply runs to the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

from app.errors import ApiError

HOOK = "imgserve.hangup"
GONE = "imgserve.gone"  # set when the client hung up before the request started waiting


class ClientGoneError(ApiError):
    """The client closed the connection while its request waited; nobody reads the answer."""

    status_code = 499  # "client closed request", as nginx logs it


class CancelOnHangup:
    """``with CancelOnHangup(scope):`` around an await: a hang-up cancels it and raises `ClientGoneError`."""

    __slots__ = ("_gone", "_scope", "_task")

    def __init__(self, scope: MutableMapping[str, Any] | None) -> None:
        self._scope = scope
        self._task: asyncio.Task[Any] | None = None
        self._gone = False

    def _hangup(self) -> None:
        self._gone = True
        if self._task is not None:
            self._task.cancel()

    def __enter__(self) -> CancelOnHangup:
        if self._scope is not None:
            if self._scope.get(GONE):
                raise ClientGoneError("the client closed the connection before its answer")
            self._task = asyncio.current_task()
            self._scope[HOOK] = self._hangup
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._scope is not None:
            self._scope.pop(HOOK, None)
        if self._gone and kind is asyncio.CancelledError and self._task is not None:
            self._task.uncancel()
            raise ClientGoneError("the client closed the connection before its answer") from None


def hang_up(scope: MutableMapping[str, Any]) -> None:
    """Called by the protocol when a request's connection is lost before its answer: stops the
    wait now, or, when the request is not waiting yet, before it does."""
    hook = scope.get(HOOK)
    if hook is not None:
        hook()
    else:
        scope[GONE] = True
