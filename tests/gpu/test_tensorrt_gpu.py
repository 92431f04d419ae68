"""Real TensorRT on a real GPU: build, parity, cache lookup, runtime. Skipped (with the reason) without them.

The skip decision checks CUDA first and only then imports tensorrt, and creates no TensorRT object: a lean TensorRT
runtime without a GPU crashes on deserialize. Run with ``pytest -m gpu -s tests/gpu``.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from expnet_stream.engines import OrtEngine
from expnet_stream.engines.manifest import MANIFEST_NAME, PLAN_NAME, EngineMismatchError, Manifest, PlanCache
from expnet_stream.engines.tensorrt_build import build_engine
from expnet_stream.engines.tensorrt_engine import TrtEngine, create_tensorrt_engine


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("tensorrt") is None:
        return "needs TensorRT (`import tensorrt` not found; use the deploy/tensorrt image)"
    try:
        importlib.import_module("tensorrt")
    except ImportError as exc:
        return f"TensorRT does not import: {exc}"
    return None


_REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-127.5, 127.5, (n, 3, 112, 112)).astype(np.float32)


@pytest.fixture(scope="module")
def cache(small_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plans")
    for fp16 in (False, True):
        m = build_engine(
            small_onnx, root, fp16=fp16, min_batch=1, opt_batch=8, max_batch=32, workspace_mb=1024, keyed=True,
            timing_cache=root / "timing.cache",
        )  # fmt: skip
        assert m.parity is not None and m.parity.passed
        print(f"\ntensorrt build {m.precision}: {m.build_seconds:.1f} s, parity rel_error {m.parity.rel_error:.2e}")
    return root


@pytest.mark.parametrize(("precision", "tol"), [("fp32", 5e-3), ("fp16", 2e-2)])
def test_tensorrt_engine_matches_onnxruntime(small_onnx: Path, cache: Path, precision: str, tol: float) -> None:
    x = _x(70)
    with OrtEngine(small_onnx, max_batch=64) as ort_engine:
        ref = ort_engine.infer(x)
    with create_tensorrt_engine(small_onnx, plan_dir=cache, precision=precision, max_batch=32) as engine:
        assert engine.manifest.gpu_name == torch.cuda.get_device_name()
        got = engine.infer(x)  # 32 + 32 + 6
        assert float(np.abs(got - ref).max()) / float(np.abs(ref).max()) <= tol
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 2.0:
            engine.infer(x[:32])
            n += 32
        print(f"\ntensorrt {precision} {engine.manifest.gpu_name}: {n / (time.perf_counter() - start):.0f} faces/s")


def test_tensorrt_plan_for_another_gpu_is_refused(cache: Path, tmp_path: Path) -> None:
    entry = next(e for e in PlanCache(cache).entries() if e.manifest.precision == "fp16")
    dest = tmp_path / "other"
    dest.mkdir()
    (dest / PLAN_NAME).write_bytes(entry.plan_path.read_bytes())
    entry.manifest.model_copy(update={"compute_capability": "1.0"}).to_json(dest / MANIFEST_NAME)
    with pytest.raises(EngineMismatchError, match="compute_capability"):
        TrtEngine(dest)
    assert Manifest.from_json(entry.directory / MANIFEST_NAME).compute_capability != "1.0"
