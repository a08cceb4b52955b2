"""Load generation: `hey` when installed, else a bounded asyncio+httpx client in its own process.

Both send exactly `requests` requests (or keep sending for `seconds`) with `concurrency` workers
over keep-alive connections on loopback and report per-request latency and status.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoadResult:
    tool: str
    requests: int
    concurrency: int
    wall_s: float
    latencies_s: list[float]  # one per completed request
    statuses: dict[int, int]
    errors: int  # connection errors and timeouts: no HTTP status at all
    ok_latencies_s: list[float]  # only the requests answered 200
    ok_steady_latencies_s: list[float]  # answered 200 and started after the first second


def run_load(
    url: str,
    body: Path | None,
    *,
    content_type: str,
    headers: dict[str, str],
    requests: int,
    concurrency: int,
    method: str = "POST",
    seconds: float | None = None,
) -> LoadResult:
    """``seconds``: send for that long instead of a request count (a fast host finishes a fixed count
    before it is warm; a slow one takes minutes)."""
    requests = max(concurrency, requests // concurrency * concurrency)  # hey sends n // c per worker
    if shutil.which("hey"):
        return _hey(url, body, content_type, headers, requests, concurrency, method, seconds)
    return _python(url, body, content_type, headers, requests, concurrency, method, seconds)


def _hey(
    url: str,
    body: Path | None,
    content_type: str,
    headers: dict[str, str],
    requests: int,
    concurrency: int,
    method: str,
    seconds: float | None,
) -> LoadResult:
    args = [
        "hey",
        *(["-z", f"{seconds}s"] if seconds else ["-n", str(requests)]),
        "-c",
        str(concurrency),
        "-m",
        method,
        "-t",
        "30",
        "-o",
        "csv",
        "-T",
        content_type,
    ]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    if body is not None:
        args += ["-D", str(body)]
    started = time.perf_counter()
    proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    latencies = [float(r["response-time"]) for r in rows]
    statuses: dict[int, int] = {}
    for r in rows:
        statuses[int(r["status-code"])] = statuses.get(int(r["status-code"]), 0) + 1
    ok = [float(r["response-time"]) for r in rows if r["status-code"] == "200"]
    steady = [float(r["response-time"]) for r in rows if r["status-code"] == "200" and float(r["offset"]) > 1.0]
    # hey gives each worker n // c requests; its CSV lists those that got a response, the rest failed.
    # For a duration hey lists what was answered; requests that failed are not counted then.
    sent = len(rows) if seconds else requests // concurrency * concurrency
    return LoadResult("hey", sent, concurrency, wall, latencies, statuses, sent - len(rows), ok, steady)


def _python(
    url: str,
    body: Path | None,
    content_type: str,
    headers: dict[str, str],
    requests: int,
    concurrency: int,
    method: str,
    seconds: float | None,
) -> LoadResult:
    spec = {
        "url": url,
        "body": str(body) if body else None,
        "content_type": content_type,
        "headers": headers,
        "requests": requests,
        "concurrency": concurrency,
        "method": method,
        "seconds": seconds,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", json.dumps(spec)], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    return LoadResult(
        "python-httpx",
        out["sent"],
        concurrency,
        out["wall_s"],
        out["latencies_s"],
        {int(k): v for k, v in out["statuses"].items()},
        out["errors"],
        out["ok_latencies_s"],
        out["ok_steady_latencies_s"],
    )


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    payload = Path(spec["body"]).read_bytes() if spec["body"] else None  # noqa: ASYNC240 - before any load
    headers = {"content-type": spec["content_type"], **spec["headers"]}
    latencies: list[float] = []
    ok_latencies: list[float] = []
    steady_latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    remaining = spec["requests"]
    deadline = time.perf_counter() + spec["seconds"] if spec.get("seconds") else None
    sent = 0
    limits = httpx.Limits(max_connections=spec["concurrency"], max_keepalive_connections=spec["concurrency"])

    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining, errors, sent
            while (time.perf_counter() < deadline) if deadline else remaining > 0:
                remaining -= 1
                sent += 1
                started = time.perf_counter()
                try:
                    r = await client.request(spec["method"], spec["url"], content=payload, headers=headers)
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if r.status_code == 200:
                    ok_latencies.append(latencies[-1])
                    if started - begun > 1.0:
                        steady_latencies.append(latencies[-1])
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        begun = started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
        wall = time.perf_counter() - started
    return {
        "sent": sent,
        "wall_s": wall,
        "latencies_s": latencies,
        "statuses": statuses,
        "errors": errors,
        "ok_latencies_s": ok_latencies,
        "ok_steady_latencies_s": steady_latencies,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_drive(json.loads(sys.argv[1])))))
