"""The benchmark harness in smoke mode: every baseline and scenario yields a sane result (not the targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.report import SCALED
from tests.conftest import TrainedRun

ROOT = Path(__file__).resolve().parents[2]
SERVER_SCENARIOS = {
    "S1 png raw",
    "S1 png multipart",
    "S2 photo jpeg",
    "S3 16 png multipart",
    "S4 v2 binary uint8 x8",
    "S5 overload png raw",
}


def test_smoke_run_writes_complete_results(digits_run: TrainedRun, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
            "--model",
            str(digits_run.onnx_path),
            "--meta",
            str(digits_run.meta_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (json_path,) = out.glob("*-smoke.json")
    md = json_path.with_suffix(".md").read_text()
    assert md.startswith("Machine:")
    assert "- S5 floor (" in md and "the floor's" in md
    assert json_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads(json_path.read_text())

    machine = results["machine"]
    assert machine["cores"] >= 1
    assert machine["cpu_model"]
    assert machine["provider"] == "CPUExecutionProvider"
    baselines = results["baselines"]
    assert baselines["ort_ceiling"]["images_per_s"] > 0
    assert baselines["batcher_in_process"]["images_per_s"] > 0
    assert baselines["batcher_in_process"]["mean_batch_size"] >= 1
    assert baselines["batcher_in_process"]["ort_same_batch_images_per_s"] > 0
    assert len(baselines["batcher_in_process"]["trials_ort_same_batch_images_per_s"]) == 3
    assert baselines["http_ceiling"]["throughput_rps"] > 0
    assert results["server"]["start_to_ready_s"] > 0
    assert results["server"]["workers"] == results["workers"]  # the server ran with the workers asked for
    assert results["server"]["rss_mb_after_run"] > 10

    scenarios = results["scenarios"]
    assert {s["name"] for s in scenarios if s["target"] == "server"} == SERVER_SCENARIOS
    assert {(s["name"], s["concurrency"]) for s in scenarios if s["target"] == "naive"} >= {
        ("S1 png raw", 32),
        ("S2 photo jpeg", 32),
    }
    floor = {(s["name"], s["concurrency"]): s for s in scenarios if s["target"] == "floor"}
    assert set(floor) == {("S1 png raw", 32), ("S5 overload png raw", 512)}
    assert floor["S5 overload png raw", 512]["ok_p99_ms"] > 0  # some were admitted
    assert set(floor["S5 overload png raw", 512]["statuses"]) <= {"200", "503"}
    for s in scenarios:
        assert s["throughput_rps"] > 0, s
        assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"], s
        assert s["errors"] == 0, s
        assert sum(s["statuses"].values()) == s["requests"], s
        if s["target"] == "server":
            assert s["mean_batch_size"] >= 1, s
            assert s["server_cpu_cores"] >= 0, s  # /proc ticks are 10 ms: a smoke run may see none
        if "inference_loop_cpu_us_per_request" in s:  # read in nanoseconds: even a smoke run's is seen
            assert s["inference_loop_cpu_us_per_request"] > 0, s
        if s["name"] != "S5 overload png raw":
            assert s["non_200"] == 0, s
    slow = {s["target"]: s for s in scenarios if s["name"] == "S6 beside slow clients"}
    assert set(slow) == {"alone", "slow"}
    assert slow["slow"]["slow_clients"]["clients"] == 100
    assert slow["slow"]["slow_clients"]["connections"] >= 100  # every trickler got in
    assert "- S6: 100 clients trickling" in md
    scaling = {(s["target"], s["name"], s["concurrency"]) for s in scenarios if s.get("scaling")}
    scaled = {(name, c) for name, c in SCALED}
    assert {(name, c) for target, name, c in scaling if target == "w1"} == scaled
    two_workers = results["workers"] >= 2
    if two_workers:  # S7 at 2 workers, and 1 worker pinned to one core beside it
        assert {(name, c) for target, name, c in scaling if target == "w2"} == scaled
        assert {(name, c) for target, name, c in scaling if target == "w1 on 1 core"} == scaled
        widest = results["workers"]
        assert {(name, c) for target, name, c in scaling if target == f"w{widest} 2 inference"} == scaled
        assert f"- S7 two inference processes at {widest} workers / one" in md
        assert "- S7 scaling efficiency" in md
        assert "- S7 hop from the mean latency at c=1" in md
    assert (out / f"{json_path.stem}-scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert len(results["targets"]) == 14 + (6 if two_workers else 0)
    assert all(isinstance(t["met"], bool) and t["value"] is not None for t in results["targets"])
