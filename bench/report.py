"""Targets as ratios measured in the same run, and the files a run leaves behind."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

X = "\u00d7"
SCALED = [
    ("S1 png raw", 1),
    ("S1 png raw", 32),
    ("S2 photo jpeg", 32),
    ("S3 16 png multipart", 8),
    ("S4 v2 binary uint8 x8", 8),
]


def _previous(results: dict[str, Any]) -> str:
    """The previous revision's single-process run (a revision with workers also runs at the widest count)."""
    for s in results["scenarios"]:
        if s["target"].startswith("previous ") and " w" not in s["target"]:
            return str(s["target"])
    raise KeyError("previous")


def _worker_counts(results: dict[str, Any]) -> list[int]:
    """The worker counts S7 ran with one inference process (targets "w1", "w2", ...)."""
    return [int(x["target"][1:]) for x in results["scenarios"] if x.get("scaling") and x["target"][1:].isdigit()]


def _widest(results: dict[str, Any]) -> int | None:
    """The most workers S7 ran, when that is 16 or more (the wide-host targets); else None."""
    counts = _worker_counts(results)
    return max(counts) if counts and max(counts) >= 16 else None


TWO_INFERENCE = " 2 inference"


def two_inference(workers: int) -> str:
    """The S7 run at ``workers`` front ends with two inference processes (`SERVE_INFERENCE_PROCESSES=2`)."""
    return f"w{workers}{TWO_INFERENCE}"


def _best_s4_wide(results: dict[str, Any]) -> float:
    """S4 with 64 requests in flight, at the worker count (and inference processes) that did best; CUDA runs only."""
    found = [
        x["images_per_s"]
        for x in results["scenarios"]
        if x.get("scaling")
        and x["name"].startswith("S4")
        and x["concurrency"] == 64
        and x["target"].removesuffix(TWO_INFERENCE)[1:].isdigit()
    ]
    if results.get("provider_requested") != "cuda" or not found:
        raise KeyError("S4 c=64 on CUDA")
    return float(max(found))


def scaling_efficiency(results: dict[str, Any]) -> dict[str, float]:
    """Throughput of 2 workers on 2 cores over twice that of 1 worker pinned to 1 core, per scenario."""
    out = {}
    for name, c in SCALED:
        try:
            two = _find(results, name, "w2", c)["throughput_rps"]
            pinned = _find(results, name, "w1 on 1 core", c)["throughput_rps"]
        except KeyError:
            continue
        out[f"{name} c={c}"] = two / (2 * pinned)
    return out


