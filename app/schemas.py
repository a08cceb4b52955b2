"""Request and response bodies of the HTTP API (they also make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, for a person")
    detail: Any = Field(None, description="structured detail, when there is any")


class LabelScore(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str = Field(description="the most likely label")
    score: float = Field(description="its probability")
    top_k: list[LabelScore] = Field(description="the k most likely labels, best first")


class PredictResponse(BaseModel):
    model: str
    version: int = Field(description="the version that actually served this request")
    predictions: list[Prediction] = Field(description="one per image, in upload order")


class LegacyPrediction(BaseModel):
    prediction: str = Field(description="the predicted label")
    score: float
    model: str
    version: int


class LoadedVersionInfo(BaseModel):
    version: int
    role: str = Field(description="current (follows the alias) or pinned (asked for by a request)")
    provider: str = Field(description="the ONNX Runtime execution provider in use")
    providers: list[str]
    queued_rows: int
    loaded_at: float


class ServedModelInfo(BaseModel):
    name: str
    alias: str = Field(description="the alias this server follows")
    serving_version: int | None
    aliases: dict[str, int] = Field(description="aliases in the registry at the last poll")
    loaded: list[LoadedVersionInfo]
    contract: dict[str, Any] | None
    last_error: str | None = Field(description="the last load failure, if the alias points to a version not served")


class LiveResponse(BaseModel):
    status: str = Field(description="ok, or hung: start the process again")
    error: str | None = Field(
        None,
        description="with one worker, while hung: why (a model run that outlasted SERVE_INFERENCE_TIMEOUT_S)",
    )


class HealthResponse(BaseModel):
    status: str
    models: dict[str, Any] = {}
    registry_error: str | None = None
    inference_error: str | None = Field(
        None, description="with several workers: why no inference process of the host can be reached"
    )
    workers: dict[str, Any] | None = Field(
        None,
        description="with several workers: the front-end processes up (frontends, frontends_up), the inference "
        "processes (inference_processes; inference_up, the numbers of those that answer; inference_ready, of "
        "those that have loaded their models and take requests; inference: up, degraded while some are down, or "
        "down while none answers) and the inference requests in flight",
    )
