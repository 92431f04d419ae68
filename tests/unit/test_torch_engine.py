"""TorchEngine on CPU: same weights as the ONNX file, parity with OrtEngine, batch buckets and padding.

CUDA behaviour (fp16, CUDA graphs, pinned buffers, timings) is tests/gpu/test_torch_cuda.py, skipped without a GPU.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from expnet_stream.engines import OrtEngine
from expnet_stream.engines.manifest import ParityError
from expnet_stream.engines.torch_engine import TorchEngine, default_buckets
from expnet_stream.errors import EngineError
from expnet_stream.models import PreprocessContract, contract_path_for, create_model, save_checkpoint

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine(small_onnx: Path) -> Iterator[TorchEngine]:
    with TorchEngine(small_onnx, max_batch=4) as e:
        yield e  # type: ignore[misc]


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-127.5, 127.5, (n, 3, 112, 112)).astype(np.float32)


def test_cpu_parity_with_onnxruntime_same_seeded_weights(engine: TorchEngine, small_onnx: Path) -> None:
    assert engine.device.type == "cpu" and not engine.fp16 and not engine.cuda_graphs
    assert engine.model_id == "expnet_resnet18.s112@UNTRAINED-random-init-seed0" and engine.name == "torch"
    assert engine.parity_error is not None and engine.parity_error < 1e-4
    x = _x(6)  # chunks of 4 and 2
    with OrtEngine(small_onnx, max_batch=8, intra_op_threads=1) as ort_engine:
        ref = ort_engine.infer(x)
    got = engine.infer(x)
    assert got.shape == (6, 29) and got.dtype == np.float32
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) <= 1e-4 * scale


def test_buckets() -> None:
    assert default_buckets(1) == (1,)
    assert default_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert default_buckets(24) == (1, 2, 4, 8, 16, 24)
    with pytest.raises(EngineError):
        default_buckets(0)


def test_padding_to_a_bucket_does_not_change_real_rows(engine: TorchEngine, small_onnx: Path) -> None:
    assert engine.buckets == (1, 2, 4) and [engine.bucket_for(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    x = _x(3, seed=1)
    padded = engine.infer(x)  # 3 rows padded to the bucket of 4
    with TorchEngine(small_onnx, buckets=(1,), verify=False) as one_by_one:
        single = one_by_one.infer(x)  # every row alone, no padding
        assert one_by_one.max_batch == 1
    np.testing.assert_allclose(padded, single, rtol=1e-5, atol=1e-5 * float(np.abs(single).max()))
    with pytest.raises(EngineError, match="exceeds the largest bucket"):
        engine.bucket_for(5)


def test_checkpoint_weights_are_checked_against_the_onnx(small_onnx: Path, tmp_path: Path) -> None:
    model0, contract0 = create_model("expnet_resnet18.s112", seed=0)
    good = save_checkpoint(tmp_path / "seed0.pt", model0, contract0)
    with TorchEngine(small_onnx, checkpoint=good, max_batch=2) as e:
        assert e.parity_error is not None and e.parity_error < 1e-4
    # another model's contract: refused by name before any inference
    model1, contract1 = create_model("expnet_resnet18.s112", seed=1)
    other = save_checkpoint(tmp_path / "seed1.pt", model1, contract1)
    with pytest.raises(EngineError, match=r"is not the model of .*weights: ONNX 'untrained-random-init-seed0'"):
        TorchEngine(small_onnx, checkpoint=other)
    # same contract, other weights: caught by the start-up parity check
    liar = save_checkpoint(tmp_path / "liar.pt", model1, contract0)
    with pytest.raises(ParityError, match="differs from ONNX Runtime"):
        TorchEngine(small_onnx, checkpoint=liar, max_batch=2)


def test_trained_weights_need_a_checkpoint(small_onnx: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "trained.onnx"
    shutil.copy(small_onnx, onnx)
    contract = PreprocessContract.from_json(contract_path_for(small_onnx)).model_copy(update={"weights": "lfw-v1"})
    contract.to_json(contract_path_for(onnx))
    with pytest.raises(EngineError, match=r"needs the checkpoint of expnet_resnet18\.s112@lfw-v1"):
        TorchEngine(onnx)


def test_cpu_ignores_fp16_and_cuda_graphs_and_refuses_missing_cuda(small_onnx: Path) -> None:
    with TorchEngine(small_onnx, device="cpu", fp16=True, cuda_graphs=True, max_batch=1, verify=False) as e:
        assert not e.fp16 and not e.cuda_graphs
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="torch sees no CUDA GPU"):
            TorchEngine(small_onnx, device="cuda", verify=False)


def test_closed_engine_refuses(small_onnx: Path) -> None:
    e = TorchEngine(small_onnx, max_batch=1, verify=False)
    e.close()
    with pytest.raises(EngineError, match="closed"):
        e.infer(_x(1))
