"""build_engine and `expnet-stream build-engine` driven through a FAKE tensorrt module.

A fake stands in because TensorRT cannot be installed or run on these machines (no GPU; its wheels download from
NVIDIA's index, which is unreachable). The fake (tests/unit/fake_tensorrt.py) records the builder calls and "runs"
plans with ONNX Runtime, so these tests check what our code asks TensorRT to do, the manifest, the timing and
calibration caches, the parity gate and the CLI exit codes; not TensorRT's own numerics (tests/gpu does that).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from expnet_stream.cli import engine_cmd
from expnet_stream.engines import tensorrt_runtime
from expnet_stream.engines.calibration import parity_crops
from expnet_stream.engines.manifest import (
    MANIFEST_NAME,
    PLAN_NAME,
    REJECTED_MANIFEST_NAME,
    EngineBuildError,
    Manifest,
    ParityError,
    PlanCache,
    PlanMissingError,
    TensorRTUnavailableError,
    compute_model_hash,
    file_sha256,
)
from expnet_stream.engines.tensorrt_build import CALIBRATION_CACHE_NAME, build_engine
from expnet_stream.engines.tensorrt_engine import GpuTarget
from expnet_stream.models.contract import PreprocessContract, contract_path_for
from tests.conftest import file_mode
from tests.unit.fake_tensorrt import make_fake_tensorrt

pytestmark = pytest.mark.unit

FAKE_GPU = GpuTarget("Fake GPU 9000", "8.9", 0, "cpu")


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> GpuTarget:
    monkeypatch.setattr(tensorrt_runtime, "cuda_gpu", lambda index=0: FAKE_GPU)
    return FAKE_GPU


def _build(onnx: Path, out: Path, trt: SimpleNamespace, **kw: object) -> Manifest:
    opts: dict[str, object] = {"min_batch": 1, "opt_batch": 2, "max_batch": 3, "workspace_mb": 256}
    opts.update(kw)
    return build_engine(onnx, out, trt_module=trt, **opts)  # type: ignore[arg-type]


def test_fake_trt_build_writes_checked_plan_and_manifest(small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget) -> None:
    trt = make_fake_tensorrt()
    m = _build(small_onnx, tmp_path, trt, fp16=True)
    contract = PreprocessContract.from_json(contract_path_for(small_onnx))
    assert (tmp_path / PLAN_NAME).is_file() and (tmp_path / MANIFEST_NAME).is_file()
    assert Manifest.from_json(tmp_path / MANIFEST_NAME) == m
    assert m.onnx_sha256 == file_sha256(small_onnx)
    assert m.model_hash == compute_model_hash(contract, m.onnx_sha256)
    assert m.model_id == contract.model_id and m.contract == contract
    assert (m.tensorrt_version, m.gpu_name, m.compute_capability, m.precision) == (
        "10.8.0.fake",
        "Fake GPU 9000",
        "8.9",
        "fp16",
    )
    (p,) = m.profiles
    assert (p.min_shape, p.opt_shape, p.max_shape) == ((1, 3, 112, 112), (2, 3, 112, 112), (3, 3, 112, 112))
    assert m.plan_sha256 == file_sha256(tmp_path / PLAN_NAME)
    assert m.parity is not None and m.parity.passed and m.parity.rel_error == 0.0
    assert m.parity.source == "skimage:astronaut" and m.parity.batch_sizes == (1, 2, 3)
    calls = trt.fake.calls
    assert ("set_memory_pool_limit", (trt.MemoryPoolType.WORKSPACE, 256 << 20)) in calls
    assert ("set_flag", trt.BuilderFlag.FP16) in calls and ("set_flag", trt.BuilderFlag.INT8) not in calls
    assert ("profile.set_shape", ("image", (1, 3, 112, 112), (2, 3, 112, 112), (3, 3, 112, 112))) in calls
    assert ("create_network", 0) in calls
    # the parity run executed the plan at min, opt and max batch
    assert [s[0] for s in trt.fake.executions] == [1, 2, 3]


def test_fake_trt_build_keyed_layout_is_what_the_cache_looks_up(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget
) -> None:
    trt = make_fake_tensorrt()
    m = _build(small_onnx, tmp_path, trt, keyed=True)
    plan = PlanCache(tmp_path).lookup(m.model_hash, "Fake GPU 9000", "8.9", "10.8.0.fake", "fp32", model_id=m.model_id)
    assert plan == tmp_path / m.key.relative_dir() / PLAN_NAME
    # skip_existing: no second build
    n_calls = len(trt.fake.calls)
    again = _build(small_onnx, tmp_path, trt, keyed=True, skip_existing=True)
    assert again == m and len(trt.fake.calls) == n_calls


def test_fake_trt_parity_failure_raises_and_keeps_the_plan_out(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget
) -> None:
    """A fake that adds 0.5 to every output: the build must fail with ParityError and install nothing."""
    trt = make_fake_tensorrt(perturb=0.5)
    with pytest.raises(ParityError, match=r"differs from ONNX Runtime: relative error .* > tolerance 0\.02"):
        _build(small_onnx, tmp_path, trt, fp16=True)
    assert not (tmp_path / PLAN_NAME).exists() and not (tmp_path / MANIFEST_NAME).exists()
    rejected = Manifest.from_json(tmp_path / REJECTED_MANIFEST_NAME)
    assert rejected.parity is not None and not rejected.parity.passed
    assert rejected.parity.max_abs_diff == pytest.approx(0.5, rel=1e-3)
    assert (tmp_path / rejected.plan_file).is_file()
    with pytest.raises(PlanMissingError, match="the cache is empty"):  # the rejected plan is never served
        PlanCache(tmp_path).lookup(rejected.model_hash, "Fake GPU 9000", "8.9", "10.8.0.fake", "fp16")
    # a looser stated tolerance accepts the same plan, and the manifest records the measured error
    m = _build(small_onnx, tmp_path, trt, fp16=True, tolerance=1.0)
    assert m.parity is not None and m.parity.passed and m.parity.tolerance == 1.0 and m.parity.max_abs_diff > 0.4
    assert not (tmp_path / REJECTED_MANIFEST_NAME).exists()


def test_fake_trt_parser_errors_are_reported_with_node_names(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget
) -> None:
    trt = make_fake_tensorrt(
        parse_errors=[{"node": 7, "name": "/trunk/layer1/Conv", "op": "Conv", "desc": "unsupported padding mode"}]
    )
    with pytest.raises(EngineBuildError, match=r"node 7 name '/trunk/layer1/Conv' op 'Conv': unsupported padding"):
        _build(small_onnx, tmp_path, trt)


def test_fake_trt_builder_failure_reports_tensorrt_errors(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget
) -> None:
    trt = make_fake_tensorrt(build_returns_none=True)
    with pytest.raises(EngineBuildError, match="out of workspace memory"):
        _build(small_onnx, tmp_path, trt)


def test_fake_trt_timing_cache_is_loaded_and_saved(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "timing.cache"
    trt = make_fake_tensorrt()
    _build(small_onnx, tmp_path / "a", trt, timing_cache=cache)
    first = cache.read_bytes()
    assert first == b"built;entry;"
    trt2 = make_fake_tensorrt()
    m = _build(small_onnx, tmp_path / "b", trt2, timing_cache=cache)
    assert ("create_timing_cache", first) in trt2.fake.calls
    assert ("set_timing_cache", (first, False)) in trt2.fake.calls
    assert cache.read_bytes().startswith(first) and len(cache.read_bytes()) > len(first)
    assert m.builder["timing_cache_loaded_bytes"] == len(first)
    # a cache from another GPU / TensorRT is not forced on the builder: a fresh one is used
    trt3 = make_fake_tensorrt(timing_cache_mismatch=True)
    with caplog.at_level(logging.WARNING):
        _build(small_onnx, tmp_path / "c", trt3, timing_cache=cache)
    assert "does not fit" in caplog.text and ("create_timing_cache", b"") in trt3.fake.calls


def _write_face_crops(folder: Path, n: int) -> np.ndarray:
    contract = PreprocessContract(model_name="x", input_size=112, crop_size=114)
    crops, _ = parity_crops(contract, n)
    folder.mkdir()
    for i, c in enumerate(crops):
        cv2.imwrite(str(folder / f"face{i:02d}.png"), c)
    return crops


def test_fake_trt_int8_calibrates_on_real_face_crops(small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget) -> None:
    crops = _write_face_crops(tmp_path / "calib", 5)
    contract = PreprocessContract.from_json(contract_path_for(small_onnx))
    trt = make_fake_tensorrt()
    m = _build(small_onnx, tmp_path / "plan", trt, int8=True, fp16=True, calib_dir=tmp_path / "calib")
    assert m.precision == "int8-fp16" and m.builder["int8_mode"] == "entropy-calibrator-2"
    assert ("set_flag", trt.BuilderFlag.INT8) in trt.fake.calls
    batches = trt.fake.calib_batches
    assert [b.shape for b in batches] == [(2, 3, 112, 112)] * 3  # 5 crops in batches of opt_batch, wrapped
    expected = contract.normalize(crops)  # PNG is lossless: the calibrator saw exactly these inputs
    np.testing.assert_allclose(np.concatenate(batches)[:5], expected, atol=1e-3)
    assert (tmp_path / "plan" / "int8-calibration.cache").read_bytes() == b"fake-calibration-table"
    assert m.parity is not None and m.parity.source == str(tmp_path / "calib")
    # a rebuild reuses the calibration cache instead of calibrating again
    trt2 = make_fake_tensorrt()
    _build(small_onnx, tmp_path / "plan", trt2, int8=True, calib_dir=tmp_path / "calib")
    assert ("calibrated", True) in trt2.fake.calls and not trt2.fake.calib_batches


def test_fake_trt_int8_without_calibration_data_is_refused(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget
) -> None:
    with pytest.raises(EngineBuildError, match="INT8 needs calibration data"):
        _build(small_onnx, tmp_path, make_fake_tensorrt(), int8=True)


def test_fake_trt_bad_profile_is_refused(small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget) -> None:
    with pytest.raises(EngineBuildError, match="min_batch <= opt_batch <= max_batch"):
        _build(small_onnx, tmp_path, make_fake_tensorrt(), opt_batch=8, max_batch=4)


def test_fake_trt_no_gpu_means_no_tensorrt_object(small_onnx: Path, tmp_path: Path) -> None:
    """Without CUDA (this machine) the build stops at the GPU check, before TensorRT is touched."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    trt = make_fake_tensorrt()
    with pytest.raises(TensorRTUnavailableError, match="no CUDA GPU"):
        _build(small_onnx, tmp_path, trt)
    assert trt.fake.calls == []


