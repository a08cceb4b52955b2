"""Plain objects that cross the registry's boundary: metadata going in, records coming out.

The model contract itself lives in `core.contract` (training and serving share it); it is
re-exported here, where the metadata holds it."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.contract import InputSpec, ModelContract, OutputKind, OutputSpec, Preprocessing, ResizeMethod

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
# Version numbers are 32-bit signed integers in the database; nothing above this exists.
MAX_VERSION = 2**31 - 1

VersionStatus = Literal["ready", "archived"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParityResult(_Frozen):
    passed: bool
    max_abs_diff: float
    top1_agreement: float
    samples: int
    batch_sizes: list[int] = []


class VersionMetadata(_Frozen):
    """Everything recorded with a version; the format of `registry register --meta`."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    contract: ModelContract
    metrics: dict[str, Any] = {}
    params: dict[str, Any] = {}
    dataset_fingerprint: str | None = None
    library_versions: dict[str, str] = {}
    parity: ParityResult | None = None
    description: str = ""


class ArtifactRef(_Frozen):
    name: str
    sha256: str
    size: int


class ModelInfo(_Frozen):
    name: str
    description: str
    created_at: datetime
    latest_version: int
    aliases: dict[str, int]


class VersionInfo(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model_name: str
    version: int
    status: VersionStatus
    sha256: str
    size: int
    format: str
    metadata: VersionMetadata
    extras: list[ArtifactRef]
    aliases: list[str]
    created_at: datetime
    created_by: str
    contract_change: str | None = Field(
        None, description="what changed from the version before, when registered with an explicit allowance"
    )

    @property
    def contract(self) -> ModelContract:
        return self.metadata.contract


class AliasMove(_Frozen):
    """One entry of a model's history: an alias move, or the archiving of a version
    (``alias`` None, ``from_version`` the archived version)."""

    model_name: str
    alias: str | None
    from_version: int | None
    to_version: int | None
    action: Literal["promote", "rollback", "remove", "archive"]
    actor: str
    reason: str
    created_at: datetime
    checked: bool | None = Field(
        None, description="promote and rollback: whether the target was checked first (false: --no-check)"
    )


__all__ = [
    "ALIAS_RE",
    "MAX_VERSION",
    "MODEL_NAME_RE",
    "AliasMove",
    "ArtifactRef",
    "InputSpec",
    "ModelContract",
    "ModelInfo",
    "OutputKind",
    "OutputSpec",
    "ParityResult",
    "Preprocessing",
    "ResizeMethod",
    "VersionInfo",
    "VersionMetadata",
]
