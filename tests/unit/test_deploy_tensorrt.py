"""deploy/k8s/engine-build-job.yaml and deploy/tensorrt/Dockerfile, checked statically.

No Kubernetes cluster and no Docker engine exist on these machines: the manifests are only parsed and cross-checked
against the CLI they call; they have never been applied or built here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from expnet_stream.cli import engine_cmd

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expnet-stream")
    parser.add_argument("--log-level")
    engine_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_engine_build_manifests_parse_and_call_the_real_cli() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "engine-build-job.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["PersistentVolumeClaim", "Job", "Deployment"]
    claim = docs[0]["metadata"]["name"]
    job_pod = docs[1]["spec"]["template"]["spec"]
    worker_pod = docs[2]["spec"]["template"]["spec"]
    for container in (job_pod["containers"][0], worker_pod["initContainers"][0]):
        args = _parser().parse_args(container["args"])  # every flag exists in build-engine
        assert args.command == "build-engine" and args.keyed and args.skip_existing and args.out == Path("/engines")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for pod in (job_pod, worker_pod):
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["engines"]["persistentVolumeClaim"]["claimName"] == claim
        assert pod["securityContext"]["runAsNonRoot"] is True
    (worker,) = worker_pod["containers"]
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["EXPNET_MODEL__ENGINE"] == "tensorrt" and env["EXPNET_MODEL__PLAN_DIR"] == "/engines"
    assert {"name": "engines", "mountPath": "/engines", "readOnly": True} in worker["volumeMounts"]


def test_tensorrt_dockerfile_is_nvidia_based_and_non_root() -> None:
    text = (DEPLOY / "tensorrt" / "Dockerfile").read_text()
    assert "ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:" in text and "FROM ${TRT_IMAGE}" in text
    assert "USER 10001" in text and 'ENTRYPOINT ["expnet-stream"]' in text
    assert "tensorrt-cu12==${TENSORRT_VERSION}" in text
