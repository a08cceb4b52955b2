"""Path and query parameters shared by the routers, with the constraints the registry enforces,
so the OpenAPI document says what a valid request looks like."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from registry.schemas import MAX_VERSION

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]*$"

ModelName = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=200, description="a registered model's name", examples=["digits"])
]
AliasName = Annotated[str, Path(pattern=ALIAS_PATTERN, max_length=100, description="an alias", examples=["production"])]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION, description="a version number", examples=[1])]
# The v2 routes take the version as text (the protocol's model_version is a string); anything but
# a version number is an unknown version (404), on every route alike.
VersionText = Annotated[
    str, Path(max_length=100, description="a version number, as the protocol writes it", examples=["1"])
]
VersionQuery = Annotated[
    int | None,
    Query(ge=1, le=MAX_VERSION, description="serve this version (loaded on first use); not together with alias"),
]
AliasQuery = Annotated[
    str | None,
    Query(
        pattern=ALIAS_PATTERN,
        max_length=100,
        description="serve what this alias points to; not together with version",
    ),
]
