"""Measurements without HTTP: ONNX Runtime alone, and the dynamic batcher in front of it."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort

from app.backend import OrtBackend
from app.batcher import Batcher
from app.settings import Settings
from app.versions import joins_while_running
from registry import ModelContract


def make_session(model: bytes, providers: list[str], *, spinning: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:  # as the server configures its sessions
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=options, providers=providers)


def ort_throughput(run: Callable[[np.ndarray], object], images: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second calling ``run`` on batches of ``batch`` back to back for about ``seconds``."""
    x = np.ascontiguousarray(images[np.arange(batch) % len(images)])
    run(x)  # warm
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done == 0:
        run(x)
        done += batch
    return done / elapsed


def _run_session(session: ort.InferenceSession, input_name: str, x: np.ndarray) -> object:
    return session.run(None, {input_name: x})


def ort_ceiling(
    model: bytes,
    input_name: str,
    images: np.ndarray,
    batches: list[int],
    seconds: float,
    providers: list[str],
    rounds: int = 5,
) -> dict[str, Any]:
    """The best of ORT's default options and the server's (no spin-waiting), per batch size.

    Each (options, batch size) pair runs for ``seconds`` in all, as ``rounds`` slices taken in turn
    with every other pair's, and keeps the median slice: on a shared host one slice can run 40%
    faster or slower than the next, and the best of a dozen single readings would report the
    luckiest window rather than ONNX Runtime."""
    sessions = {
        "default": make_session(model, providers),
        "server_options": make_session(model, providers, spinning=False),
    }
    slices: dict[str, dict[int, list[float]]] = {config: {b: [] for b in batches} for config in sessions}
    for _ in range(rounds):
        for config, session in sessions.items():
            run = functools.partial(_run_session, session, input_name)
            for b in batches:
                slices[config][b].append(ort_throughput(run, images, b, seconds / rounds))
    by_config = {config: {b: float(np.median(v)) for b, v in per_batch.items()} for config, per_batch in slices.items()}
    by_batch = {b: max(by_config["default"][b], by_config["server_options"][b]) for b in batches}
    best = max(by_batch, key=lambda b: by_batch[b])
    return {
        "images_per_s_by_batch": by_batch,
        "by_config": by_config,
        "slices": slices,
        "best_batch": best,
        "images_per_s": by_batch[best],
    }


def batcher_throughput(
    model: bytes,
    contract: ModelContract,
    images: np.ndarray,
    *,
    submitters: int,
    total: int,
    max_batch_size: int,
    max_batch_delay_ms: float,
    providers: list[str],
    reference_seconds: float,
) -> dict[str, Any]:
    """`submitters` concurrent callers of one image each, through the server's Batcher and backend.

    Before each trial, the same backend runs ready-made batches of ``max_batch_size`` back to back
    for ``reference_seconds``: ONNX Runtime alone with the same session, options and batch size,
    measured next to the trial it is compared with. On a shared host the speed of the machine
    drifts by a fifth within a minute, which a reference taken once, minutes apart, folds into the
    ratio."""
    settings = Settings()  # the server's, SERVE_* variables included
    batching = settings.batching
    backend = OrtBackend(  # as the server builds it
        model,
        contract,
        providers=providers,
        intra_op_threads=settings.intra_op_threads,
        pad_to=max_batch_size,
        pad=batching.pad,
    )
    run = backend.run

    async def drive() -> tuple[float, list[int]]:
        sizes: list[int] = []
        with ThreadPoolExecutor(batching.inference_threads) as pool:
            batcher = Batcher(
                run,
                max_batch_size=max_batch_size,
                max_batch_delay_s=max_batch_delay_ms / 1000,
                max_queue_rows=10 * submitters,
                executor=pool,
                on_batch=lambda s: sizes.append(s.rows),
                max_concurrent_batches=batching.max_concurrent_batches,
                join_while_running=joins_while_running(backend),  # as the server's
            )
            batcher.start()
            remaining = 0
            singles = [images[i % len(images)][np.newaxis] for i in range(64)]

            async def submitter(k: int) -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await batcher.submit(singles[k % len(singles)])

            remaining = max(submitters, total // 5)
            await asyncio.gather(*(submitter(k) for k in range(submitters)))  # warm-up round
            remaining = total
            sizes.clear()
            started = time.perf_counter()
            await asyncio.gather(*(submitter(k) for k in range(submitters)))
            elapsed = time.perf_counter() - started
            await batcher.close()
        return elapsed, sizes

    # Three trials, each with its own reference; the trial with the median ratio is reported.
    references: list[float] = []
    trials: list[tuple[float, list[int]]] = []
    for _ in range(3):
        references.append(ort_throughput(run, images, max_batch_size, reference_seconds))
        trials.append(asyncio.run(drive()))
    rates = [total / elapsed for elapsed, _ in trials]
    ratios = [rate / ref for rate, ref in zip(rates, references, strict=True)]
    median = sorted(range(3), key=lambda i: ratios[i])[1]
    sizes = trials[median][1]
    return {
        "submitters": submitters,
        "images": total,
        "images_per_s": rates[median],
        "ort_same_batch_images_per_s": references[median],
        "trials_images_per_s": rates,
        "trials_ort_same_batch_images_per_s": references,
        "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0,
    }
