"""Bearer tokens for the admin API, from `SERVE_ADMIN_TOKENS=name:token[,name:token...]`
(parsed and checked by `app.settings.admin_tokens`)."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import ForbiddenError, UnauthorizedError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="imgserve admin"'}


async def require_admin(request: Request) -> str:
    """The caller's name, recorded as the actor; 403 when the admin API is off, 401 on a bad token."""
    tokens: dict[str, str] = request.app.state.admin_tokens
    if not tokens:
        raise ForbiddenError(
            "the admin API is disabled: set SERVE_ADMIN_TOKENS=name:token[,name:token...] to enable it"
        )
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UnauthorizedError("missing bearer token: send Authorization: Bearer <token>", headers=CHALLENGE)
    actor = None
    for name, token in tokens.items():  # compare with every token, in constant time each
        if hmac.compare_digest(given.strip().encode(), token.encode()):
            actor = name
    if actor is None:
        raise UnauthorizedError("invalid bearer token", headers=CHALLENGE)
    return actor
