"""Errors the server answers with, and the one place that maps them to HTTP.

    ApiError                    base class: a status code and a message
    ├── BadRequestError         400  the request is malformed (bad image, bad tensor, bad field)
    ├── UnauthorizedError       401  missing or wrong admin token
    ├── ForbiddenError          403  admin API not enabled
    ├── NotFoundError           404  unknown model, version or alias
    ├── RequestTimeoutError     408  the request body arrived too slowly
    ├── ConflictError           409  the registry refuses the change
    ├── PayloadTooLargeError    413  too many bytes, pixels or images
    ├── UnsupportedMediaError   415  a body that is neither multipart nor an image
    └── UnavailableError        503  overloaded (with Retry-After) or not ready

Everything else (registry errors, image errors, validation errors) is translated in
`install_handlers`; an unexpected exception becomes a 500 without a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.imaging import ImageError, ImageTooLargeError
from registry import errors as registry_errors

log = logging.getLogger("app")


class ApiError(Exception):
    status_code = 500

    def __init__(self, message: str, *, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers


class BadRequestError(ApiError):
    status_code = 400


class UnauthorizedError(ApiError):
    status_code = 401


class ForbiddenError(ApiError):
    status_code = 403


class NotFoundError(ApiError):
    status_code = 404


class RequestTimeoutError(ApiError):
    status_code = 408


class ConflictError(ApiError):
    status_code = 409


class PayloadTooLargeError(ApiError):
    status_code = 413


class UnsupportedMediaError(ApiError):
    status_code = 415


class UnavailableError(ApiError):
    status_code = 503


REGISTRY_STATUS: dict[type[registry_errors.RegistryError], int] = {
    registry_errors.NotFoundError: 404,
    registry_errors.InvalidInputError: 400,
    registry_errors.ConflictError: 409,
    registry_errors.IntegrityError: 500,
    registry_errors.StorageError: 503,
    registry_errors.DatabaseError: 503,
}


def error_body(path: str, message: str, detail: Any = None) -> dict[str, Any]:
    """`{"error", "detail"}` under /v1; the Open Inference Protocol's `{"error"}` under /v2."""
    if path.startswith("/v2"):
        return {"error": message}
    return {"error": message, "detail": detail}


def error_response(
    request: Request, status: int, message: str, detail: Any = None, headers: Any = None
) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, message, detail), status_code=status, headers=headers)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route accepts on this path (routers included in the app match as a whole)."""
    allowed = []
    for method in HTTP_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return sorted(allowed)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status_code, exc.message, exc.detail, exc.headers)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
        status = 413 if isinstance(exc, ImageTooLargeError) else 400
        return error_response(request, status, str(exc))

    @app.exception_handler(registry_errors.RegistryError)
    async def _registry_error(request: Request, exc: registry_errors.RegistryError) -> JSONResponse:
        status = next((code for cls, code in REGISTRY_STATUS.items() if isinstance(exc, cls)), 500)
        if status >= 500:
            log.error("registry error on %s: %s", request.url.path, exc.message)
        return error_response(request, status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in exc.errors()]
        first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return error_response(request, 400, f"invalid request: {where}: {first['msg']}", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = exc.headers
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; several may (PUT and DELETE).
            allowed = _allowed_methods(request)
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            message = f"{request.method} is not allowed on {request.url.path}: use {' or '.join(allowed)}"
        return error_response(request, exc.status_code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal server error")
