"""The model registry: versioned ONNX models, aliases and their history, in SQL."""

from registry.errors import (
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    SchemaOutOfDateError,
)
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

__all__ = [
    "AliasMove",
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
    "VersionInfo",
    "VersionMetadata",
]
