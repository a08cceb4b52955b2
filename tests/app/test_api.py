"""The HTTP API in-process (httpx + ASGI lifespan), against real ONNX models in a real registry."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from app.main import create_app
from core.imaging import decode_image
from registry import VersionInfo
from tests.app.conftest import running, settings_for
from tests.conftest import Backend, TrainedRun
from tests.images import noise_png, photo, solid


def files(*images: bytes, field: str = "images") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]


async def test_predict_multipart(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/colors/predict", files=files(solid("red")))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "colors"
    assert body["version"] == 1
    (pred,) = body["predictions"]
    assert pred["label"] == "red"
    assert pred["score"] > 0.9
    assert pred["top_k"][0]["label"] == "red"
    assert len(pred["top_k"]) == 3
    assert sum(t["score"] for t in pred["top_k"]) == pytest.approx(1.0, abs=1e-5)


async def test_several_images_keep_their_order(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/models/colors/predict?top_k=1", files=files(solid("blue"), solid("red", fmt="JPEG"), solid("green"))
    )
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == ["blue", "red", "green"]
    assert all(len(p["top_k"]) == 1 for p in r.json()["predictions"])


async def test_original_field_name_and_raw_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/colors/predict", files=files(solid("green"), field="image"))
    assert r.json()["predictions"][0]["label"] == "green"
    r = await client.post("/v1/models/colors/predict", content=solid("blue"), headers={"content-type": "image/png"})
    assert r.status_code == 200
    assert r.json()["predictions"][0]["label"] == "blue"


async def test_original_endpoint(client: httpx.AsyncClient) -> None:
    r = await client.post("/predict", files=files(solid("red"), field="image"))
    assert r.status_code == 200, r.text
    assert r.json() == {"prediction": "red", "score": pytest.approx(r.json()["score"]), "model": "colors", "version": 1}
    r = await client.post("/predict", files=files(solid("red"), field="images"))
    assert r.status_code == 400
    assert "field 'image'" in r.json()["error"]


async def test_sigmoid_model_scores_both_labels(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/pets/predict", files=files(solid("green"), solid("red")))
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == ["green", "red"]
    for p in preds:
        assert sum(t["score"] for t in p["top_k"]) == pytest.approx(1.0, abs=1e-6)


async def test_pinned_version_and_alias(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/colors/predict?version=2", files=files(solid("red")))
    assert (r.json()["version"], r.json()["predictions"][0]["label"]) == (2, "green")
    r = await client.post("/v1/models/colors/predict?alias=staging", files=files(solid("red")))
    assert (r.json()["version"], r.json()["predictions"][0]["label"]) == (2, "green")
    r = await client.post("/v1/models/colors/predict?alias=production", files=files(solid("red")))
    assert r.json()["version"] == 1
    models = (await client.get("/v1/models/colors")).json()
    assert sorted((v["version"], v["role"]) for v in models["loaded"]) == [(1, "current"), (2, "pinned")]


async def test_concurrent_first_requests_for_a_version_load_it_once(client: httpx.AsyncClient) -> None:
    rs = await asyncio.gather(
        *(client.post("/v1/models/colors/predict?version=2", files=files(solid("red"))) for _ in range(8))
    )
    assert {r.status_code for r in rs} == {200}
    loaded = (await client.get("/v1/models/colors")).json()["loaded"]
    assert [v["version"] for v in loaded if v["role"] == "pinned"] == [2]


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/v1/models/nosuch/predict", 404, "model 'nosuch' is not served"),
        ("/v1/models/colors/predict?version=99", 404, "has no version 99"),
        ("/v1/models/colors/predict?alias=canary", 404, "has no alias 'canary'"),
        ("/v1/models/colors/predict?alias=Bad!", 400, "alias"),
        ("/v1/models/colors/predict?version=1&alias=staging", 400, "not both"),
        ("/v1/models/colors/predict?top_k=0", 400, "top_k"),
        ("/v1/models/colors/predict?version=abc", 400, "version"),
    ],
)
async def test_addressing_errors(client: httpx.AsyncClient, url: str, status: int, message: str) -> None:
    r = await client.post(url, files=files(solid("red")))
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert set(r.json()) == {"error", "detail"}


BAD_INPUTS = [
    ("empty raw body", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty image"),
    ("text as png", {"content": b"hello", "headers": {"content-type": "image/png"}}, 400, "not a recognised image"),
    (
        "truncated png",
        {"content": solid("red", (64, 64))[:80], "headers": {"content-type": "image/png"}},
        400,
        "truncated or corrupt",
    ),
    ("empty file", {"files": [("images", ("a.png", b"", "image/png"))]}, 400, "empty image"),
    (
        "second file bad",
        {"files": [("images", ("a.png", solid("red"), "image/png")), ("images", ("b.png", b"junk", "image/png"))]},
        400,
        "image 1: not a recognised",
    ),
    ("text field only", {"data": {"images": "not a file"}}, 400, "got a text field"),
    ("no file", {"data": {"other": "x"}}, 400, "no image file in the form"),
    ("plain text", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
    ("json", {"json": {"image": "x"}}, 415, "unsupported content type"),
    ("no content type", {"content": b""}, 400, "no image"),
    (
        "too many images",
        {"files": [("images", (f"{i}.png", solid("red"), "image/png")) for i in range(65)]},
        413,
        "the limit is 64",
    ),
    (
        "broken multipart",
        {"content": b"--zzz\r\nbad", "headers": {"content-type": "multipart/form-data; boundary=zzz"}},
        400,
        "",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_corpus(client: httpx.AsyncClient, case: str, kwargs: dict, status: int, message: str) -> None:
    r = await client.post("/v1/models/colors/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]
    # The server is unharmed.
    assert (await client.get("/healthz")).status_code == 200
    ok = await client.post("/v1/models/colors/predict", files=files(solid("blue")))
    assert ok.json()["predictions"][0]["label"] == "blue"


async def test_size_limits(served_backend: Backend) -> None:
    settings = settings_for(served_backend, limits={"max_request_bytes": 4096, "max_image_pixels": 10_000})
    async with running(create_app(settings)) as client:
        r = await client.post(
            "/v1/models/colors/predict", content=noise_png((64, 64)), headers={"content-type": "image/png"}
        )
        assert r.status_code == 413
        assert "limit is 4096" in r.json()["error"]

        async def chunks():  # no Content-Length: counted while read
            for _ in range(10):
                yield b"\x00" * 1000

        r = await client.post("/v1/models/colors/predict", content=chunks(), headers={"content-type": "image/png"})
        assert r.status_code == 413
        r = await client.post(
            "/v1/models/colors/predict", content=solid("red", (200, 200)), headers={"content-type": "image/png"}
        )
        assert r.status_code == 413
        assert "pixels" in r.json()["error"]


async def test_real_photo(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/colors/predict", content=photo(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200
    assert r.json()["predictions"][0]["label"] in {"red", "green", "blue"}


async def test_models_health_and_metrics(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()
    assert [m["name"] for m in models] == ["colors", "pets"]
    colors = models[0]
    assert colors["serving_version"] == 1
    assert colors["aliases"] == {"production": 1, "staging": 2}
    # SERVE_PROVIDERS=auto: CUDA where onnxruntime-gpu sees a GPU, else the CPU.
    expected = (
        "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() else "CPUExecutionProvider"
    )
    assert colors["loaded"][0]["provider"] == expected
    assert colors["contract"]["labels"] == ["red", "green", "blue"]
    assert (await client.get("/v1/models/nosuch")).status_code == 404

    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"]["colors"] == {"version": 1, "provider": expected, "error": None}

    await client.post("/v1/models/colors/predict", files=files(solid("red"), solid("blue")))
    text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="POST",route="/v1/models/{name}/predict",status="200"} 1.0' in text
    assert 'images_predicted_total{model="colors"} 2.0' in text
    assert 'batch_size_rows_count{model="colors"}' in text
    assert f'model_loaded_version{{model="colors",provider="{expected}",role="current",version="1"}} 1.0' in text
    assert "batch_queue_wait_seconds_bucket" in text


async def test_inference_requests_are_counted_per_model(client: httpx.AsyncClient) -> None:
    """The console's live figures: requests by model and status class, and their latency."""
    png = {"content-type": "image/png"}
    await client.post("/v1/models/colors/predict", content=solid("red"), headers=png)
    await client.post("/v1/models/colors/predict", content=b"not an image", headers=png)
    await client.post("/v1/models/nosuch/predict", content=solid("red"), headers=png)  # 404: no series
    text = (await client.get("/metrics")).text
    assert 'model_requests_total{code="2xx",model="colors"} 1.0' in text
    assert 'model_requests_total{code="4xx",model="colors"} 1.0' in text
    assert 'model_request_duration_seconds_count{model="colors"} 2.0' in text
    assert 'model="nosuch"' not in text


