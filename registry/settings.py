"""Where the registry lives, read from `REGISTRY_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    database_url: str = "sqlite:///./var/registry.db"
    artifacts_dir: Path = Path("./var/artifacts")


@lru_cache
def get_settings() -> RegistrySettings:
    return RegistrySettings()
