"""TrtEngine and create_engine("tensorrt") driven through a FAKE tensorrt module.

A fake stands in because TensorRT cannot be installed or run on these machines (no GPU; its wheels download from
NVIDIA's index, which is unreachable). The fake's execution context reads the input from the buffer address our
wrapper hands it (CPU torch tensors stand in for CUDA buffers), runs ONNX Runtime on the ONNX embedded in its "plan"
and writes the output to the output address, so the wrapper's shapes, buffers, padding, chunking and refusals are
checked end to end against OrtEngine. Real TensorRT on a GPU is tests/gpu/test_tensorrt_gpu.py (skipped here).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from expnet_stream.engines import OrtEngine, tensorrt_runtime
from expnet_stream.engines.manifest import (
    MANIFEST_NAME,
    PLAN_NAME,
    EngineMismatchError,
    Manifest,
    PlanMissingError,
    TensorRTUnavailableError,
)
from expnet_stream.engines.tensorrt_build import build_engine
from expnet_stream.engines.tensorrt_engine import GpuTarget, TrtEngine, create_tensorrt_engine
from expnet_stream.errors import EngineError
from tests.unit.fake_tensorrt import make_fake_tensorrt

pytestmark = pytest.mark.unit

FAKE_GPU = GpuTarget("Fake GPU 9000", "8.9", 0, "cpu")


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> GpuTarget:
    monkeypatch.setattr(tensorrt_runtime, "cuda_gpu", lambda index=0: FAKE_GPU)
    return FAKE_GPU


@pytest.fixture(scope="module")
def plan_dir(small_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plan")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tensorrt_runtime, "cuda_gpu", lambda index=0: FAKE_GPU)
        build_engine(small_onnx, out, min_batch=2, opt_batch=2, max_batch=4, trt_module=make_fake_tensorrt())
    return out


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-127.5, 127.5, (n, 3, 112, 112)).astype(np.float32)


def test_fake_trt_engine_matches_onnxruntime_with_chunks_and_padding(
    plan_dir: Path, small_onnx: Path, fake_gpu: GpuTarget
) -> None:
    trt = make_fake_tensorrt()
    x = _x(7)
    with OrtEngine(small_onnx, max_batch=8, intra_op_threads=1) as ort_engine:
        ref = ort_engine.infer(x)
    with TrtEngine(plan_dir, trt_module=trt) as engine:
        assert (engine.name, engine.max_batch, engine.min_batch) == ("tensorrt", 4, 2)
        assert engine.model_id == "expnet_resnet18.s112@UNTRAINED-random-init-seed0"
        got = engine.infer(x)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        one = engine.infer(x[:1])  # below the profile's min batch: padded to 2, one row returned
        np.testing.assert_allclose(one, ref[:1], rtol=1e-5, atol=1e-5)
        assert engine.infer(x[:0]).shape == (0, 29)
    assert [s[0] for s in trt.fake.executions] == [4, 3, 2]


def test_fake_trt_engine_max_batch_is_capped_by_the_profile(plan_dir: Path, fake_gpu: GpuTarget) -> None:
    trt = make_fake_tensorrt()
    with TrtEngine(plan_dir / PLAN_NAME, max_batch=64, trt_module=trt) as engine:
        assert engine.max_batch == 4
    with TrtEngine(plan_dir, max_batch=3, trt_module=trt) as engine:
        engine.infer(_x(5))
    assert [s[0] for s in trt.fake.executions] == [3, 2]


def _copy_with(plan_dir: Path, dest: Path, **update: object) -> Path:
    dest.mkdir()
    (dest / PLAN_NAME).write_bytes((plan_dir / PLAN_NAME).read_bytes())
    m = Manifest.from_json(plan_dir / MANIFEST_NAME).model_copy(update=update)
    m.to_json(dest / MANIFEST_NAME)
    return dest


def test_fake_trt_engine_refuses_a_plan_for_another_gpu_before_deserializing(
    plan_dir: Path, tmp_path: Path, fake_gpu: GpuTarget
) -> None:
    other = _copy_with(plan_dir, tmp_path / "a100", gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    trt = make_fake_tensorrt()
    with pytest.raises(EngineMismatchError) as info:
        TrtEngine(other, trt_module=trt)
    msg = str(info.value)
    assert "compute_capability: this machine has '8.9', the plan was built for '8.0'" in msg
    assert "gpu_name: this machine has 'Fake GPU 9000'" in msg and "expnet-stream build-engine" in msg
    assert not any(c[0] == "deserialize_cuda_engine" for c in trt.fake.calls)


def test_fake_trt_engine_refuses_another_tensorrt_version(plan_dir: Path, fake_gpu: GpuTarget) -> None:
    trt = make_fake_tensorrt(version="10.9.0.fake")
    with pytest.raises(EngineMismatchError, match=r"tensorrt_version: this machine has '10\.9\.0\.fake', the plan was"):
        TrtEngine(plan_dir, trt_module=trt)
    assert trt.fake.calls == []


def test_fake_trt_engine_refuses_a_tampered_plan(plan_dir: Path, tmp_path: Path, fake_gpu: GpuTarget) -> None:
    bad = _copy_with(plan_dir, tmp_path / "bad")
    with (bad / PLAN_NAME).open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(EngineMismatchError, match="differs from its manifest"):
        TrtEngine(bad, trt_module=make_fake_tensorrt())


def test_fake_trt_engine_checks_input_and_close(plan_dir: Path, fake_gpu: GpuTarget) -> None:
    engine = TrtEngine(plan_dir, trt_module=make_fake_tensorrt())
    with pytest.raises(EngineError, match=r"expects float32 \(N, 3, 112, 112\)"):
        engine.infer(np.zeros((1, 3, 64, 64), np.float32))
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.infer(_x(1))


def test_fake_trt_engine_without_gpu_creates_no_tensorrt_object(plan_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    trt = make_fake_tensorrt()
    with pytest.raises(TensorRTUnavailableError, match="no CUDA GPU is visible"):
        TrtEngine(plan_dir, trt_module=trt)
    assert trt.fake.calls == []


def test_fake_trt_real_tensorrt_is_never_given_cpu_buffers(
    plan_dir: Path, fake_gpu: GpuTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU buffers are only for an injected fake; a loaded ``tensorrt`` with a non-CUDA device is refused."""
    monkeypatch.setattr(tensorrt_runtime, "load_tensorrt", make_fake_tensorrt)
    with pytest.raises(TensorRTUnavailableError, match="needs CUDA buffers"):
        TrtEngine(plan_dir)


