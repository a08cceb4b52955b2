"""The model registry: versioned ONNX models, aliases and their history, in SQL.

The names below are imported on first use, so `import registry.errors` (and the CLI's
`--help`) does not pay for SQLAlchemy and pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from registry.errors import (
    ArtifactCheckError,
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    SchemaOutOfDateError,
    StorageError,
)

if TYPE_CHECKING:
    from registry.schemas import (
        AliasMove,
        ArtifactRef,
        InputSpec,
        ModelContract,
        ModelInfo,
        OutputSpec,
        ParityResult,
        Preprocessing,
        VersionInfo,
        VersionMetadata,
    )
    from registry.service import Reference, Registry
    from registry.settings import RegistrySettings

_LAZY = {
    **dict.fromkeys(
        [
            "AliasMove",
            "ArtifactRef",
            "InputSpec",
            "ModelContract",
            "ModelInfo",
            "OutputSpec",
            "ParityResult",
            "Preprocessing",
            "VersionInfo",
            "VersionMetadata",
        ],
        "registry.schemas",
    ),
    "Reference": "registry.service",
    "Registry": "registry.service",
    "RegistrySettings": "registry.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AliasMove",
    "ArtifactCheckError",
    "ArtifactRef",
    "ConflictError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "InputSpec",
    "IntegrityError",
    "InvalidInputError",
    "ModelContract",
    "ModelInfo",
    "NotFoundError",
    "OutputSpec",
    "ParityResult",
    "Preprocessing",
    "Reference",
    "Registry",
    "RegistryError",
    "RegistrySettings",
    "SchemaOutOfDateError",
    "StorageError",
    "VersionInfo",
    "VersionMetadata",
]
