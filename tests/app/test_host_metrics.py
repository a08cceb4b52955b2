"""A multi-worker host's /metrics, read from every process's metric file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from app.metrics import Metrics, StateCollector

# A process of the host: counts into the directory under its slot's name, as `app.host` sets up.
COUNTING_PROCESS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from app.metrics import Metrics, count_in_files

    count_in_files(Path(sys.argv[1]), "frontend-0")
    metrics = Metrics()
    metrics.requests.labels("POST", "/v1/models/{name}:predict", "200").inc(7)
    """
)


def _count_seven_requests(directory: Path) -> None:
    subprocess.run([sys.executable, "-c", COUNTING_PROCESS, str(directory)], check=True, timeout=60)


def test_a_metric_file_caught_between_creation_and_sizing_neither_stops_a_front_end_nor_fails_a_scrape(
    tmp_path: Path,
) -> None:
    # Another process of the host has just opened its file and not sized it yet: it is empty. A
    # front end starting at that moment failed to start (and stopped the whole host), and a scrape
    # then answered 500.
    _count_seven_requests(tmp_path)
    (tmp_path / "histogram_inference-1.db").touch()
    metrics = Metrics()
    metrics.use_multiprocess(tmp_path, StateCollector(list))
    text = metrics.render().decode()
    assert 'http_requests_total{method="POST",route="/v1/models/{name}:predict",status="200"} 7.0' in text


def test_a_scrape_counts_a_file_once_its_process_has_sized_and_written_it(tmp_path: Path) -> None:
    (tmp_path / "counter_frontend-0.db").touch()  # made, not yet sized
    metrics = Metrics()
    metrics.use_multiprocess(tmp_path, StateCollector(list))
    assert "http_requests_total{" not in metrics.render().decode()
    _count_seven_requests(tmp_path)  # the same file, now sized and counted into
    text = metrics.render().decode()
    assert 'http_requests_total{method="POST",route="/v1/models/{name}:predict",status="200"} 7.0' in text