async def test_unknown_route_is_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404
    assert r.json()["error"] == "no route GET /nope"


class SlowBackend:
    """Holds every batch until released; for overload and shutdown tests."""

    def __init__(self, gate: threading.Event, fail: bool = False, entered: threading.Event | None = None) -> None:
        self.gate = gate
        self.fail = fail
        self.entered = entered or threading.Event()

    @property
    def providers(self) -> list[str]:
        return ["FakeExecutionProvider"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > 1 or batch.any():  # warm-up batches of zeros pass straight through
            self.entered.set()
            self.gate.wait(10)
            if self.fail:
                raise RuntimeError("device on fire")
        out = np.zeros((len(batch), 3), dtype=np.float32)
        out[:, 0] = 1
        return out

    def close(self) -> None:
        pass


async def test_overload_answers_503_with_retry_after(served_backend: Backend) -> None:
    gate, entered = threading.Event(), threading.Event()
    settings = settings_for(
        served_backend, batching={"max_batch_size": 1, "max_queue_rows": 3, "max_concurrent_batches": 1}
    )
    app = create_app(settings, backend_factory=lambda data, info: SlowBackend(gate, entered=entered))
    async with running(app) as client:

        def post() -> asyncio.Future[httpx.Response]:
            return asyncio.ensure_future(client.post("/v1/models/colors/predict", files=files(solid("red"))))

        tasks = [post()]
        for _ in range(100):  # the first request is running (held in the backend) before the rest arrive
            if entered.is_set():
                break
            await asyncio.sleep(0.05)
        assert entered.is_set()
        tasks += [post() for _ in range(9)]
        deadline = time.monotonic() + 30
        while sum(t.done() for t in tasks) < 6:  # three queue behind the running one; six are refused at once
            assert time.monotonic() < deadline, "the refusals never came"
            await asyncio.sleep(0.01)
        gate.set()
        responses = await asyncio.gather(*tasks)
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 503}
        rejected = [r for r in responses if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"] for r in rejected)
        assert codes.count(200) == 4  # one running + three queued
        metrics = (await client.get("/metrics")).text
        assert f'requests_rejected_overload_total{{model="colors"}} {len(rejected)}.0' in metrics


async def test_failed_inference_is_a_500_without_traceback(served_backend: Backend) -> None:
    gate = threading.Event()
    gate.set()
    app = create_app(settings_for(served_backend), backend_factory=lambda data, info: SlowBackend(gate, fail=True))
    async with running(app) as client:
        r = await client.post("/v1/models/colors/predict", files=files(solid("red")))
        assert r.status_code == 500
        assert "inference failed" in r.json()["error"] and "device on fire" in r.json()["error"]
        assert "Traceback" not in r.text
        assert (await client.get("/healthz")).status_code == 200


async def test_trained_digits_model_matches_onnx_runtime(backend: Backend, digits_run: TrainedRun) -> None:
    with backend.registry() as reg:
        reg.register(
            name="digits",
            onnx_path=digits_run.onnx_path,
            metadata=digits_run.meta_path.read_text() and __import__("json").loads(digits_run.meta_path.read_text()),
        )
        reg.promote(name="digits", version=1)
        info: VersionInfo = reg.get_version("digits", 1)
    paths = sorted((digits_run.dataset_dir / "test_set").rglob("*.png"))[::36]
    session = ort.InferenceSession(str(digits_run.onnx_path), providers=["CPUExecutionProvider"])
    batch = np.stack([decode_image(p.read_bytes(), size=(64, 64)) for p in paths])
    expected = session.run(None, {info.contract.input.name: batch})[0].argmax(1)
    async with running(create_app(settings_for(backend))) as client:
        r = await client.post("/v1/models/digits/predict", files=files(*(p.read_bytes() for p in paths)))
        assert r.status_code == 200
        assert [p["label"] for p in r.json()["predictions"]] == [str(i) for i in expected]
        r = await client.post("/predict", files=files(paths[0].read_bytes(), field="image"))
        assert r.json()["prediction"] == str(expected[0])


def test_the_server_never_imports_tensorflow(served_backend: Backend) -> None:
    code = """
import asyncio, sys
from asgi_lifespan import LifespanManager
import httpx
from app.main import create_app
from app.settings import Settings
from tests.images import solid

async def main():
    app = create_app(Settings())
    async with LifespanManager(app) as m:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://t") as c:
            r = await c.post("/v1/models/colors/predict", files={"images": ("a.png", solid("red"), "image/png")})
            assert r.status_code == 200, r.text
    import app.__main__  # the CLI entry point too
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "training"))
    print(loaded)
    sys.exit(1 if loaded else 0)

asyncio.run(main())
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=served_backend.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_answers_without_loading_the_server() -> None:
    """`python -m app --help` parses its arguments before importing the server's libraries."""
    code = (
        "import sys\n"
        "from app.__main__ import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'onnxruntime', 'fastapi', 'uvicorn', 'sqlalchemy', 'numpy'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: imgserve" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


async def test_requests_past_the_inflight_bound_are_shed_unread(served_backend: Backend) -> None:
    gate = threading.Event()
    settings = settings_for(served_backend, limits={"max_inflight_requests": 2})
    app = create_app(settings, backend_factory=lambda data, info: SlowBackend(gate))
    async with running(app) as client:
        held = [
            asyncio.ensure_future(client.post("/v1/models/colors/predict", files=files(solid("red")))) for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while "http_inference_requests_in_flight 2.0" not in (await client.get("/metrics")).text:
            assert time.monotonic() < deadline, "the two held requests were never both admitted"
            await asyncio.sleep(0.01)
        r = await client.post("/v1/models/colors/predict", files=files(solid("red")))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json() == {"error": "server overloaded: 2 requests in flight, retry shortly", "detail": None}
        r = await client.post("/v2/models/colors/infer", json={"inputs": []})
        assert (r.status_code, list(r.json())) == (503, ["error"])
        assert (await client.get("/v1/models")).status_code == 200  # only inference routes are gated
        gate.set()
        assert [h.status_code for h in await asyncio.gather(*held)] == [200, 200]
        assert (await client.post("/v1/models/colors/predict", files=files(solid("red")))).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert "requests_shed_overload_total 2.0" in metrics
        # Shed before routing, yet counted under their routes, not as "unmatched".
        assert 'http_requests_total{method="POST",route="/v1/models/{name}/predict",status="503"} 1.0' in metrics
        assert 'http_requests_total{method="POST",route="/v2/models/{name}/infer",status="503"} 1.0' in metrics
        assert 'route="unmatched",status="503"' not in metrics


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", f"/v1/models/colors/predict?version={2**63}", 400),
        ("POST", f"/v2/models/colors/versions/{2**63}/infer", 404),
        ("GET", f"/v2/models/colors/versions/{2**63}", 404),
        ("GET", f"/v2/models/colors/versions/{2**63}/ready", 404),
        ("GET", "/v2/models/colors/versions/%C2%B3", 404),  # superscript three: isdigit() but not int()
        ("POST", "/v2/models/colors/versions/%D9%A1/infer", 404),  # Arabic-Indic one: not v1
    ],
)
async def test_version_numbers_that_are_not_versions_are_client_errors(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    kwargs = {"files": files(solid("red"))} if path.endswith("predict?version=" + str(2**63)) else {}
    if path.endswith("/infer"):
        kwargs = {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]}}
    r = await client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert "error" in r.json()