# -- CLI -------------------------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="expnet-stream")
    engine_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_fake_trt_cli_build_engine_exit_codes(
    small_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["build-engine", "--onnx", str(small_onnx), "--opt-batch", "2", "--max-batch", "2"]
    import torch

    if not torch.cuda.is_available():  # 4: no GPU here, said clearly
        assert _cli([*base, "--out", str(tmp_path / "x")]) == engine_cmd.EXIT_UNAVAILABLE
        assert "TensorRT unavailable: no CUDA GPU" in capsys.readouterr().err
    monkeypatch.setattr(tensorrt_runtime, "cuda_gpu", lambda index=0: FAKE_GPU)
    monkeypatch.setattr(tensorrt_runtime, "load_tensorrt", lambda: trt)
    trt = make_fake_tensorrt()
    assert _cli([*base, "--out", str(tmp_path / "ok"), "--keyed", "--fp16"]) == 0
    out = capsys.readouterr()
    plan_dir = Path(out.out.strip())
    assert (plan_dir / PLAN_NAME).is_file() and "parity              passed" in out.err
    trt = make_fake_tensorrt(perturb=0.5)  # 3: parity
    assert _cli([*base, "--out", str(tmp_path / "bad"), "--fp16"]) == engine_cmd.EXIT_PARITY
    assert "parity check failed" in capsys.readouterr().err
    trt = make_fake_tensorrt(parse_errors=[{"node": 1, "name": "n1", "op": "Gemm", "desc": "boom"}])  # 5: build
    assert _cli([*base, "--out", str(tmp_path / "bad2")]) == engine_cmd.EXIT_BUILD_FAILED
    assert "name 'n1' op 'Gemm': boom" in capsys.readouterr().err

    # engine-info: a plan folder, the cache root (lists every plan), JSON
    assert _cli(["engine-info", str(plan_dir)]) == 0
    assert "precision           fp16" in capsys.readouterr().out
    assert _cli(["engine-info", str(tmp_path / "ok"), "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["gpu_name"] == "Fake GPU 9000" and doc["parity"]["passed"] is True
    assert _cli(["engine-info", str(tmp_path / "nothing")]) == 1


def test_calibration_crops_from_face_photos_with_a_detector(tmp_path: Path) -> None:
    """Full photos (not crops) are cut with the contract's crop rule around the faces a detector plugin finds."""
    from skimage import data

    from expnet_stream.engines.calibration import face_crops_from_dir

    contract = PreprocessContract(model_name="x", input_size=112, crop_size=114)
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "astronaut.jpg"), data.astronaut()[:, :, ::-1])
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    crops = face_crops_from_dir(tmp_path / "photos", contract, detector="yuface")
    assert crops.shape == (1, 114, 114, 3) and crops.dtype == np.uint8
    as_crop = face_crops_from_dir(tmp_path / "photos", contract)  # without a detector: the image is the crop
    assert as_crop.shape == (1, 114, 114, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineBuildError, match="no images"):
        face_crops_from_dir(tmp_path / "empty", contract)
    with pytest.raises(EngineBuildError, match="does not exist"):
        face_crops_from_dir(tmp_path / "missing", contract)


def test_fake_trt_plan_and_caches_are_written_0644_without_temp_files(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget, strict_umask: None
) -> None:
    """The worker runs as another user than the build: the plan, its manifest, the timing cache and the INT8
    calibration cache must be readable by it (mkstemp's 0600 used to stay on them)."""
    _write_face_crops(tmp_path / "calib", 3)
    out, timing = tmp_path / "plan", tmp_path / "cache" / "timing.cache"
    _build(small_onnx, out, make_fake_tensorrt(), int8=True, calib_dir=tmp_path / "calib", timing_cache=timing)
    written = [out / PLAN_NAME, out / MANIFEST_NAME, out / CALIBRATION_CACHE_NAME, timing]
    assert {p.name: oct(file_mode(p)) for p in written} == {p.name: "0o644" for p in written}
    assert sorted(p.name for p in out.iterdir()) == sorted([PLAN_NAME, MANIFEST_NAME, CALIBRATION_CACHE_NAME])
    assert [p.name for p in timing.parent.iterdir()] == [timing.name]  # no temp file left beside the cache


def test_fake_trt_keyed_plan_is_0644_and_a_rejected_one_too(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget, strict_umask: None
) -> None:
    m = _build(small_onnx, tmp_path, make_fake_tensorrt(), keyed=True)
    folder = tmp_path / m.key.relative_dir()
    assert (oct(file_mode(folder / PLAN_NAME)), oct(file_mode(folder / MANIFEST_NAME))) == ("0o644", "0o644")
    with pytest.raises(ParityError):
        _build(small_onnx, tmp_path / "bad", make_fake_tensorrt(perturb=0.5), fp16=True)
    rejected = tmp_path / "bad" / f"{PLAN_NAME}.rejected"
    assert oct(file_mode(rejected)) == "0o644" and oct(file_mode(tmp_path / "bad" / REJECTED_MANIFEST_NAME)) == "0o644"
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == sorted([rejected.name, REJECTED_MANIFEST_NAME])
