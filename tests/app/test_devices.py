"""Which inference processes a multi-worker host starts (`app.cpus.inference_devices`), how a
front end reports a host of several (`app.ipc.merge_views`), how an admin move reaches them
all (`app.ipc.Devices.moved`), and how they are brought back into step after a move made
elsewhere (`Devices._align`)."""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from app import cpus
from app.errors import UnavailableError
from app.ipc import Devices, RemoteServing, merge_views
from app.serving import HostView, ModelView, ServedVersion


@pytest.fixture
def cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "cuda_installed", lambda: True)


def test_one_process_per_gpu_that_cuda_may_see(cuda_build: None) -> None:
    assert cpus.inference_devices("auto", "auto", {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert cpus.inference_devices("auto", "cuda", {"CUDA_VISIBLE_DEVICES": "GPU-a, GPU-b,"}) == ["GPU-a", "GPU-b"]
    # CUDA stops at the first invalid entry: -1 hides every GPU.
    assert cpus.inference_devices("auto", "auto", {"CUDA_VISIBLE_DEVICES": "-1"}) == [None]
    assert cpus.inference_devices("auto", "auto", {"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == ["0"]


def test_more_processes_than_gpus_share_them_in_turn(cuda_build: None) -> None:
    assert cpus.inference_devices(4, "auto", {"CUDA_VISIBLE_DEVICES": "0,1"}) == ["0", "1", "0", "1"]


def test_on_the_cpu_one_process_unless_told(cuda_build: None) -> None:
    assert cpus.inference_devices("auto", "cpu", {"CUDA_VISIBLE_DEVICES": "0,1"}) == [None]
    assert cpus.inference_devices(2, "cpu", {"CUDA_VISIBLE_DEVICES": "0,1"}) == [None, None]


def test_without_the_cuda_build_of_onnx_runtime_the_gpus_are_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "cuda_installed", lambda: False)
    assert cpus.inference_devices("auto", "auto", {"CUDA_VISIBLE_DEVICES": "0,1"}) == [None]


def fake_tool(directory: Path, script: str) -> str:
    directory.mkdir()
    tool = directory / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return f"{directory}{os.pathsep}{os.environ['PATH']}"


def test_the_gpus_nvidia_smi_lists_when_cuda_visible_devices_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", fake_tool(tmp_path / "ok", 'echo "GPU-1111-aaaa"; echo "GPU-2222-bbbb"'))
    assert cpus.visible_gpus({}) == ["GPU-1111-aaaa", "GPU-2222-bbbb"]
    monkeypatch.setenv("PATH", fake_tool(tmp_path / "failing", "echo 'NVIDIA-SMI has failed' >&2; exit 9"))
    assert cpus.visible_gpus({}) == []  # a driver that does not answer: no GPU to plan for


def view(*, ready: bool = True, queued: int = 0, error: str | None = None, device: int = 0) -> HostView:
    loaded = [ServedVersion("digits", 2, "current", "CPUExecutionProvider", ["CPUExecutionProvider"], queued, 0.0)]
    return HostView(
        alias="production",
        started=True,
        synced=True,
        last_poll_error=None,
        models={"digits": ModelView("digits", 2 if ready else None, {"production": 2}, None, {})},
        loaded=loaded if ready else [],
        infos={},
        inference_error=error,
        workers={
            "frontends": 4,
            "frontends_up": 4,
            "inference": "up",
            "inference_up": [device],
            "inference_ready": [device] if ready else [],
            "inflight": 3,
        },
    )


def test_the_host_is_ready_while_one_process_is_and_queues_add_up() -> None:
    merged = merge_views([view(queued=5), view(queued=2, device=1)])
    assert merged.ready
    assert [v.queued_rows for v in merged.loaded] == [7]
    assert merged.workers is not None
    assert merged.workers["inference"] == "up"
    assert merged.workers["inference_up"] == merged.workers["inference_ready"] == [0, 1]
    assert merged.workers["inflight"] == 6

    # One restarted and still loading: the host serves from the other, and says it is degraded.
    merged = merge_views([view(ready=False), view(queued=1, device=1)])
    assert merged.ready
    assert merged.models["digits"].current == 2
    assert merged.workers is not None
    assert merged.workers["inference"] == "up"  # both are up; one is loading
    assert (merged.workers["inference_up"], merged.workers["inference_ready"]) == ([0, 1], [1])
    down = replace(view(), inference_error="the inference process restarted, retry")
    merged = merge_views([down, view(device=1)])
    assert merged.ready
    assert merged.workers is not None
    assert (merged.workers["inference"], merged.workers["inference_up"]) == ("degraded", [1])


def test_the_host_is_not_ready_when_no_process_is_up() -> None:
    why = "the inference process restarted, retry"
    merged = merge_views([replace(view(), inference_error=why), replace(view(device=1), inference_error=why)])
    assert not merged.ready
    assert merged.inference_error == why


class Part:
    """Stands in for a `RemoteServing` to one inference process, for what `Devices.moved` uses."""

    def __init__(self, view: HostView, after_move: HostView | None = None, device: int = 0) -> None:
        self._view: HostView | None = view
        self.after_move = after_move  # None: the process goes down during the move
        self.down: str | None = None
        self.device = device
        self.moves = 0  # how often it was told to follow a move

    @property
    def ready(self) -> bool:
        return self.down is None and self._view is not None and self._view.ready

    waiting = 0

    def view(self) -> HostView:
        assert self._view is not None
        return self._view if self.down is None else replace(self._view, inference_error=self.down)

    async def moved(self, name: str) -> HostView:
        self.moves += 1
        await asyncio.sleep(0)
        if self.after_move is None:
            self.down = "the inference process restarted, retry"
            raise UnavailableError(self.down, headers={"Retry-After": "1"})
        self._view = self.after_move
        return self.after_move


def serving_v3(*, error: str | None = None, device: int = 0) -> HostView:
    """After a move to v3: served, or still v2 with the load error."""
    base = view(device=device)
    model = ModelView("digits", 2 if error else 3, {"production": 3}, error, {})
    return replace(base, models={"digits": model})


def devices(*parts: Part) -> Devices:
    return Devices(cast(list[RemoteServing], list(parts)), lead=True)


async def test_a_move_answers_with_the_new_version_once_every_process_serves_it() -> None:
    host = devices(Part(view(), serving_v3()), Part(view(device=1), serving_v3(device=1)))
    answer = await host.moved("digits")
    assert answer.models["digits"].current == 3
    assert answer.models["digits"].last_error is None


async def test_a_move_one_process_could_not_load_reports_its_error_and_the_version_it_still_serves() -> None:
    broken = serving_v3(error="CUDA out of memory", device=1)
    host = devices(Part(view(), serving_v3()), Part(view(device=1), broken))
    answer = await host.moved("digits")
    assert (answer.models["digits"].current, answer.models["digits"].last_error) == (2, "CUDA out of memory")


async def test_a_process_lost_during_a_move_is_left_to_load_it_when_back_but_all_lost_is_503() -> None:
    host = devices(Part(view(), serving_v3()), Part(view(device=1), None))
    answer = await host.moved("digits")
    assert answer.models["digits"].current == 3
    assert answer.workers is not None
    assert (answer.workers["inference"], answer.workers["inference_up"]) == ("degraded", [0])
    with pytest.raises(UnavailableError):
        await devices(Part(view(), None), Part(view(device=1), None)).moved("digits")


async def test_processes_that_disagree_on_an_alias_are_each_told_to_read_the_registry_once() -> None:
    """Process 1 started again after a move made with the ops CLI and serves v3; process 0 has
    not polled since and serves v2."""
    behind, restarted = Part(view(), serving_v3()), Part(serving_v3(device=1), serving_v3(device=1), device=1)
    host = devices(behind, restarted)
    await host._align()
    assert (behind.moves, restarted.moves) == (1, 1)
    assert host.view().models["digits"].current == 3
    await host._align()  # in step now: nothing more to do
    assert (behind.moves, restarted.moves) == (1, 1)


async def test_a_disagreement_that_outlives_the_reread_is_left_to_the_poll_until_it_changes() -> None:
    """Process 0 cannot read the registry now (its answer is its old view): it is not asked again
    every half second for the same disagreement, but is when the aliases move once more."""
    stuck, ahead = Part(view(), view()), Part(serving_v3(device=1), serving_v3(device=1), device=1)
    host = devices(stuck, ahead)
    await host._align()
    await host._align()
    assert (stuck.moves, ahead.moves) == (1, 1)
    v4 = replace(serving_v3(device=1), models={"digits": ModelView("digits", 4, {"production": 4}, None, {})})
    ahead._view = ahead.after_move = v4
    await host._align()
    assert (stuck.moves, ahead.moves) == (2, 2)


async def test_a_process_that_is_down_is_neither_compared_nor_told() -> None:
    down = Part(view(), serving_v3())
    down.down = "the inference process restarted, retry"
    up = Part(serving_v3(device=1), serving_v3(device=1), device=1)
    await devices(down, up)._align()
    assert (down.moves, up.moves) == (0, 0)
