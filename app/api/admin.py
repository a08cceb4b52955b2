"""Admin API for ops: versions and history (open), alias moves and archiving (token required).

A promotion or rollback made here is recorded in the registry's history under the
token's name, and this server swaps at once instead of waiting for its next poll;
other replicas follow at theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from app.api.deps import RegistryDep, ServingDep
from app.api.params import ALIAS_PATTERN, AliasName, ModelName, VersionNumber
from app.auth import require_admin
from app.errors import ApiError
from app.schemas import ErrorBody
from app.serving import Serving
from registry import AliasMove, RegistryError, VersionInfo
from registry.schemas import MAX_VERSION


class AdminRoute(APIRoute):
    """Checks the bearer token of a write before anything else: FastAPI parses and validates a
    body before it runs dependencies, so a malformed body without a token would get 400, not 401."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if (self.methods or set()) <= {"GET", "HEAD"}:
            return handler

        async def authenticated(request: Request) -> Response:
            await require_admin(request)
            return await handler(request)

        return authenticated


log = logging.getLogger("app")

router = APIRouter(prefix="/v1/models/{name}", tags=["admin"], route_class=AdminRoute)

AdminDep = Annotated[str, Depends(require_admin)]
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed name, alias or body"},
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    403: {"model": ErrorBody, "description": "admin API disabled (no SERVE_ADMIN_TOKENS)"},
    404: {"model": ErrorBody, "description": "unknown model, version or alias"},
    409: {
        "model": ErrorBody,
        "description": "refused: the target cannot be served (missing, corrupt, unloadable, off-contract), "
        "archived version, alias already there, nothing to roll back",
    },
    503: {"model": ErrorBody, "description": "registry database unreachable"},
}


NO_CHECK = Field(
    False,
    description="move the alias without checking that the target can be served (emergencies only; recorded)",
)


class PromoteBody(BaseModel):
    version: int = Field(ge=1, le=MAX_VERSION)
    reason: str = Field("", max_length=2000)
    no_check: bool = NO_CHECK


class RollbackBody(BaseModel):
    alias: str = Field("production", pattern=ALIAS_PATTERN, max_length=100)
    reason: str = Field("", max_length=2000)
    no_check: bool = NO_CHECK


class ArchiveBody(BaseModel):
    reason: str = Field("", max_length=2000)


class MoveResult(BaseModel):
    move: AliasMove
    serving_version: int | None = Field(
        description="what this server now serves for the model (with `unconfirmed`: what it last said it serves)"
    )
    load_error: str | None = Field(None, description="set when the new target failed to load here")
    unconfirmed: str | None = Field(
        None,
        description="202: the move is recorded, but this server could not follow it now (why); it follows the "
        "registry once it can, as at a poll",
    )


MOVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    202: {"model": MoveResult, "description": "the move is recorded, but this server has not followed it yet"},
}


async def _after_move(serving: Serving, name: str, move: AliasMove, response: Response) -> MoveResult:
    """Follow a recorded move here now (other replicas follow at their next poll). Once the move
    is recorded, a failure to follow it must not read as a failed move: a client would retry or
    give up on a move that has happened."""
    try:
        view = await serving.moved(name)
        unconfirmed = None
    except Exception as exc:
        if not isinstance(exc, (ApiError, RegistryError)):
            log.exception("following the move of %s failed", name)
        response.status_code = 202
        why = getattr(exc, "message", None) or "this server failed to follow the move"
        unconfirmed = why.removesuffix(", retry")  # advice for a request that can be sent again; a move cannot
        view = serving.view()
    model = view.models.get(name)
    return MoveResult(
        move=move,
        serving_version=model.current if model else None,
        load_error=model.last_error if model else None,
        unconfirmed=unconfirmed,
    )


@router.get("/versions", response_model=list[VersionInfo], responses=AUTH_ERRORS, summary="All registered versions")
async def list_versions(name: ModelName, registry: RegistryDep) -> list[VersionInfo]:
    return await registry.list_versions(name)


# Extras are what the training job stored beside a version (plots, reports). Images are shown
# inline; anything else is a download, so a stored HTML or SVG file never runs in this origin.
INLINE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


@router.get(
    "/versions/{version}/extras/{extra}",
    response_class=Response,
    responses={**AUTH_ERRORS, 200: {"content": {"image/png": {}, "application/octet-stream": {}}}},
    summary="A file stored with a version (training plots)",
)
async def read_extra(
    name: ModelName,
    version: VersionNumber,
    extra: Annotated[str, Path(max_length=200)],
    registry: RegistryDep,
) -> Response:
    content = await registry.read_extra(name, version, extra)
    suffix = PurePosixPath(extra).suffix.lower()
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, max-age=3600",  # a version's extras never change
    }
    if suffix in INLINE_TYPES:
        return Response(content, media_type=INLINE_TYPES[suffix], headers=headers)
    headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(extra)}"
    return Response(content, media_type="application/octet-stream", headers=headers)


@router.get("/history", response_model=list[AliasMove], responses=AUTH_ERRORS, summary="Alias history, oldest first")
async def history(
    name: ModelName,
    registry: RegistryDep,
    alias: Annotated[str | None, Query(pattern=ALIAS_PATTERN, max_length=100)] = None,
) -> list[AliasMove]:
    return await registry.history(name, alias)


@router.put(
    "/aliases/{alias}", response_model=MoveResult, responses=MOVE_RESPONSES, summary="Point an alias at a version"
)
async def promote(
    name: ModelName,
    alias: AliasName,
    body: PromoteBody,
    registry: RegistryDep,
    serving: ServingDep,
    actor: AdminDep,
    response: Response,
) -> MoveResult:
    move = await registry.promote(
        name=name, version=body.version, alias=alias, actor=actor, reason=body.reason, check=not body.no_check
    )
    return await _after_move(serving, name, move, response)


@router.delete("/aliases/{alias}", response_model=MoveResult, responses=MOVE_RESPONSES, summary="Remove an alias")
async def remove_alias(
    name: ModelName,
    alias: AliasName,
    registry: RegistryDep,
    serving: ServingDep,
    actor: AdminDep,
    response: Response,
    reason: Annotated[str, Query(max_length=2000)] = "",
) -> MoveResult:
    move = await registry.remove_alias(name=name, alias=alias, actor=actor, reason=reason)
    return await _after_move(serving, name, move, response)


@router.post("/rollback", response_model=MoveResult, responses=MOVE_RESPONSES, summary="Move an alias back")
async def rollback(
    name: ModelName,
    body: RollbackBody,
    registry: RegistryDep,
    serving: ServingDep,
    actor: AdminDep,
    response: Response,
) -> MoveResult:
    move = await registry.rollback(
        name=name, alias=body.alias, actor=actor, reason=body.reason, check=not body.no_check
    )
    return await _after_move(serving, name, move, response)


@router.post(
    "/versions/{version}/archive", response_model=VersionInfo, responses=AUTH_ERRORS, summary="Archive a version"
)
async def archive(
    name: ModelName, version: VersionNumber, registry: RegistryDep, actor: AdminDep, body: ArchiveBody | None = None
) -> VersionInfo:
    reason = body.reason if body is not None else ""
    return await registry.archive(name=name, version=version, actor=actor, reason=reason)