async def test_more_files_than_allowed_is_413(client: httpx.AsyncClient) -> None:
    many = [("images", (f"{i}.png", solid("red"), "image/png")) for i in range(70)]
    r = await client.post("/v1/models/colors/predict", files=many)
    assert r.status_code == 413
    assert "the limit is 64" in r.json()["error"]


async def test_a_server_started_while_the_database_is_down_answers_503_not_404(tmp_path: Path) -> None:
    down = Backend("postgres", "postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path)
    async with running(create_app(settings_for(down))) as client:
        r = await client.post("/v1/models/colors/predict", files=files(solid("red")))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "2"
        assert "the registry has not answered" in r.json()["error"]
        r = await client.get("/v2/models/colors/ready")
        assert (r.status_code, list(r.json())) == (503, ["error"])
        assert (await client.get("/v1/models/colors")).status_code == 503
        r = await client.get("/v1/models")  # not an empty list, as if the registry had no model
        assert r.status_code == 503
        assert r.headers["retry-after"] == "2"
        assert "the registry has not answered" in r.json()["error"]


@pytest.mark.parametrize(
    ("variable", "value", "says", "workers", "status"),
    [
        ("REGISTRY_DATABASE_URL", "garbage", "malformed database URL (REGISTRY_DATABASE_URL)", "1", 2),
        ("REGISTRY_DATABASE_URL", "garbage", "malformed database URL (REGISTRY_DATABASE_URL)", "2", 3),
        ("REGISTRY_DATABASE_URL", "nosuch://x/y", "unsupported database URL nosuch://x/y", "1", 2),
        ("REGISTRY_ARTIFACTS_URL", "s3://", "artifact store URL 's3://' names no bucket", "1", 2),
        ("REGISTRY_ARTIFACTS_URL", "ftp://x/y", "unsupported artifact store 'ftp://x/y'", "1", 2),
        ("REGISTRY_ARTIFACTS_URL", "ftp://x/y", "unsupported artifact store 'ftp://x/y'", "2", 3),
    ],
)
def test_a_malformed_registry_setting_stops_the_server_without_a_traceback(
    tmp_path: Path, variable: str, value: str, says: str, workers: str, status: int
) -> None:
    """One process: one line and status 2, as for any malformed setting. A host: each of its processes
    logs the line, and the host stops with status 3, as for any process that cannot start."""
    env = {**os.environ, "REGISTRY_DATABASE_URL": f"sqlite:///{tmp_path}/r.db", variable: value}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--workers", workers, "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    if workers == "1":
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("imgserve: ") and says in line
    else:
        assert says in proc.stderr and "cannot start (exit status 3)" in proc.stderr


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SERVE_WORKERS", "two", "invalid setting SERVE_WORKERS: Input should be a valid integer"),
        (
            "SERVE_INFERENCE_PROCESSES",
            "0",
            "invalid setting SERVE_INFERENCE_PROCESSES: Input should be greater than or equal to 1",
        ),
        ("SERVE_BATCHING__MAX_BATCH_SIZE", "x", "invalid setting SERVE_BATCHING__MAX_BATCH_SIZE: Input should be"),
    ],
)
def test_an_invalid_setting_stops_the_server_with_one_line_naming_its_variable(
    variable: str, value: str, says: str
) -> None:
    env = {**os.environ, variable: value}
    proc = subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"imgserve: {says}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_out_of_range_stops_the_server_with_one_line(port: str, workers: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--port", port, "--workers", workers],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"imgserve: invalid --port {port}: a number from 0 to 65535\n"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
        (["--port", "eighty"], "argument --port: invalid int value: 'eighty'"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], says: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"imgserve: error: {says}") and line.endswith("(see imgserve --help)"), line
