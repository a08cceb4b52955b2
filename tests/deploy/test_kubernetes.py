"""k8s/: every overlay renders with `kubectl kustomize`, its built-in resources validate with
`kubernetes-validate --strict`, its custom resources against the schemas kept in k8s/schemas,
and the api Deployment carries what running it safely needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ["cpu", "gpu", "keda"]
KUBERNETES_VERSION = "1.32.0"  # the oldest release these manifests are meant for (preStop sleep is beta from 1.30)
SCHEMAS = {
    "ServiceMonitor": K8S / "schemas" / "servicemonitor.schema.json",
    "ScaledObject": K8S / "schemas" / "scaledobject.schema.json",
}


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is not installed (CI forbids skipping)")
        pytest.skip("kubectl is not installed: it renders the Kustomize overlays")
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str = "imgserve-api") -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def api_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    builtin = [d for d in docs if d["kind"] not in SCHEMAS]
    custom = [d for d in docs if d["kind"] in SCHEMAS]
    files = []
    for index, doc in enumerate(builtin):
        path = tmp_path / f"{index}-{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed for resource") == len(files)
    for doc in custom:
        jsonschema.validate(doc, json.loads(SCHEMAS[doc["kind"]].read_text()))
    kinds = sorted(d["kind"] for d in docs)
    scaler = "ScaledObject" if overlay == "keda" else "HorizontalPodAutoscaler"
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Job", "Job", "ServiceMonitor", scaler]
    )


def test_strict_validation_and_the_custom_schemas_catch_mistakes(tmp_path: Path) -> None:
    deployment = one(render("cpu"), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGraceSeconds"] = 45  # a typo
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "terminationGraceSeconds" in proc.stdout + proc.stderr
    scaled = one(render("keda"), "ScaledObject")
    del scaled["spec"]["triggers"][0]["metadata"]["query"]
    with pytest.raises(jsonschema.ValidationError, match="query"):
        jsonschema.validate(scaled, json.loads(SCHEMAS["ScaledObject"].read_text()))
    monitor = one(render("cpu"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate(monitor, json.loads(SCHEMAS["ServiceMonitor"].read_text()))


def test_the_api_deployment_is_probed_bounded_locked_down_and_drains() -> None:
    docs = render("cpu")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = api_container(docs)
    port = container["ports"][0]
    assert (port["name"], port["containerPort"]) == ("http", 8000)
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    startup_budget = container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
    assert startup_budget >= 120  # model load and warm-up before liveness applies
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["cpu"] and resources["limits"]["memory"]
    env = {e["name"]: e for e in container["env"]}
    # One front end per CPU of the limit; the threads follow from it (app.host.thread_budget).
    assert env["SERVE_WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert "SERVE_INTRA_OP_THREADS" not in env and "SERVE_DECODE_THREADS" not in env
    for secret in (
        "REGISTRY_DATABASE_URL",
        "REGISTRY_DATABASE_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "SERVE_ADMIN_TOKENS",
    ):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "imgserve-secrets"
    # The server drains for up to 30 s (uvicorn's graceful shutdown) after a 5 s preStop pause.
    assert pod["terminationGracePeriodSeconds"] > 30 + container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    config = one(docs, "ConfigMap", "imgserve-config")["data"]
    assert {"/tmp", config["SERVE_ARTIFACT_CACHE_DIR"]} <= mounts  # writable places on a read-only root
    assert config["REGISTRY_ARTIFACTS_URL"].startswith("s3://")
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    service = one(docs, "Service")
    assert service["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    migrate = one(docs, "Job", "imgserve-migrate")["spec"]
    assert migrate["template"]["spec"]["containers"][0]["command"][:4] == ["registry", "db", "upgrade", "--wait"]
    assert migrate["backoffLimit"] >= 3


def test_autoscaling_follows_the_servers_own_load_gauge() -> None:
    hpa = one(render("cpu"), "HorizontalPodAutoscaler")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "http_inference_requests_in_flight"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "16"}
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "imgserve-api"}
    keda = render("keda")
    assert not [d for d in keda if d["kind"] == "HorizontalPodAutoscaler"]
    (trigger,) = one(keda, "ScaledObject")["spec"]["triggers"]
    assert "http_inference_requests_in_flight" in trigger["metadata"]["query"]
    # The gauge the autoscalers read is one the server exports.
    from app.metrics import StateCollector

    names = {m.name for m in StateCollector(lambda: [], lambda: (3, 1)).collect()}
    assert "http_inference_requests_in_flight" in names


def test_the_gpu_overlay_asks_for_a_gpu_and_refuses_to_run_without_one() -> None:
    docs = render("gpu")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = api_container(docs)
    assert container["image"].startswith("imgserve-api-gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["SERVE_PROVIDERS"], env["SERVE_REQUIRE_GPU"]) == ("cuda", "true")
    assert "REGISTRY_DATABASE_URL" in env  # the base's variables survive the patch
