"""TorchEngine on a CUDA GPU: fp32/fp16 parity with ONNX Runtime, bucket padding and CUDA graphs.

Skipped (with the reason) where torch sees no CUDA GPU. Timings are measured by ``make gpu-check``, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from expnet_stream.engines import OrtEngine
from expnet_stream.engines.torch_engine import TorchEngine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-127.5, 127.5, (n, 3, 112, 112)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(small_onnx: Path) -> tuple[np.ndarray, np.ndarray]:
    x = _x(37)
    with OrtEngine(small_onnx, max_batch=64) as ort_engine:
        return x, ort_engine.infer(x)


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max()) / float(np.abs(ref).max())


@pytest.mark.parametrize(("fp16", "tol"), [(False, 5e-3), (True, 2e-2)])
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_parity_with_onnxruntime(
    small_onnx: Path, reference: tuple[np.ndarray, np.ndarray], fp16: bool, tol: float, graphs: bool
) -> None:
    x, ref = reference
    with TorchEngine(small_onnx, device="cuda", fp16=fp16, cuda_graphs=graphs, max_batch=16) as engine:
        assert engine.device.type == "cuda" and engine.fp16 is fp16 and engine.cuda_graphs is graphs
        got = engine.infer(x)  # 16 + 16 + 5 (padded to 8)
        assert _rel(got, ref) <= tol
        single = engine.infer(x[:1])
        assert _rel(single, ref[:1]) <= tol


def test_cuda_graphs_equal_eager_and_padding_is_harmless(small_onnx: Path) -> None:
    x = _x(5, seed=3)
    with TorchEngine(small_onnx, device="cuda", fp16=True, buckets=(8,), verify=False) as eager:
        a = eager.infer(x)
    with TorchEngine(small_onnx, device="cuda", fp16=True, buckets=(8,), cuda_graphs=True, verify=False) as graphs:
        b = graphs.infer(x)
        b2 = graphs.infer(x)  # replay again: same numbers
    np.testing.assert_array_equal(b, b2)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(np.abs(a).max()))
