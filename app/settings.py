"""Server configuration: one `Settings`, read from `SERVE_*` variables (nested groups use `__`).

The registry is found through `REGISTRY_DATABASE_URL` and `REGISTRY_ARTIFACTS_DIR`,
the same variables the `registry` CLI reads.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from registry.settings import RegistrySettings


class BatchingSettings(BaseModel):
    max_batch_size: int = Field(32, ge=1, le=1024, description="rows per ONNX Runtime call")
    max_batch_delay_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="longest wait after the first row for more; a batch never waits longer than batches have "
        "been taking to run",
    )
    max_queue_rows: int = Field(256, ge=1, description="rows waiting per version before 503")
    max_concurrent_batches: int = Field(
        2,
        ge=1,
        le=8,
        description="batches of one version handed to the inference threads at once; with 2, the next full batch "
        "is ready when the running one ends",
    )
    inference_threads: int = Field(
        1,
        ge=1,
        le=16,
        description="threads that run batches, shared by every loaded version; ONNX Runtime spreads one batch over "
        "all cores, so 1 runs them back to back instead of side by side",
    )
    inline_below_ms: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="a lone one-row request, with nothing else in flight, runs on the event loop instead of the "
        "inference thread when the last one-row batch took less than this: the hand-off there and back costs "
        "more than the run; 0: always in the thread",
    )
    pad: Literal["auto", "always", "never"] = Field(
        "auto",
        description="pad each batch to a multiple of max_batch_size rows; auto: only on CUDA, where every new "
        "batch shape costs a convolution set-up",
    )


class LimitSettings(BaseModel):
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="request body limit (413)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="pixels per image as its header declares them (413)")
    max_decoded_pixels: int = Field(
        16_000_000,
        ge=1,
        description="pixels decoding one image may produce (413); a JPEG counts at the reduced scale it is "
        "decoded at, so only large PNG, WebP, BMP, GIF or TIFF files reach it",
    )
    max_request_pixels: int = Field(
        64_000_000, ge=1, description="decoded pixels of all the images of one request together (413)"
    )
    decode_capacity_pixels: int = Field(
        256_000_000,
        ge=1,
        description="decoded pixels being decoded or waiting to be, server-wide; a request that would pass it "
        "gets 503 with Retry-After instead of queueing seconds of CPU behind the others",
    )
    max_images_per_request: int = Field(64, ge=1, description="images per request (413)")
    max_inflight_requests: int = Field(
        64,
        ge=1,
        description="inference requests whose bodies have arrived, handled at once; past it, 503 (before the "
        "body is read when the limit is already reached on arrival); clients still sending do not count",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a connection must deliver a request's headers within this many seconds of opening (or of "
        "the request's first byte); otherwise it is closed. Bounds idle and slow-header connections",
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="idle time between requests before a close")
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a connection whose client has not read the answers written to it for this many seconds is "
        "closed, and the requests waiting to write theirs let go of their admission slots",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="a request body must have arrived this many seconds after its headers (408)"
    )
    min_body_rate: int = Field(
        1024,
        ge=0,
        description="bytes per second a body must average once it has been sending for 5 s (408); 0: no minimum",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVE_", env_nested_delimiter="__", extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on (also --host); 0.0.0.0 in the images")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (also --port)")
    root_path: str = Field(
        "",
        pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="the path prefix a reverse proxy serves this server under, e.g. /imgserve (the proxy strips "
        "it); the OpenAPI docs and the console at /ui use it",
    )
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        "auto",
        description="front-end processes (also --workers); auto: the CPUs this process may use (affinity and "
        "cgroup quota). With 2 or more, one inference process per device runs the models for all of them; "
        "with 1, the server is one process",
    )
    inference_processes: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto",
        description="with several workers: inference processes, each with a copy of the served models; the front "
        "ends send each request to the least busy one. auto: one per GPU that CUDA may use (CUDA_VISIBLE_DEVICES, "
        "else nvidia-smi's list) when the models may run on CUDA, otherwise one. More processes than GPUs share the "
        "GPUs in turn; on CPU, 2 or more split the cores between them",
    )
    inference_timeout_s: float = Field(
        30.0,
        gt=0,
        description="how long a request waits for its model run (503 with Retry-After; with several workers, to within "
        "half a second). A run longer than this is lost: with several workers its inference process is started again "
        "(hang_timeout_s); with one, /healthz says 503 so that a liveness probe restarts it. A stop does not wait "
        "for a lost run",
    )
    hang_timeout_s: float = Field(
        10.0,
        ge=0,
        description="with several workers: a front end or inference process whose event loop has not run for this "
        "long is killed and started again, and so is an inference process this long after one of its model runs "
        "outlasted inference_timeout_s (a GPU call that never returns); 0: never",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="models to serve (comma-separated); empty: every model whose alias is set"
    )
    alias: str = Field("production", description="the alias each served model follows")
    default_model: str | None = Field(None, description="model of `POST /predict`; default: the only/first served")
    poll_interval_s: float = Field(2.0, gt=0, description="how often the registry is checked for alias moves")
    load_retry_s: float = Field(60.0, ge=0, description="wait before retrying a version that failed to load")
    pinned_cache_size: int = Field(4, ge=0, description="versions kept loaded for ?version= / ?alias= requests")
    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime execution provider: auto (CUDA when ONNX Runtime offers it), cpu, cuda"
    )
    require_gpu: bool = Field(False, description="fail start-up instead of falling back to CPU")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per session; 0: one per core")
    decode_threads: int = Field(
        default_factory=lambda: min(8, (os.cpu_count() or 2) * 2),
        ge=1,
        description="image decoding threads; default: twice the cores, at most 8 (each front end of a multi-worker "
        "host: twice the CPUs over the workers, 2 to 8)",
    )
    decode_inline_pixels: int = Field(
        4096,
        ge=0,
        description="a request whose images hold at most this many pixels together (as stored, before any JPEG "
        "scaling) is decoded on the event loop, not in a thread: handing small work to a thread costs more than it "
        "gains. Each front end of a host with a worker per CPU defaults to 65536 (256x256); 0: always in a thread",
    )
    warmup_batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 8, 32], description="batch sizes run once through a version before it serves"
    )
    artifact_cache_dir: Path | None = Field(
        None,
        description="keep the artifacts this server loads in this directory, read through from the registry's "
        "store (a bucket): a restart or a pinned version reads them from here, sha256-checked; unset: no cache",
    )
    artifact_cache_max_bytes: int = Field(
        10 * 1024**3, ge=0, description="size of the artifact cache; past it the least recently read go first"
    )
    admin_tokens: SecretStr | None = Field(None, description="name:token[,name:token...] for the admin API")
    access_log: bool = Field(False, description="uvicorn's line per request")
    fast_path: bool = Field(
        True,
        description="call the inference endpoints straight from the middleware for requests without a query "
        "string (see docs/decisions); off: every request takes FastAPI's routing, answers are the same",
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans and metrics, for when OTel providers are configured; "
        "off, each request skips FastAPI's per-request check for providers",
    )
    batching: BatchingSettings = Field(default_factory=BatchingSettings, description="SERVE_BATCHING__*")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="SERVE_LIMITS__*")
    registry: RegistrySettings = Field(
        default_factory=RegistrySettings, description="read from REGISTRY_* variables, as the CLI does"
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()


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
