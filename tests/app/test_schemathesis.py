"""Schemathesis over the served OpenAPI document, against a real server process: generated valid
and invalid requests for every operation, admin routes included (with a token).

Checked: no 5xx, every status code and content type documented, every response matching its
schema, headers too. Left out: `positive_data_acceptance`, which expects every schema-valid
request to succeed; a multipart part can be schema-valid and still not be an image, and no schema
can say so. The seed is fixed so a run is reproducible; raise `EXAMPLES` to search harder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _sqlite_backend
from tests.onnx_models import color_classifier, color_metadata
from tests.server import Server, server_process

TOKEN = "schemathesis-admin-token-0123456789"
EXAMPLES = 80
SEED = 20261129


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    backend = _sqlite_backend(tmp_path)
    with backend.registry() as reg:
        for gain in (10.0, 5.0):
            path = color_classifier(tmp_path / f"m{gain}.onnx", gain=gain)
            reg.register(name="colors", onnx_path=path, metadata=color_metadata())
        reg.promote(name="colors", version=1)
        reg.promote(name="colors", version=2, alias="staging")
    env = {**backend.env, "SERVE_ADMIN_TOKENS": f"ops:{TOKEN}", "SERVE_WARMUP_BATCH_SIZES": "[1]"}
    with server_process(env) as running:
        yield running


def test_the_served_openapi_holds_under_generated_requests(server: Server, tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{server.url}/openapi.json",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--exclude-checks",
            "positive_data_acceptance",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=tmp_path,  # it keeps a cache directory where it runs
    )
    summary = proc.stdout[proc.stdout.find("SUMMARY") :]
    print(summary[-1500:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Traceback" not in server.log_text()
