"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

With several workers (`python -m app --workers N`) every process of the host counts into files
of one directory (prometheus_client's multiprocess mode) and a front end's /metrics adds them up:
counters and histograms summed over the processes, batch, queue and inference metrics from the
inference processes. Each process writes under its slot's name (`frontend-3`, `inference-0`),
not its pid, so a restarted process continues its slot's counters and the files do not multiply.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.batcher import BatchStats
from app.protocol import HEAD_LIMIT, MAX_PIPELINED

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MAX_MODEL_LABELS = 64


def _model_in_path(scope: Scope) -> str:
    """The model of an inference request answered before routing (shed, refused by the body limit)."""
    path, root = scope["path"], scope.get("root_path", "")
    parts = path.removeprefix(root).split("/") if root and path.startswith(root) else path.split("/")
    return parts[3] if len(parts) > 3 and parts[2] == "models" else "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        # Per served model, for the console and per-model alerts: its inference routes only.
        self.model_requests = Counter(
            "model_requests", "Inference requests by model and status class", ["model", "code"], registry=r
        )
        self.model_latency = Histogram(
            "model_request_duration_seconds",
            "Inference request latency by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "batch_queue_wait_seconds",
            "Time a request waits before its batch runs: in the batch queue, then for an inference thread",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "batch_inference_seconds", "ONNX Runtime time per batch", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("batch_size_rows", "Rows per batch", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_sources = Histogram(
            "batch_front_ends",
            "Front-end processes whose rows share a batch (1 with one worker)",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.batch_failures = Counter("batch_failures", "Batches that failed", ["model"], registry=r)
        self.images = Counter("images_predicted", "Images classified", ["model"], registry=r)
        self.rejected = Counter(
            "requests_rejected_overload", "Requests refused with 503: queue full", ["model"], registry=r
        )
        self.load_failures = Counter(
            "model_load_failures", "Versions that failed to load", ["model", "version"], registry=r
        )
        self.swaps = Counter("model_swaps", "Times a served model switched version", ["model"], registry=r)
        self.poll_errors = Counter("registry_poll_errors", "Registry polls that failed", registry=r)
        self.shed = Counter(
            "requests_shed_overload", "Inference requests refused with 503 unread: too many in flight", registry=r
        )
        self.closed_early = Counter(
            "http_connections_closed_early",
            "Connections the HTTP layer closed on its own: a request it could not parse (malformed, 400), headers "
            f"not in time (header_timeout, 408), a request line and headers over {HEAD_LIMIT} (head_too_large, 414 "
            f"or 431), more than {MAX_PIPELINED} pipelined requests waiting (pipeline_full), answers the client did "
            "not read in time (send_timeout)",
            ["reason"],
            registry=r,
        )
        self.dropped = Counter(
            "batch_rows_dropped",
            "Rows taken out of a batch queue unrun: their clients hung up while they waited",
            ["model"],
            registry=r,
        )
        self._render_registry: CollectorRegistry = self.registry

    def batch_hook(self, model: str) -> Callable[[BatchStats], None]:
        queue_wait = self.queue_wait.labels(model)
        inference = self.inference.labels(model)
        batch_size = self.batch_size.labels(model)
        sources = self.batch_sources.labels(model)
        failures = self.batch_failures.labels(model)
        images = self.images.labels(model)

        def observe(stats: BatchStats) -> None:
            for wait in stats.queue_waits:
                queue_wait.observe(wait)
            inference.observe(stats.inference_seconds)
            batch_size.observe(stats.rows)
            sources.observe(stats.sources)
            if stats.failed:
                failures.inc()
            else:  # once a batch, not once an answer: the inference loop's per-request work is the host's limit
                images.inc(stats.rows)

        return observe

    def closed_by_protocol(self, reason: str) -> None:
        """A connection the HTTP protocol closed on its own (`app.protocol`), unseen by the app."""
        self.closed_early.labels(reason).inc()

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def use_multiprocess(self, directory: Path, collector: Collector) -> None:
        """Render the host's metrics: every process's files in ``directory``, plus ``collector``."""
        render = CollectorRegistry(auto_describe=True)
        render.register(HostFilesCollector(directory))
        render.register(collector)
        self._render_registry = render

    def render(self) -> bytes:
        return generate_latest(self._render_registry)


def count_in_files(directory: Path, identity: str) -> None:
    """From now on, metrics made in this process count into ``directory`` under ``identity``.
    Call it before the first `Metrics` is made."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue(lambda: identity)  # type: ignore[no-untyped-call]


class HostFilesCollector(Collector):
    """The host's metrics from every process's file in ``directory``, added up.

    prometheus_client's own `MultiProcessCollector` fails the whole scrape on a file another
    process has just created and not yet sized (it exists at 0 bytes for a moment: MmapedDict
    opens, then truncates), and it reads every file once when it is registered. A front end that
    started while another process made its file failed to start, and stopped the host with it
    (prometheus/client_python#1199). Here a file with no header yet counts as one with nothing in
    it, and nothing is read before the first scrape."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def describe(self) -> Iterable[Metric]:
        return ()  # no names to claim, and no reading at registration

    def collect(self) -> Iterable[Metric]:
        files = [str(path) for path in self._directory.glob("*.db") if _sized(path)]
        return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call,no-any-return]


def _sized(path: Path) -> bool:
    """Past the moment between its creation and its sizing (a file only grows from then on)."""
    try:
        return path.stat().st_size >= 8  # the header: bytes used, and padding
    except FileNotFoundError:
        return False


class StateCollector(Collector):
    """Gauges read at scrape time: loaded versions and their queues (from the host's view), requests
    in flight, and the artifact cache's reads."""

    def __init__(
        self,
        loaded: Callable[[], list[Any]],
        inflight: Callable[[], tuple[int, int]] | None = None,
        *,
        cache_counts: Callable[[], dict[str, int] | None] | None = None,
    ) -> None:
        """``loaded``: the loaded versions (`app.serving.ServedVersion`); ``cache_counts``: hits,
        misses and corrupt reads of the artifact cache, None without one."""
        self._loaded = loaded
        self._inflight = inflight
        self._cache_counts = cache_counts

    def collect(self) -> Iterable[Metric]:
        loaded = GaugeMetricFamily(
            "model_loaded_version",
            "Loaded versions (1 each), with their role and execution provider",
            labels=["model", "version", "role", "provider"],
        )
        queue = GaugeMetricFamily(
            "batch_queue_rows", "Rows waiting in each version's queue", labels=["model", "version"]
        )
        for entry in self._loaded():
            version = str(entry.version)
            loaded.add_metric([entry.name, version, entry.role, entry.provider], 1)
            queue.add_metric([entry.name, version], entry.queued_rows)
        yield loaded
        yield queue
        counts = self._cache_counts() if self._cache_counts is not None else None
        if counts is not None:
            reads = CounterMetricFamily(
                "artifact_cache_reads",
                "Artifact reads by the local cache's answer: hit, miss (read from the store), corrupt (a cache "
                "file failed its sha256 check and was fetched anew)",
                labels=["result"],
            )
            for result in ("hit", "miss", "corrupt"):
                reads.add_metric([result], counts[result])
            yield reads
        if self._inflight is not None:
            admitted, receiving = self._inflight()
            yield GaugeMetricFamily(
                "http_inference_requests_in_flight",
                "Inference requests whose bodies have arrived, not yet answered (they hold admission slots)",
                value=admitted,
            )
            yield GaugeMetricFamily(
                "http_inference_requests_receiving",
                "Inference requests whose bodies are still arriving (they hold no admission slot)",
                value=receiving,
            )


class HttpMetricsMiddleware:
    """Counts requests and times them by route template (not raw path, to bound label cardinality)."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, routes: Sequence[Any] = (), model_routes: Collection[str] = ()
    ) -> None:
        """``routes``: the app's routes, to name the route of a request answered before routing.
        ``model_routes``: the templates (with a ``{name}``) whose requests are also counted per model."""
        self.app = app
        self.metrics = metrics
        self._routes = list(routes)
        self._model_routes = frozenset(model_routes)
        # Label children by their label values: `labels()` costs several µs a call (argument checks,
        # a lock), paid twice per request; this set is no bigger than the one the metrics hold.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[str, Any] = {}
        self._templates: dict[tuple[str, str], str] = {}  # (method, path) of unrouted answers -> template
        self._models: dict[tuple[str, int], tuple[Any, Any]] = {}  # (model, status class) -> label children
        self._names: set[str] = set()  # the model labels in use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or self._template_of(scope)
            key = (scope["method"], template, status)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self.metrics.requests.labels(key[0], template, str(status))
            timer = self._timers.get(template)
            if timer is None:
                timer = self._timers[template] = self.metrics.latency.labels(template)
            elapsed = time.perf_counter() - started
            counter.inc()
            timer.observe(elapsed)
            if template in self._model_routes and status != 404:
                self._count_model(scope, status, elapsed)

    def _count_model(self, scope: Scope, status: int, elapsed: float) -> None:
        name = (scope.get("path_params") or {}).get("name") or _model_in_path(scope)
        if name not in self._names:
            if len(self._names) >= MAX_MODEL_LABELS:
                name = "other"  # names come from clients: keep the labels bounded
            self._names.add(name)
        key = (name, status // 100)
        children = self._models.get(key)
        if children is None:
            children = self._models[key] = (
                self.metrics.model_requests.labels(name, f"{status // 100}xx"),
                self.metrics.model_latency.labels(name),
            )
        children[0].inc()
        children[1].observe(elapsed)

    def _template_of(self, scope: Scope) -> str:
        """The route template of a request answered before routing (shed by admission, refused by the
        body limit), so it is counted under its route; "unmatched" when no route takes the path."""
        key = (scope["method"], scope["path"])
        template = self._templates.get(key)
        if template is None:
            template = next(
                (str(route.path) for route in self._routes if route.matches(scope)[0] == Match.FULL), "unmatched"
            )
            if len(self._templates) >= 4096:  # paths carry model names: keep the memo bounded
                self._templates.clear()
            self._templates[key] = template
        return template
