"""The plan cache never serves a wrong plan: lookups by (model hash, GPU, compute capability, TensorRT, precision).

Pure data: manifests and plan files are written by hand here; no TensorRT is involved.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from expnet_stream.engines.manifest import (
    MANIFEST_NAME,
    PLAN_NAME,
    EngineMismatchError,
    Manifest,
    ParityReport,
    PlanCache,
    PlanKey,
    PlanMissingError,
    Profile,
    build_command,
    compute_model_hash,
    precision_flags,
    precision_name,
)
from expnet_stream.errors import EngineError
from expnet_stream.models.contract import PreprocessContract

pytestmark = pytest.mark.unit

CONTRACT = PreprocessContract(model_name="expnet_resnet18.s112", input_size=112, crop_size=114)
ONNX_SHA = "0" * 64
HASH = compute_model_hash(CONTRACT, ONNX_SHA)
KEY = dict(gpu_name="NVIDIA L4", compute_capability="8.9", tensorrt_version="10.3.0", precision="fp16")
ARGS = (HASH, *KEY.values())  # positional lookup arguments


def make_manifest(plan: bytes = b"PLAN", *, passed: bool = True, **over: object) -> Manifest:
    fields: dict[str, object] = {
        "model_id": CONTRACT.model_id,
        "model_hash": HASH,
        "onnx_sha256": ONNX_SHA,
        "onnx_file": "/models/m.onnx",
        **KEY,
        "profiles": (Profile(input_name="image", min_shape=(1, 3, 112, 112), opt_shape=(8, 3, 112, 112),
                             max_shape=(32, 3, 112, 112)),),
        "contract": CONTRACT,
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "plan_bytes": len(plan),
        "built_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "build_seconds": 12.5,
        "parity": ParityReport(source="skimage:astronaut", samples=32, batch_sizes=(1, 8, 32), max_abs_diff=1e-3,
                               max_abs_reference=5.0, rel_error=2e-4, tolerance=2e-2, passed=passed),
    }  # fmt: skip
    fields.update(over)
    return Manifest.model_validate(fields)


def install(cache: PlanCache, manifest: Manifest, plan: bytes = b"PLAN") -> Path:
    folder = cache.dir_for(manifest.key)
    folder.mkdir(parents=True)
    (folder / PLAN_NAME).write_bytes(plan)
    manifest.to_json(folder / MANIFEST_NAME)
    return folder / PLAN_NAME


def lookup(cache: PlanCache, **over: str) -> Path:
    k = {**KEY, **over}
    return cache.lookup(
        over.get("model_hash", HASH), k["gpu_name"], k["compute_capability"], k["tensorrt_version"], k["precision"],
        model_id=CONTRACT.model_id, onnx_path="/models/m.onnx",
    )  # fmt: skip


def test_hit_returns_the_plan_and_the_layout_is_keyed(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    plan = install(cache, make_manifest())
    assert lookup(cache) == plan
    rel = plan.parent.relative_to(tmp_path).as_posix()
    assert rel == f"expnet_resnet18.s112-untrained-random-init-seed0/{HASH[:16]}/nvidia-l4-sm89/trt10.3.0/fp16"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gpu_name", "NVIDIA A10G"),
        ("compute_capability", "8.6"),
        ("tensorrt_version", "10.5.0"),
        ("precision", "fp32"),
        ("model_hash", "f" * 64),
    ],
)
def test_mismatch_names_the_field_expected_found_and_the_build_command(tmp_path: Path, field: str, value: str) -> None:
    cache = PlanCache(tmp_path)
    install(cache, make_manifest())
    with pytest.raises(EngineMismatchError) as info:
        lookup(cache, **{field: value})
    err = info.value
    found = HASH if field == "model_hash" else KEY[field]
    assert err.differences == ((field, value, found),)
    msg = str(err)
    assert f"{field}: expected {value!r}, found {found!r}" in msg
    precision = value if field == "precision" else "fp16"
    assert f"expnet-stream build-engine --onnx /models/m.onnx --out {tmp_path} --keyed" in msg
    assert err.command == build_command("/models/m.onnx", tmp_path, precision)
    assert not isinstance(err, PlanMissingError)


def test_several_fields_differ_all_are_named(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    install(cache, make_manifest())
    with pytest.raises(EngineMismatchError) as info:
        lookup(cache, gpu_name="Tesla T4", compute_capability="7.5")
    assert [d[0] for d in info.value.differences] == ["compute_capability", "gpu_name"]
    assert "compute_capability: expected '7.5', found '8.9'; gpu_name: expected 'Tesla T4'" in str(info.value)


def test_empty_cache_says_so_and_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(PlanMissingError, match=r"the cache is empty\. Build one on this GPU type with: expnet-stream"):
        lookup(PlanCache(tmp_path / "none"))


def test_int8_command_asks_for_calibration_images(tmp_path: Path) -> None:
    with pytest.raises(PlanMissingError) as info:
        lookup(PlanCache(tmp_path), precision="int8-fp16")
    assert "--fp16 --int8 --calib <face-crops-dir>" in info.value.command


def test_a_corrupt_or_replaced_plan_is_refused(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    plan = install(cache, make_manifest())
    plan.write_bytes(b"PLAN-from-somewhere-else")
    with pytest.raises(EngineMismatchError, match=r"corrupt or replaced"):
        lookup(cache)
    plan.unlink()
    with pytest.raises(EngineMismatchError, match="plan file is missing"):
        lookup(cache)


def test_a_plan_without_passed_parity_is_refused(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    install(cache, make_manifest(passed=False))
    with pytest.raises(EngineMismatchError, match="no passed parity check"):
        lookup(cache)


def test_unreadable_manifests_are_skipped(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    plan = install(cache, make_manifest())
    bad = tmp_path / "junk" / MANIFEST_NAME
    bad.parent.mkdir()
    bad.write_text("{not json")
    assert lookup(cache) == plan


def test_build_on_miss_builds_into_the_keyed_folder(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    built: list[Path] = []

    def build(folder: Path) -> Manifest:
        built.append(folder)
        m = make_manifest()
        (folder / PLAN_NAME).write_bytes(b"PLAN")
        m.to_json(folder / MANIFEST_NAME)
        return m

    plan = cache.lookup(*ARGS, model_id=CONTRACT.model_id, build=build)
    assert built == [plan.parent] and plan.parent == cache.dir_for(make_manifest().key)
    assert lookup(cache) == plan  # now a plain hit
    assert cache.lookup(*ARGS, model_id=CONTRACT.model_id, build=build) == plan
    assert len(built) == 1


def test_build_on_miss_that_builds_the_wrong_plan_is_refused(tmp_path: Path) -> None:
    def build(folder: Path) -> Manifest:  # e.g. the build ran on another GPU than the worker's
        m = make_manifest(gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
        (folder / PLAN_NAME).write_bytes(b"PLAN")
        m.to_json(folder / MANIFEST_NAME)
        return m

    with pytest.raises(EngineMismatchError, match="the plan just built does not fit"):
        PlanCache(tmp_path).lookup(*ARGS, build=build)


def test_model_hash_covers_contract_and_onnx_bytes() -> None:
    other_mean = CONTRACT.model_copy(update={"mean_bgr": (0.0, 0.0, 0.0)})
    assert compute_model_hash(other_mean, ONNX_SHA) != HASH
    assert compute_model_hash(CONTRACT, "1" * 64) != HASH
    assert compute_model_hash(CONTRACT, ONNX_SHA.upper()) == HASH


def test_manifest_round_trip_and_validation(tmp_path: Path) -> None:
    m = make_manifest()
    path = m.to_json(tmp_path / MANIFEST_NAME)
    assert Manifest.from_json(path) == m
    doc = json.loads(path.read_text())
    assert doc["contract"]["input_size"] == 112 and doc["precision"] == "fp16"
    doc["precision"] = "fp8"
    path.write_text(json.dumps(doc))
    with pytest.raises(EngineError, match="invalid manifest"):
        Manifest.from_json(path)
    assert "parity              passed" in m.summary()


def test_precision_names() -> None:
    assert [precision_name(fp16=a, int8=b) for a, b in ((0, 0), (1, 0), (0, 1), (1, 1))] == [
        "fp32",
        "fp16",
        "int8",
        "int8-fp16",
    ]
    assert precision_flags("int8-fp16") == (True, True)
    with pytest.raises(EngineError, match="unknown precision"):
        precision_flags("bf16")
    assert PlanKey("a" * 64, "G", "9.0", "10", "fp16").relative_dir().parts[-3:] == ("g-sm90", "trt10", "fp16")
