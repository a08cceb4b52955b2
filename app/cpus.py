"""What this process may use: its CPUs (affinity, capped by a cgroup CPU quota in containers) and
the GPUs CUDA may see, without importing ONNX Runtime or CUDA (the supervisor sizes the host with it)."""

from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def available_cpus() -> int:
    """At least 1. A container limited to 2.5 CPUs on a 16-core host gets 3, not 16."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_quota(
    v2: Path = CGROUP_V2_MAX, v1_quota: Path = CGROUP_V1_QUOTA, v1_period: Path = CGROUP_V1_PERIOD
) -> float | None:
    """CPUs the cgroup may use (quota / period), None when unlimited or unknown."""
    try:
        fields = v2.read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        if fields:
            return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(v1_quota.read_text())
        period = int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def visible_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPUs CUDA may use here, each as `CUDA_VISIBLE_DEVICES` can name it: that variable's
    entries when it is set (CUDA stops at the first negative one, so `-1` hides them all), else the
    UUIDs `nvidia-smi` lists (a container sees only the GPUs given to it). [] without either."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        gpus = []
        for entry in (part.strip() for part in listed.split(",")):
            if not entry or entry.startswith("-"):
                break
            gpus.append(entry)
        return gpus
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):  # no driver, no tool, or it hung
        return []
    return [line.strip() for line in answer.stdout.splitlines() if line.strip().startswith("GPU-")]


def cuda_installed() -> bool:
    """Whether the ONNX Runtime installed here is the CUDA build (`onnxruntime-gpu`)."""
    try:
        importlib.metadata.distribution("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def inference_devices(processes: int | str, providers: str, environ: Mapping[str, str]) -> list[str | None]:
    """The GPU (a `CUDA_VISIBLE_DEVICES` value) of each inference process of a multi-worker host;
    None for one that runs on the CPU.

    ``processes`` "auto" is one per GPU when the models may run on CUDA (``providers`` not "cpu"
    and the CUDA build of ONNX Runtime installed), otherwise one. A number larger than the GPUs
    shares them out in turn: two processes on one GPU give it two event loops to feed it."""
    gpus = visible_gpus(environ) if providers != "cpu" and cuda_installed() else []
    count = max(1, len(gpus)) if processes == "auto" else int(processes)
    return [gpus[i % len(gpus)] if gpus else None for i in range(count)]
