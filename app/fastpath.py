"""A short way in for the inference routes: their own endpoint functions, minus FastAPI's per-request machinery.

Under load, FastAPI's routing, parameter handling and exception layers cost the event loop more
than this CNN's whole inference (docs/decisions/0002). The inference endpoints take no dependencies,
and without a query string they have no parameters to validate, so such a request can call the
endpoint directly. Everything else, a query string included, takes the normal way, so validation,
error shapes and the OpenAPI document stay FastAPI's. Errors raised here go through the app's
own exception handlers, so a client sees the same answer either way.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Request, Exception], Awaitable[Response]]


def eligible_routes(routers: list[APIRouter], paths: set[str]) -> list[APIRoute]:
    """The routes among ``paths`` (of routers included without a prefix) that are safe to call
    directly: POST, no dependencies, and every parameter but the request a path parameter or optional."""
    routes = []
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or route.path not in paths or "POST" not in (route.methods or ()):
            continue
        dependant = route.dependant
        path_params = {p.name for p in dependant.path_params}
        signature = inspect.signature(route.endpoint)
        required = {
            name
            for name, p in signature.parameters.items()
            if p.default is inspect.Parameter.empty and p.annotation not in ("Request", Request)
        }
        if dependant.dependencies or not required <= path_params:
            raise ValueError(f"{route.path} cannot take the fast path: it has dependencies or required parameters")
        routes.append(route)
    if {r.path for r in routes} != paths:
        raise ValueError(f"fast path: no POST route for {sorted(paths - {r.path for r in routes})}")
    return routes


class FastPathMiddleware:
    """Calls the endpoints of ``routes`` directly for POST requests without a query string."""

    def __init__(self, app: ASGIApp, routes: list[APIRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope["query_string"]:
            path = scope["path"]
            for route in self.routes:
                match = route.path_regex.match(path)
                if match is not None:
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: APIRoute, params: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = route  # for the metrics' route label, as the router would set it
        scope["path_params"] = params
        request = Request(scope, receive, send)
        try:
            response: Response = await route.endpoint(request=request, **params)
        except Exception as exc:
            handler = _handler_for(scope["app"].exception_handlers, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _handler_for(handlers: dict[Any, Handler], exc: Exception) -> Handler | None:
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