def inference_processes_gain(results: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """At the widest worker count: throughput with two inference processes over that with one, per scenario."""
    widest = max(_worker_counts(results), default=0)
    out = {}
    for name, c in SCALED:
        try:
            two = _find(results, name, two_inference(widest), c)["throughput_rps"]
            one = _find(results, name, f"w{widest}", c)["throughput_rps"]
        except KeyError:
            continue
        out[f"{name} c={c}"] = two / one
    return widest, out


def mean_hop_ms(results: dict[str, Any]) -> float:
    """What the hop adds to the mean latency at c=1, where one request follows another: the
    difference of 1 s / throughput between 2 workers and 1. Finer than the p50s, which hey
    records in steps of 0.1 ms."""
    two = _find(results, "S1 png raw", "w2", 1)["throughput_rps"]
    one = _find(results, "S1 png raw", "w1", 1)["throughput_rps"]
    return float(1000 / two - 1000 / one)


MEDIAN_OF_ROUNDS = (
    "throughput_rps",
    "images_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "ok_p99_ms",
    "server_cpu_cores",
    "inference_loop_cpu_us_per_request",
    "frontend_cpu_max_over_mean",
)


def _find(results: dict[str, Any], name: str, target: str, concurrency: int | None = None) -> dict[str, Any]:
    """The measurement of ``name`` on ``target``; measured in several rounds (S7 --rounds), the
    median of each figure over them."""
    found = [
        s
        for s in results["scenarios"]
        if s["name"] == name and s["target"] == target and (concurrency is None or s["concurrency"] == concurrency)
    ]
    if not found:
        raise KeyError((name, target, concurrency))
    if len(found) == 1:
        return dict(found[0])
    merged = dict(found[0])
    for key in MEDIAN_OF_ROUNDS:
        if all(key in s for s in found):  # the per-role CPU figures exist only with several workers
            merged[key] = float(np.median([s[key] for s in found]))
    merged["rounds"] = len(found)
    return merged


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target whose measurements this run holds (a run with --only leaves some out)."""
    ceiling = results["baselines"]["ort_ceiling"]["images_per_s"]
    batcher = results["baselines"]["batcher_in_process"]

    def s(name: str, target: str = "server", concurrency: int | None = None) -> dict[str, Any]:
        return _find(results, name, target, concurrency)

    wide = _widest(results)

    def s5_only_200_503() -> int:
        return 0 if set(s("S5 overload png raw")["statuses"]) <= {"200", "503"} else 1

    # (name, how to compute it, goal, higher is better, unit)
    table: list[tuple[str, Callable[[], float], float, bool, str]] = [
        (
            "S1 c=32 throughput / naive",
            lambda: s("S1 png raw", concurrency=32)["throughput_rps"] / s("S1 png raw", "naive", 32)["throughput_rps"],
            1.5,
            True,
            X,
        ),
        (
            "S1 c=32 p99 / naive p99",
            lambda: s("S1 png raw", concurrency=32)["p99_ms"] / s("S1 png raw", "naive", 32)["p99_ms"],
            1.0,
            False,
            X,
        ),
        (
            "S2 throughput / naive",
            lambda: s("S2 photo jpeg")["throughput_rps"] / s("S2 photo jpeg", "naive")["throughput_rps"],
            1.8,
            True,
            X,
        ),
        ("S3 images/s / ORT ceiling", lambda: s("S3 16 png multipart")["images_per_s"] / ceiling, 0.5, True, X),
        ("S4 images/s / ORT ceiling", lambda: s("S4 v2 binary uint8 x8")["images_per_s"] / ceiling, 0.7, True, X),
        (
            "in-process batcher / ORT same batch",
            lambda: batcher["images_per_s"] / batcher["ort_same_batch_images_per_s"],
            0.9,
            True,
            X,
        ),
        ("S5 connection errors + timeouts", lambda: s("S5 overload png raw")["errors"], 0, False, ""),
        ("S5 answers other than 200/503", s5_only_200_503, 0, False, ""),
        (
            "S5 accepted p99 / S1 c=32 p99",
            lambda: s("S5 overload png raw")["ok_p99_ms"] / s("S1 png raw", concurrency=32)["p99_ms"],
            3.0,
            False,
            X,
        ),
        (
            "S6 success rate beside 100 slow clients",
            lambda: (
                s("S6 beside slow clients", "slow")["statuses"].get("200", 0)
                / s("S6 beside slow clients", "slow")["requests"]
            ),
            0.99,
            True,
            "",
        ),
        (
            "S6 p99 beside slow clients / p99 alone",
            lambda: s("S6 beside slow clients", "slow")["p99_ms"] / s("S6 beside slow clients", "alone")["p99_ms"],
            2.0,
            False,
            X,
        ),
        (
            "S1 c=1 throughput / naive",
            lambda: s("S1 png raw", concurrency=1)["throughput_rps"] / s("S1 png raw", "naive", 1)["throughput_rps"],
            1.0,
            True,
            X,
        ),
        *(
            (
                f"S7 {name} c={c}: 2 workers / 1",
                (lambda name=name, c=c: s(name, "w2", c)["throughput_rps"] / s(name, "w1", c)["throughput_rps"]),
                1.15 if name.startswith("S2") else 1.0,
                True,
                X,
            )
            for name, c in SCALED
        ),
        (
            "S7 hop: p50 at c=1, 2 workers - 1 (ms)",
            lambda: s("S1 png raw", "w2", 1)["p50_ms"] - s("S1 png raw", "w1", 1)["p50_ms"],
            0.3,
            False,
            "ms",
        ),
        *(
            (
                f"S7 {name} c={c}: 1 worker / previous server",
                (
                    lambda name=name, c=c: (
                        s(name, "w1", c)["throughput_rps"] / s(name, _previous(results), c)["throughput_rps"]
                    )
                ),
                0.9,
                True,
                X,
            )
            for name, c in SCALED
        ),
        # A wide host (16 cores and more): the most workers against one, and S4 with 64 in flight.
        *(
            (
                f"S7 {name} c={c}: {wide} workers / 1",
                (lambda name=name, c=c: s(name, f"w{wide}", c)["throughput_rps"] / s(name, "w1", c)["throughput_rps"]),
                goal,
                True,
                X,
            )
            for name, c, goal in (("S1 png raw", 32, 8.0), ("S2 photo jpeg", 32, 10.0))
            if wide
        ),
        (
            "S7 S4 c=64: images/s, the best worker count (CUDA)",
            lambda: _best_s4_wide(results),
            100_000,
            True,
            "",
        ),
        ("start to ready (s)", lambda: results["server"]["start_to_ready_s"], 3.0, False, "s"),
        ("RSS after run (MB)", lambda: results["server"]["rss_mb_after_run"], 300, False, "MB"),
    ]
    rows = []
    for name, compute, goal, higher, unit in table:
        try:
            value = compute()
        except KeyError:  # a scenario this run did not measure
            continue
        rows.append(
            {
                "target": name,
                "value": round(value, 3),
                "goal": goal,
                "higher_is_better": higher,
                "unit": unit,
                "met": bool(value >= goal if higher else value <= goal),
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    b = results["baselines"]
    lines = [
        f"Machine: {m['cores']} cores, {m['cpu_model']}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f", provider {m.get('provider', '?')}, "
        f"ONNX Runtime {m['onnxruntime']}, load from `{m['load_tool']}`; "
        f"mode {results['mode']}, {results['date'][:19]}Z",
        "",
        f"- ORT ceiling (in-process): **{b['ort_ceiling']['images_per_s']:.0f} images/s** at batch "
        f"{b['ort_ceiling']['best_batch']}"
        f" (batch 1: {b['ort_ceiling']['images_per_s_by_batch'][1]:.0f}, batch 32: "
        f"{b['ort_ceiling']['images_per_s_by_batch'][32]:.0f})",
        f"- In-process batcher, 64 submitters of one image: **{b['batcher_in_process']['images_per_s']:.0f} "
        f"images/s**, mean batch {b['batcher_in_process']['mean_batch_size']:.1f}, against "
        f"{b['batcher_in_process']['ort_same_batch_images_per_s']:.0f} images/s for the same session alone at "
        "that batch size, measured just before it",
        f"- HTTP ceiling (trivial endpoint, c=32): **{b['http_ceiling']['throughput_rps']:.0f} requests/s**",
        f"- Server start to ready: {results['server']['start_to_ready_s']:.2f} s; RSS after the run: "
        f"{results['server']['rss_mb_after_run']:.0f} MB",
    ]
    try:
        s5 = _find(results, "S5 overload png raw", "server")
        lines.append(
            f"- S5 overload: accepted p99 {s5['ok_p99_ms']:.0f} ms over the whole run, "
            f"{s5['ok_steady_p99_ms']:.0f} ms after its first second (the first second holds the client "
            "opening 512 connections at once)"
        )
    except KeyError:
        pass
    try:
        floor_c32 = _find(results, "S1 png raw", "floor", 32)["p99_ms"]
        floor_s5 = _find(results, "S5 overload png raw", "floor")["ok_p99_ms"]
        line = (
            f"- S5 floor (a bare endpoint behind the server's admission gate, same uvicorn, same load; it answers "
            f"at once, so it seldom refuses): accepted p99 {floor_s5:.0f} ms at c=512 against {floor_c32:.1f} ms "
            f"at c=32 ({floor_s5 / floor_c32:.0f}{X})"
        )
        s5_p99 = _find(results, "S5 overload png raw", "server")["ok_p99_ms"]
        lines.append(line + f"; the server's accepted p99 is {s5_p99 / floor_s5:.1f}{X} the floor's")
    except KeyError:
        pass
    try:
        slow = _find(results, "S6 beside slow clients", "slow")
        cut = slow["slow_clients"]
        lines.append(
            f"- S6: {cut['clients']} clients trickling request bodies (one byte every 0.5 s) beside 8 normal "
            f"ones; the server cut {cut['cut_off']} trickling connections off during the run "
            f"(answers: {', '.join(f'{k} x{v}' for k, v in sorted(cut['statuses'].items())) or 'none'})"
        )
    except KeyError:
        pass
    efficiency = scaling_efficiency(results)
    if efficiency:
        lines.append(
            "- S7 scaling efficiency (2 workers on 2 cores / twice 1 worker pinned to 1 core; the load generator "
            "shares the cores): " + ", ".join(f"{name} {value:.2f}" for name, value in efficiency.items())
        )
    widest, gain = inference_processes_gain(results)
    if gain:
        lines.append(
            f"- S7 two inference processes at {widest} workers / one (SERVE_INFERENCE_PROCESSES=2; on CUDA both "
            "share the GPU): " + ", ".join(f"{name} {value:.2f}" for name, value in gain.items())
        )
    with contextlib.suppress(KeyError):
        lines.append(
            f"- S7 hop from the mean latency at c=1 (1 s / requests per second, 2 workers - 1; the p50 target "
            f"moves in hey's steps of 0.1 ms): {mean_hop_ms(results):.2f} ms"
        )
    lines += [
        "",
        "| scenario | target | c | req/s | images/s | p50 ms | p90 ms | p99 ms | errors | non-200 | mean batch "
        "| server CPU (cores) | inference loop CPU per request (µs) | busiest front end's CPU / mean |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in results["scenarios"]:
        batch = f"{s['mean_batch_size']:.1f}" if s["mean_batch_size"] else "-"
        loop = s.get("inference_loop_cpu_us_per_request")
        per_request = f"{loop:.0f}" if loop is not None else "-"
        spread = f"{s['frontend_cpu_max_over_mean']:.2f}" if "frontend_cpu_max_over_mean" in s else "-"
        lines.append(
            f"| {s['name']} | {s['target']} | {s['concurrency']} | {s['throughput_rps']:.0f} | "
            f"{s['images_per_s']:.0f} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['p99_ms']:.1f} | {s['errors']} | "
            f"{s['non_200']} | {batch} | {s['server_cpu_cores']:.2f} | {per_request} | {spread} |"
        )
    lines += ["", "| target | measured | goal | met |", "| --- | ---: | ---: | :---: |"]
    for t in results["targets"]:
        sign = "≥" if t["higher_is_better"] else "≤"
        lines.append(
            f"| {t['target']} | {t['value']}{t['unit']} | {sign} {t['goal']}{t['unit']} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(11, 4))
    series = [("S1 png raw", "server"), ("S1 png multipart", "server"), ("S1 png raw", "naive")]
    for name, target in series:
        points = sorted(
            (s["concurrency"], s) for s in results["scenarios"] if s["name"] == name and s["target"] == target
        )
        if not points:
            continue
        xs = [c for c, _ in points]
        label = f"{target}: {name.removeprefix('S1 png ')}"
        ax_tp.plot(xs, [s["throughput_rps"] for _, s in points], marker="o", label=label)
        line = ax_lat.plot(xs, [s["p50_ms"] for _, s in points], marker="o", label=f"{label} p50")[0]
        ax_lat.plot(
            xs,
            [s["p99_ms"] for _, s in points],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"{label} p99",
        )
    ceiling = results["baselines"]["ort_ceiling"]["images_per_s"]
    title = "S1: one 64x64 PNG per request"
    peak = max((s["throughput_rps"] for s in results["scenarios"] if s["name"].startswith("S1")), default=0.0)
    if ceiling <= 5 * peak:
        ax_tp.axhline(ceiling, color="gray", linestyle=":", label="ORT ceiling (images/s)")
    else:  # a GPU's ceiling would flatten every curve
        title += f"\n(ORT ceiling {ceiling:,.0f} images/s, off the scale)"
    ax_tp.set(xscale="log", xlabel="concurrency", ylabel="requests/s", title=title)
    ax_lat.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="latency (ms)", title="S1 latency")
    for ax in (ax_tp, ax_lat):
        ax.set_xticks([1, 8, 32, 64], ["1", "8", "32", "64"])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run without S1 (--only) has nothing to label
            ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"{m['cores']} cores, {m['cpu_model']}, {m.get('provider', '')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scaling(results: dict[str, Any], path: Path) -> bool:
    """Throughput against workers for S1-S4 (S7); False when the run has no scaling results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for name, c in SCALED:
        workers = sorted(
            {
                int(s["target"][1:])
                for s in results["scenarios"]
                if s.get("scaling") and s["name"] == name and s["concurrency"] == c and s["target"][1:].isdigit()
            }
        )
        points = [(w, _find(results, name, f"w{w}", c)["images_per_s"]) for w in workers]
        if not points:
            continue
        drawn = True
        ax.plot([w for w, _ in points], [v for _, v in points], marker="o", label=f"{name} c={c}")
    if not drawn:
        plt.close(fig)
        return False
    ax.set(xlabel="workers (front-end processes)", ylabel="images/s", title="S7: throughput against workers")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"{m['cores']} cores, {m['cpu_model']}, {m.get('provider', '')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{results['date'][:10]}-{results['machine']['host']}"
    if results.get("provider_requested", "cpu") != "cpu":
        stem += f"-{results['provider_requested']}"
    if results["mode"] == "smoke":
        stem += "-smoke"
    json_path = out / f"{stem}.json"
    md_path = out / f"{stem}.md"
    png_path = out / f"{stem}.png"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown(results))
    plot(results, png_path)
    paths = [json_path, md_path, png_path]
    scaling_path = out / f"{stem}-scaling.png"
    if plot_scaling(results, scaling_path):
        paths.append(scaling_path)
    return paths