def test_fake_trt_create_engine_looks_up_the_cache_and_builds_on_miss_when_allowed(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget
) -> None:
    trt: SimpleNamespace = make_fake_tensorrt()
    cache = tmp_path / "plans"
    with pytest.raises(PlanMissingError, match=f"--onnx {small_onnx} --out {cache} --keyed --fp16 --max-batch 4"):
        create_tensorrt_engine(small_onnx, plan_dir=cache, precision="fp16", max_batch=4, trt_module=trt)
    assert not any(c[0] == "build_serialized_network" for c in trt.fake.calls)
    engine = create_tensorrt_engine(
        small_onnx, plan_dir=cache, precision="fp16", max_batch=4, build_on_miss=True, trt_module=trt,
        build_options={"opt_batch": 2}, intra_op_threads=2,  # CPU-engine options are ignored
    )  # fmt: skip
    with engine:
        assert engine.manifest.precision == "fp16" and engine.max_batch == 4
        assert engine.plan_path.parent == cache / engine.manifest.key.relative_dir()
    builds = sum(c[0] == "build_serialized_network" for c in trt.fake.calls)
    assert builds == 1
    # second worker: a plain cache hit; a worker asking for another precision is refused, naming the field
    create_tensorrt_engine(small_onnx, plan_dir=cache, precision="fp16", max_batch=4, trt_module=trt).close()
    assert sum(c[0] == "build_serialized_network" for c in trt.fake.calls) == 1
    with pytest.raises(EngineMismatchError, match="precision: expected 'fp32', found 'fp16'"):
        create_tensorrt_engine(small_onnx, plan_dir=cache, precision="fp32", trt_module=trt)


def test_fake_trt_plan_built_on_a_cache_miss_is_readable_by_other_users(
    small_onnx: Path, tmp_path: Path, fake_gpu: GpuTarget
) -> None:
    """A plan built on a miss (build_on_miss) lands in the cache 0644 with its manifest, even under umask 077."""
    old = os.umask(0o077)
    try:
        with create_tensorrt_engine(
            small_onnx, plan_dir=tmp_path, precision="fp32", max_batch=2, build_on_miss=True,
            trt_module=make_fake_tensorrt(), build_options={"opt_batch": 1},
        ) as engine:  # fmt: skip
            folder = engine.plan_path.parent
    finally:
        os.umask(old)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir()} == {
        PLAN_NAME: "0o644",
        MANIFEST_NAME: "0o644",
    }
