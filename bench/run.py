"""`python -m bench`: every baseline and scenario in one run, on this machine, side by side.

    python -m bench              # the full run (a few minutes), results in bench/results/
    python -m bench --smoke      # seconds: tiny request counts, checks the harness works
    python -m bench --provider cuda --only S1,S3,S4   # on a GPU (needs onnxruntime-gpu)

It starts what it measures itself (the server, the baseline apps), drives load from a
separate process on loopback (`hey`, else a Python client), and writes
`bench/results/<date>-<host>.json`, a Markdown table and PNG plots.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

from app.backend import GpuUnavailableError, choose_providers
from app.cpus import available_cpus
from bench import inprocess, report
from bench.loadgen import LoadResult, run_load
from bench.slowclients import Tricklers
from registry import ModelContract

ROOT = Path(__file__).resolve().parents[1]
PHOTO = "china.jpg"  # scikit-learn's bundled 640x427 JPEG
SCENARIOS = {"S1", "S2", "S3", "S4", "S5", "S6", "S7"}
SLOW_CLIENTS = 100
# What a scenario sends: the body, its content type, images per request, extra headers.
Body = tuple[bytes, str, int, dict[str, str]]
Scenario = tuple[str, str, int, int, Body]  # name, route, concurrency, requests, body


@dataclass
class Profile:
    """Request counts: full for the published figures, smoke for the test suite."""

    s1_concurrency: list[int]
    requests: dict[str, int]
    ort_seconds: float
    batcher_images: int
    overload_concurrency: int = 512


FULL = Profile(
    s1_concurrency=[1, 8, 32, 64],
    requests={
        "c1": 400,
        "c8": 1500,
        "c32": 3000,
        "c64": 3000,
        "s2": 1200,
        "s3": 300,
        "s4": 600,
        "s5": 20480,
        "s6": 30000,  # over 10 s with hey: long enough that the server cuts tricklers off (after 5 s) mid-run
        "http": 6000,
    },
    ort_seconds=2.0,
    batcher_images=6000,
)
SMOKE = Profile(
    s1_concurrency=[1, 8, 32, 64],
    requests={"c1": 5, "c8": 16, "c32": 32, "c64": 64, "s2": 32, "s3": 8, "s4": 8, "s5": 512, "s6": 32, "http": 32},
    ort_seconds=0.1,
    batcher_images=128,
)


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    url: str
    ready_after_s: float

    def pids(self) -> list[int]:
        """The process and its descendants (a multi-worker server's front ends and inference process)."""
        found, todo = [], [self.popen.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    todo.extend(int(child) for child in (task / "children").read_text().split())
        return found

    def cpu_seconds(self) -> float:
        """CPU time of the whole process tree (live processes: one that died takes its time along)."""
        return sum(self.cpu_by_process().values())

    def cpu_by_process(self) -> dict[int, float]:
        """CPU seconds of each live process of the tree."""
        seconds = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                seconds[pid] = _cpu_seconds(Path(f"/proc/{pid}/stat"))
        return seconds

    def main_thread_cpu(self, pid: int) -> float:
        """CPU seconds of ``pid``'s main thread: an asyncio process's event loop, without its pools.
        From schedstat (nanoseconds) where the kernel has it: stat counts in clock ticks (10 ms),
        too coarse for a run of a few hundred requests (it read 0 µs a request)."""
        task = Path(f"/proc/{pid}/task/{pid}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((task / "schedstat").read_text().split()[0]) / 1e9
        try:
            return _cpu_seconds(task / "stat")
        except OSError:
            return 0.0

    def roles(self) -> dict[int, str]:
        """A multi-worker server's processes by role: "inference", "frontend" (others left out)."""
        found = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"app.host" in argv:
                    found[pid] = argv[argv.index(b"app.host") + 1].decode()
        return found

    def rss_mb(self) -> float:
        """Resident memory of the whole process tree."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        return total


def _cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def start(command: list[str], env: dict[str, str], probe: str, log: Path, cwd: Path = ROOT) -> Iterator[Proc]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        started = time.perf_counter()
        popen = subprocess.Popen(
            [*command, "--port", str(port)], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            while True:
                if popen.poll() is not None:
                    raise RuntimeError(f"{command} exited with {popen.returncode}; see {log}")
                try:
                    if httpx.get(url + probe, timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - started > 120:
                    raise RuntimeError(f"{command} not ready after 120 s; see {log}")
                time.sleep(0.02)
            yield Proc(popen, url, time.perf_counter() - started)
        finally:
            popen.terminate()
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()


def uvicorn_app(target: str, workers: int = 1) -> list[str]:
    command = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--no-access-log", "--log-level"]
    return [*command, "warning", *(["--workers", str(workers)] if workers > 1 else [])]


def server(workers: int | None = None, *, pin: str | None = None) -> list[str]:
    """``python -m app``; ``pin``: CPUs for `taskset -c`."""
    command = [sys.executable, "-m", "app", "--log-level", "warning"]
    if workers is not None:
        command += ["--workers", str(workers)]
    return ["taskset", "-c", pin, *command] if pin else command


def worker_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to the core count, and the core count itself."""
    counts = {1, cores}
    count = 2
    while count < cores:
        counts.add(count)
        count *= 2
    return sorted(counts)


@contextmanager
def previous_checkout(rev: str, work: Path) -> Iterator[Path]:
    """A git worktree of ``rev``, to run the server as it was (the same venv, its own code)."""
    path = work / f"previous-{rev}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-f", str(path), rev],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


# -- payloads -------------------------------------------------------------------------------


def multipart(files: list[bytes], field: str = "images", mime: str = "image/png") -> tuple[bytes, str]:
    boundary = "imgservebenchboundary7d1f"
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.png"\r\n'
            f"Content-Type: {mime}\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def digit_pngs(count: int, size: int) -> list[bytes]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(count):
        img = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").convert("RGB")
        buf = io.BytesIO()
        img.resize((size, size), Image.Resampling.BILINEAR).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def photo() -> bytes:
    import sklearn

    return (Path(sklearn.__file__).parent / "datasets" / "images" / PHOTO).read_bytes()


# -- model ----------------------------------------------------------------------------------


def ensure_model(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    if args.model and args.meta:
        return Path(args.model), Path(args.meta)
    cached = ROOT / "var" / "bench" / "model"
    if not (cached / "model.onnx").exists():
        print("training a digits model for the benchmark (1 epoch) ...", flush=True)
        runs = work / "train-runs"
        subprocess.run(
            [sys.executable, "-m", "training", "--dataset", "digits", "--epochs", "1", "--runs-dir", str(runs)],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (run_dir,) = runs.iterdir()
        cached.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "model.onnx", cached / "model.onnx")
        shutil.copy(run_dir / "meta.json", cached / "meta.json")
    return cached / "model.onnx", cached / "meta.json"


def prepare_registry(work: Path, model: Path, meta: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "REGISTRY_DATABASE_URL": f"sqlite:///{work / 'registry.db'}",
        "REGISTRY_ARTIFACTS_DIR": str(work / "artifacts"),
    }
    for args in (
        ["db", "upgrade"],
        ["register", "digits", str(model), "--meta", str(meta)],
        ["promote", "digits", "1", "--reason", "benchmark"],
    ):
        subprocess.run(
            [sys.executable, "-m", "registry", *args], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )
    return env


# -- measuring ------------------------------------------------------------------------------


def batch_counters(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for key in values:
            if line.startswith(f"batch_size_rows_{key}{{"):
                values[key] += float(line.rsplit(" ", 1)[1])
    return values["sum"], values["count"]


def measure(
    name: str,
    target: str,
    proc: Proc,
    path: str,
    body: bytes | None,
    content_type: str,
    *,
    concurrency: int,
    requests: int,
    images: int,
    work: Path,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    with_metrics: bool = False,
    seconds: float | None = None,
) -> dict[str, Any]:
    body_file = None
    if body is not None:
        body_file = work / f"body-{abs(hash(body))}.bin"
        body_file.write_bytes(body)
    url = proc.url + path
    kwargs: dict[str, Any] = {"content_type": content_type, "headers": headers or {}, "method": method}
    run_load(url, body_file, requests=min(requests, max(concurrency, 50)), concurrency=concurrency, **kwargs)  # warm
    batches_before = batch_counters(proc.url) if with_metrics else (0.0, 0.0)
    roles = proc.roles()
    inference = [pid for pid, role in roles.items() if role == "inference"]
    cpu_before = proc.cpu_by_process()
    loop_before = sum(proc.main_thread_cpu(pid) for pid in inference)
    result: LoadResult = run_load(url, body_file, requests=requests, concurrency=concurrency, seconds=seconds, **kwargs)
    loop_cpu = sum(proc.main_thread_cpu(pid) for pid in inference) - loop_before
    cpu_after = proc.cpu_by_process()
    spent = {pid: cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after}
    cpu = sum(spent.values())
    batches_after = batch_counters(proc.url) if with_metrics else (0.0, 0.0)
    lat = np.array(result.latencies_s or [float("nan")]) * 1000
    ok = np.array(result.ok_latencies_s or [float("nan")]) * 1000
    steady = np.array(result.ok_steady_latencies_s or [float("nan")]) * 1000
    completed = sum(result.statuses.values())
    rows = batches_after[0] - batches_before[0]
    n_batches = batches_after[1] - batches_before[1]
    entry = {
        "name": name,
        "target": target,
        "concurrency": concurrency,
        "requests": result.requests,
        "images_per_request": images,
        "tool": result.tool,
        "wall_s": result.wall_s,
        "throughput_rps": completed / result.wall_s,
        "images_per_s": result.statuses.get(200, 0) * images / result.wall_s,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "ok_p99_ms": float(np.percentile(ok, 99)),
        "ok_steady_p99_ms": float(np.percentile(steady, 99)),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": result.errors,
        "non_200": completed - result.statuses.get(200, 0),
        "mean_batch_size": rows / n_batches if n_batches else None,
        "server_cpu_cores": cpu / result.wall_s,
        **_cpu_by_role(spent, roles, loop_cpu, completed),
    }
    print(
        f"  {name:<28} {target:<8} c={concurrency:<4} {entry['throughput_rps']:8.1f} req/s "
        f"{entry['images_per_s']:8.1f} img/s  p50 {entry['p50_ms']:7.1f} ms  p99 {entry['p99_ms']:7.1f} ms  "
        f"errors {entry['errors']}  non-200 {entry['non_200']}"
        + (f"  batch {entry['mean_batch_size']:.1f}" if entry["mean_batch_size"] else "")
        + (
            f"  inference loop {entry['inference_loop_cpu_us_per_request']:.0f} µs/req, front ends max/mean "
            f"{entry['frontend_cpu_max_over_mean']:.2f}"
            if "inference_loop_cpu_us_per_request" in entry
            else ""
        ),
        flush=True,
    )
    return entry


def _cpu_by_role(spent: dict[int, float], roles: dict[int, str], loop_cpu: float, requests: int) -> dict[str, float]:
    """With several workers: CPU per request of the inference process's event loop (its main thread,
    ONNX Runtime's threads left out), the host's serial point: it handles every request, so 1 s over
    this figure is what the host can serve at most; and how evenly the front ends shared the work
    (the busiest front end's CPU over the mean; 1.0 is even)."""
    front_ends = [spent[pid] for pid, role in roles.items() if role == "frontend" and pid in spent]
    if "inference" not in roles.values() or not front_ends or not requests:
        return {}
    mean = sum(front_ends) / len(front_ends)
    return {
        "inference_loop_cpu_us_per_request": loop_cpu / requests * 1e6,
        "frontend_cpu_max_over_mean": max(front_ends) / mean if mean else 1.0,
    }


def providers_for(name: str) -> list[str]:
    """The server's own choice for ``SERVE_PROVIDERS=name``; cuda must really be there."""
    try:
        return choose_providers(name, require_gpu=name == "cuda")
    except GpuUnavailableError as exc:
        raise SystemExit(f"--provider cuda: {exc}") from None


def machine() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "gpu": _gpu_name(),
        "load_tool": "hey" if shutil.which("hey") else "python-httpx",
    }


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    profile = SMOKE if args.smoke else FULL
    providers = providers_for(args.provider)
    only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else []
    if unknown := sorted(set(only) - SCENARIOS):
        raise SystemExit(f"--only: unknown scenario {', '.join(unknown)} (choose from {', '.join(sorted(SCENARIOS))})")

    def wanted(scenario: str) -> bool:
        return not only or any(scenario.startswith(prefix + " ") for prefix in only)

    stamp = datetime.now(UTC)
    work = Path(args.work or ROOT / "var" / "bench" / stamp.strftime("%Y%m%dT%H%M%S"))
    work.mkdir(parents=True, exist_ok=True)
    model, meta_path = ensure_model(args, work)
    meta = json.loads(meta_path.read_text())
    contract = meta["contract"]
    size = contract["preprocessing"]["size"][0]
    env = prepare_registry(work, model, meta_path)
    env["SERVE_PROVIDERS"] = args.provider
    env["SERVE_REQUIRE_GPU"] = "true" if args.provider == "cuda" else "false"
    pngs = digit_pngs(64, size)
    images = np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs])
    results: dict[str, Any] = {
        "date": stamp.isoformat(),
        "mode": "smoke" if args.smoke else "full",
        "provider_requested": args.provider,
        "only": only,
        "machine": machine(),
        "model": {"input": contract["input"], "labels": len(contract["labels"]), "size": size},
        "baselines": {},
        "scenarios": [],
    }
    model_bytes = model.read_bytes()
    r = profile.requests
    cores = available_cpus()
    workers = args.workers or cores
    results["workers"] = workers

    print("ONNX Runtime in-process ...", flush=True)
    batches = [1, 8, 16, 32, 64, 128] + ([256] if args.provider == "cuda" else [])
    ceiling = inprocess.ort_ceiling(
        model_bytes, contract["input"]["name"], images, batches, profile.ort_seconds, providers
    )
    results["baselines"]["ort_ceiling"] = ceiling
    print(f"  ORT ceiling {ceiling['images_per_s']:.0f} img/s at batch {ceiling['best_batch']}", flush=True)
    batcher = inprocess.batcher_throughput(
        model_bytes,
        ModelContract.model_validate(contract),
        images,
        submitters=64,
        total=profile.batcher_images,
        max_batch_size=32,
        max_batch_delay_ms=2,
        providers=providers,
        reference_seconds=profile.ort_seconds,
    )
    results["baselines"]["batcher_in_process"] = batcher
    print(
        f"  batcher, 64 submitters: {batcher['images_per_s']:.0f} img/s, mean batch {batcher['mean_batch_size']:.1f}",
        flush=True,
    )

    png, jpeg = pngs[7], photo()
    path = "/v1/models/digits/predict"
    one_multipart, one_mp_type = multipart([pngs[7]])
    sixteen, sixteen_type = multipart(pngs[:16])
    x8 = np.ascontiguousarray(images[:8])
    v2_header = json.dumps(
        {
            "inputs": [
                {
                    "name": contract["input"]["name"],
                    "shape": list(x8.shape),
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": x8.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()

    print("HTTP ceiling (trivial endpoint) ...", flush=True)
    with start(uvicorn_app("bench.apps:trivial_app"), env, "/ping", work / "trivial.log") as proc:
        results["baselines"]["http_ceiling"] = measure(
            "http ceiling",
            "trivial",
            proc,
            "/ping",
            None,
            "text/plain",
            method="GET",
            concurrency=32,
            requests=r["http"],
            images=0,
            work=work,
        )

    one_png: Body = (png, "image/png", 1, {})
    if wanted("S5 overload png raw"):
        print("S5 floor (the admission gate in front of a bare endpoint) ...", flush=True)
        floor_scenarios = [("S1 png raw", 32, r["c32"]), ("S5 overload png raw", profile.overload_concurrency, r["s5"])]
        with start(uvicorn_app("bench.apps:admission_floor_app"), env, "/ping", work / "floor.log") as proc:
            for name, c, n in floor_scenarios:
                entry = measure(
                    name, "floor", proc, path, png, "image/png", concurrency=c, requests=n, images=0, work=work
                )
                results["scenarios"].append(entry)
    s1_server = [("S1 png raw", one_png), ("S1 png multipart", (one_multipart, one_mp_type, 1, {}))]
    server_scenarios: list[tuple[str, str, int, int, tuple[bytes, str, int, dict[str, str]]]] = [
        *((name, path, c, r[f"c{c}"], payload) for name, payload in s1_server for c in profile.s1_concurrency),
        ("S2 photo jpeg", path, 32, r["s2"], (jpeg, "image/jpeg", 1, {})),
        ("S3 16 png multipart", path, 8, r["s3"], (sixteen, sixteen_type, 16, {})),
        (
            "S4 v2 binary uint8 x8",
            "/v2/models/digits/infer",
            8,
            r["s4"],
            (
                v2_header + x8.tobytes(),
                "application/octet-stream",
                8,
                {"Inference-Header-Content-Length": str(len(v2_header))},
            ),
        ),
        ("S5 overload png raw", path, profile.overload_concurrency, r["s5"], one_png),
    ]
    naive_scenarios = [
        *(("S1 png raw", "/predict", c, r[f"c{c}"], one_png) for c in profile.s1_concurrency),
        ("S2 photo jpeg", "/predict", 32, r["s2"], (jpeg, "image/jpeg", 1, {})),
    ]

    def run_scenarios(
        target: str, proc: Proc, scenarios: list[Scenario], *, with_metrics: bool, scaling: bool = False
    ) -> None:
        for name, route, c, n, (body, content_type, per_request, headers) in scenarios:
            if scaling or wanted(name):
                entry = measure(
                    name,
                    target,
                    proc,
                    route,
                    body,
                    content_type,
                    headers=headers,
                    concurrency=c,
                    requests=n,
                    images=per_request,
                    work=work,
                    with_metrics=with_metrics,
                    seconds=args.seconds,
                )
                if scaling:
                    entry["scaling"] = True
                results["scenarios"].append(entry)

    if any(wanted(name) for name, *_ in naive_scenarios):
        print("naive baseline (decode + ORT per request on the event loop) ...", flush=True)
        naive_env = {
            **env,
            "BENCH_MODEL": str(model),
            "BENCH_META": str(meta_path),
            "BENCH_PROVIDERS": ",".join(providers),
        }
        naive = uvicorn_app("bench.apps:naive_app", workers)
        with start(naive, naive_env, "/openapi.json", work / "naive.log") as proc:
            run_scenarios("naive", proc, naive_scenarios, with_metrics=False)

    print(f"the server, default settings ({workers} workers) ...", flush=True)
    with start(server(workers), env, "/readyz", work / "server.log") as proc:
        front_ends = sum(1 for role in proc.roles().values() if role == "frontend")
        results["server"] = {"start_to_ready_s": proc.ready_after_s, "workers": front_ends or 1}  # as counted
        results["machine"]["provider"] = httpx.get(proc.url + "/v1/models/digits").json()["loaded"][0]["provider"]
        run_scenarios("server", proc, server_scenarios, with_metrics=True)
        if wanted("S6 beside slow clients"):
            # The same normal load twice, side by side in time: alone, then with 100 clients trickling bodies.
            for target, slow in (("alone", False), ("slow", True)):
                with contextlib.ExitStack() as stack:
                    tricklers = stack.enter_context(Tricklers(proc.url, path, clients=SLOW_CLIENTS)) if slow else None
                    if tricklers is not None:
                        time.sleep(1.0)  # let them connect and start trickling first
                    entry = measure(
                        "S6 beside slow clients",
                        target,
                        proc,
                        path,
                        png,
                        "image/png",
                        concurrency=8,
                        requests=r["s6"],
                        images=1,
                        work=work,
                        with_metrics=True,
                    )
                if tricklers is not None:
                    entry["slow_clients"] = {"clients": SLOW_CLIENTS, **dataclasses.asdict(tricklers.stats)}
                results["scenarios"].append(entry)
        results["server"]["rss_mb_after_run"] = proc.rss_mb()

    if wanted("S7 scaling"):
        # S1-S4 at 1, 2, 4 ... workers, then the pinned single worker and the server before this change.
        scaling = [
            ("S1 png raw", path, 1, r["c1"], one_png),
            ("S1 png raw", path, 32, r["c32"], one_png),
            *(entry for entry in server_scenarios if entry[0].startswith(("S2", "S3", "S4"))),
        ]
        if cores >= 8:  # a host this wide (or a GPU) needs more than 8 requests in flight to fill it
            name, route, _, n, payload = next(e for e in server_scenarios if e[0].startswith("S4"))
            scaling.append((name, route, 64, n * 4, payload))
        runs = [(f"w{count}", server(count), ROOT) for count in worker_counts(cores)]
        widest = worker_counts(cores)[-1]
        if widest > 1:  # the widest count again with two inference processes (sharing the GPU on CUDA)
            runs.append((report.two_inference(widest), ["env", "SERVE_INFERENCE_PROCESSES=2", *server(widest)], ROOT))
        if shutil.which("taskset") and cores > 1:
            runs.append(("w1 on 1 core", server(1, pin="0"), ROOT))
        with contextlib.ExitStack() as stack:
            if args.previous:
                checkout = stack.enter_context(previous_checkout(args.previous, work))
                if "--workers" in (checkout / "app" / "__main__.py").read_text():
                    # "previous REV" is the single process the 1-worker target compares with; the
                    # widest count runs too, beside this revision's.
                    runs.append((f"previous {args.previous}", server(1), checkout))
                    if widest > 1:
                        runs.append((f"previous {args.previous} w{widest}", server(widest), checkout))
                else:  # a revision from before the workers: one process
                    runs.append((f"previous {args.previous}", server(pin=None), checkout))
            for round_, (target, command, cwd) in ((r, run) for r in range(args.rounds) for run in runs):
                print(f"S7 scaling: {target}, round {round_ + 1} of {args.rounds} ...", flush=True)
                with start(command, env, "/readyz", work / f"scaling-{target.replace(' ', '-')}.log", cwd=cwd) as proc:
                    run_scenarios(target, proc, scaling, with_metrics=True, scaling=True)
    results["targets"] = report.targets(results)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny request counts: checks the harness, not speed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where results go")
    parser.add_argument("--model", help="ONNX file to use (default: train a digits model once, cached)")
    parser.add_argument("--meta", help="its meta.json (with --model)")
    parser.add_argument("--work", help="scratch directory (default: var/bench/<time>)")
    parser.add_argument(
        "--provider",
        choices=["cpu", "cuda"],
        default="cpu",
        help="ONNX Runtime provider for ORT, the baselines and the server (cuda: needs onnxruntime-gpu)",
    )
    parser.add_argument("--only", help="comma-separated scenarios to run, e.g. S1,S3,S4 (default: all)")
    parser.add_argument(
        "--workers", type=int, help="the server's workers and the naive baseline's (default: the CPUs available)"
    )
    parser.add_argument(
        "--previous", metavar="REV", help="S7 also runs the server as of this git revision, side by side"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="S1-S5 and S7: send load for this long per measurement instead of a fixed request count",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="S7: run every target this many times, interleaved; figures are medians"
    )
    args = parser.parse_args(argv)
    results = run(args)
    paths = report.write(results, args.out)
    print("\n" + report.markdown(results))
    for path in paths:
        print(f"wrote {path}")
