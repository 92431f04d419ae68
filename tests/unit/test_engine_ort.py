"""ONNX export checked against torch, and the ONNX Runtime engine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from expnet_stream.engines import OrtEngine, create_engine
from expnet_stream.errors import EngineError, ExportError, ModelError
from expnet_stream.models import PreprocessContract, contract_path_for, create_model, ensure_onnx, export_onnx
from expnet_stream.models.expnet import ExpNet
from expnet_stream.models.export import file_sha256, onnx_cache_path

pytestmark = pytest.mark.unit

NAME = "expnet_resnet18.s112"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExpNet, PreprocessContract]:
    torch.set_num_threads(1)
    model, contract = create_model(NAME, seed=0)
    path = export_onnx(model, contract, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return path, model, contract


def _batch(contract: PreprocessContract, n: int, seed: int = 0) -> np.ndarray:
    crops = np.random.default_rng(seed).integers(0, 256, (n, contract.crop_size, contract.crop_size, 3), np.uint8)
    return contract.normalize(crops)


def test_export_writes_one_checked_file_and_contract(exported: tuple[Path, ExpNet, PreprocessContract]) -> None:
    path, _, contract = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.contract.json", "model.onnx"]  # no temp, no data
    assert PreprocessContract.from_json(contract_path_for(path)) == contract
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["expnet.model_id"] == "expnet_resnet18.s112@UNTRAINED-random-init-seed0"
    assert PreprocessContract.model_validate_json(meta["expnet.contract"]) == contract
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["expr"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert len(file_sha256(path)) == 64


def test_ort_matches_torch(exported: tuple[Path, ExpNet, PreprocessContract]) -> None:
    path, model, contract = exported
    x = _batch(contract, 4)
    with OrtEngine(path, intra_op_threads=1) as engine:
        got = engine.infer(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == (4, 29) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_export_mismatch_raises(tmp_path: Path) -> None:
    model, contract = create_model(NAME, seed=0)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="max abs diff"):
        export_onnx(model, contract, out, atol=-1.0, rtol=0.0)
    assert list(tmp_path.iterdir()) == []  # neither the model, nor its contract, nor a temp file


def test_engine_chunks_large_batches(exported: tuple[Path, ExpNet, PreprocessContract]) -> None:
    path, _, contract = exported
    x = _batch(contract, 5, seed=1)
    with OrtEngine(path, max_batch=2, intra_op_threads=1) as small, OrtEngine(path, intra_op_threads=1) as big:
        assert small.model_id == contract.model_id and small.name == "onnxruntime"
        chunked = small.infer(x)
        whole = big.infer(x)
        singles = np.concatenate([big.infer(x[i : i + 1]) for i in range(5)])
        assert small.infer(x[:0]).shape == (0, 29)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(singles, whole, rtol=1e-5, atol=1e-5)


def test_engine_errors(exported: tuple[Path, ExpNet, PreprocessContract], tmp_path: Path) -> None:
    path, _, contract = exported
    engine = create_engine("onnxruntime", path, max_batch=4, intra_op_threads=1)
    with pytest.raises(EngineError, match="expects float32"):
        engine.infer(np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(EngineError, match="expects float32"):
        engine.infer(np.zeros((1, 3, 112, 112), np.float64))
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.infer(_batch(contract, 1))
    with pytest.raises(EngineError, match="needs plan_dir"):
        create_engine("tensorrt", path)
    with pytest.raises(EngineError, match="unknown engine"):
        create_engine("openvino", path)
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match="cannot read contract"):
        OrtEngine(lonely)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    contract.to_json(contract_path_for(broken))
    with pytest.raises(EngineError, match="cannot load"):
        OrtEngine(broken)
    other = contract.model_copy(update={"input_size": 96, "crop_size": 98})
    with pytest.raises(EngineError, match="input shape"):
        OrtEngine(path, contract=other)


def test_ensure_onnx_caches(exported: tuple[Path, ExpNet, PreprocessContract], tmp_path: Path) -> None:
    first = ensure_onnx(NAME, tmp_path)
    assert file_sha256(first) == file_sha256(exported[0])  # same name + seed => byte-identical ONNX
    assert first == onnx_cache_path(NAME, "untrained-random-init-seed0", tmp_path)
    assert first.name == "expnet_resnet18.s112@untrained-random-init-seed0.onnx"
    assert contract_path_for(first).is_file()
    stamp = first.stat().st_mtime_ns
    assert ensure_onnx(NAME, tmp_path) == first
    assert first.stat().st_mtime_ns == stamp


def test_runtime_path_does_not_import_torch() -> None:
    """The worker needs only ONNX Runtime: engines, crop and contract must import without torch."""
    code = (
        "import sys, expnet_stream.engines, expnet_stream.faces.crop, expnet_stream.models; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
