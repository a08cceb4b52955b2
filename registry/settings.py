"""Where the registry lives, read from `REGISTRY_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    database_url: str = Field("sqlite:///./var/registry.db", description="SQLAlchemy URL of the registry database")
    database_password: SecretStr | None = Field(
        None,
        description="password for the database URL, given apart so it needs no URL-encoding (`p@ss/word` works "
        "as it is); it replaces any password in the URL",
    )
    # Read as text, not as a Path: a Path would fold s3://bucket into the relative directory "s3:/bucket".
    artifacts_dir: str = Field(
        "./var/artifacts",
        description="the artifact store's directory; a store URL such as s3://bucket/prefix works here too",
    )
    artifacts_url: str | None = Field(
        None,
        description="the artifact store as a URL, in place of artifacts_dir: a directory, or s3://bucket/prefix "
        "(any S3-compatible service, configured by AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY)",
    )

    @field_validator("artifacts_dir", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        """A Path given in code (``RegistrySettings(artifacts_dir=Path(...))``) is taken as its text."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value


@lru_cache
def get_settings() -> RegistrySettings:
    return RegistrySettings()
