"""Plain objects that cross the registry's boundary: metadata going in, records coming out."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
# Version numbers are 32-bit signed integers in the database; nothing above this exists.
MAX_VERSION = 2**31 - 1

ResizeMethod = Literal["bilinear", "nearest", "bicubic", "lanczos", "area"]
OutputKind = Literal["softmax", "sigmoid"]
VersionStatus = Literal["ready", "archived"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    name: str = Field(min_length=1)
    shape: list[int | None] = Field(description="[batch, H, W, 3]; None (or -1) marks the dynamic batch")
    dtype: Literal["uint8"] = "uint8"

    @model_validator(mode="after")
    def _check_shape(self) -> InputSpec:
        if len(self.shape) != 4:
            raise ValueError(f"input shape must have 4 dimensions [batch, H, W, 3], got {self.shape}")
        if self.shape[0] not in (None, -1):
            raise ValueError("input batch dimension must be dynamic (null or -1)")
        h, w, c = self.shape[1:]
        if c != 3:
            raise ValueError(f"input must have 3 channels (RGB), got {c}")
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise ValueError(f"input height and width must be fixed positive sizes, got {h}x{w}")
        return self

    @property
    def height(self) -> int:
        return int(self.shape[1] or 0)

    @property
    def width(self) -> int:
        return int(self.shape[2] or 0)


class OutputSpec(_Frozen):
    name: str = Field(min_length=1)
    kind: OutputKind


class Preprocessing(_Frozen):
    size: tuple[int, int] = Field(description="(height, width) the image is resized to")
    resize_method: ResizeMethod = "bilinear"
    color_mode: Literal["rgb"] = "rgb"


class ModelContract(_Frozen):
    """What a server needs to use an ONNX file without guessing."""

    input: InputSpec
    output: OutputSpec
    labels: list[str]
    preprocessing: Preprocessing

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelContract:
        if len(self.labels) < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {len(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if any(not label for label in self.labels):
            raise ValueError("labels must not be empty strings")
        if self.output.kind == "sigmoid" and len(self.labels) != 2:
            raise ValueError(f"a sigmoid output scores exactly 2 labels, got {len(self.labels)}")
        if tuple(self.preprocessing.size) != (self.input.height, self.input.width):
            raise ValueError(
                f"preprocessing size {list(self.preprocessing.size)} does not match "
                f"the input's height and width {[self.input.height, self.input.width]}"
            )
        return self

    @property
    def num_outputs(self) -> int:
        """Width of the output tensor: 1 for a sigmoid head, K for softmax."""
        return 1 if self.output.kind == "sigmoid" else len(self.labels)


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
