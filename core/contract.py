"""The model contract: what a server needs to use an exported model without guessing, and what
a client of it would notice changing.

Training writes it into a version's metadata, the registry stores and compares it, the server
reads its input, output, labels and preprocessing from it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

ResizeMethod = Literal["bilinear", "nearest", "bicubic", "lanczos", "area"]
OutputKind = Literal["softmax", "sigmoid"]


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


def contract_changes(old: ModelContract, new: ModelContract) -> list[str]:
    """What a client of the model would notice: labels, output kind, input size. Empty: none."""
    changes = []
    if old.labels != new.labels:
        changes.append(f"labels {_labels(old.labels)} -> {_labels(new.labels)}")
    if old.output.kind != new.output.kind:
        changes.append(f"output {old.output.kind} -> {new.output.kind}")
    if (old.input.height, old.input.width) != (new.input.height, new.input.width):
        changes.append(f"input size {old.input.height}x{old.input.width} -> {new.input.height}x{new.input.width}")
    return changes


def to_probabilities(raw: np.ndarray, kind: str) -> np.ndarray:
    """[N, K] probabilities; a sigmoid head's [N, 1] score of label 1 becomes [1 - s, s]."""
    if kind == "sigmoid":
        score = raw[:, :1]
        return np.concatenate([1.0 - score, score], axis=1)
    return raw


def _labels(labels: list[str], shown: int = 6) -> str:
    text = ", ".join(labels[:shown])
    more = f", … ({len(labels)} in all)" if len(labels) > shown else ""
    return f"[{text}{more}]"
