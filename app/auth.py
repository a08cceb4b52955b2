"""Bearer tokens for the admin API, from `SERVE_ADMIN_TOKENS=name:token[,name:token...]`."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import ForbiddenError, UnauthorizedError
from app.settings import Settings

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="imgserve admin"'}
# What example files put where a token goes: a server given one refuses to start.
PLACEHOLDERS = ("change-me", "changeme", "replace-with", "replace-me", "example-token")


def parse_tokens(raw: str | None) -> dict[str, str]:
    """name → token. Raises ValueError for a malformed entry, so a typo fails start-up."""
    tokens: dict[str, str] = {}
    if not raw:
        return tokens
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, token = entry.partition(":")
        if not sep or not name.strip() or not token.strip():
            raise ValueError("SERVE_ADMIN_TOKENS entries must look like name:token")
        if len(token.strip()) < 16:
            raise ValueError(f"SERVE_ADMIN_TOKENS: the token for {name.strip()!r} is shorter than 16 characters")
        if any(marker in token.lower() for marker in PLACEHOLDERS):
            raise ValueError(
                f"SERVE_ADMIN_TOKENS: the token for {name.strip()!r} is a placeholder from an example file: "
                "set a random one, e.g. from `openssl rand -hex 24`"
            )
        tokens[name.strip()] = token.strip()
    return tokens


def admin_tokens(settings: Settings) -> dict[str, str]:
    return parse_tokens(settings.admin_tokens.get_secret_value() if settings.admin_tokens else None)


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
