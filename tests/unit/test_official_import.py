"""Official ExpNet checkpoint import (TF tensor bundle written with the official variable names), parameter counts
against the published ResNet-101, and golden outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from expnet_stream.errors import ModelError
from expnet_stream.models import PreprocessContract, create_model, load_checkpoint
from expnet_stream.models import official as off
from expnet_stream.models.expnet import ExpNet, ExpNetConfig, build_expnet
from expnet_stream.models.resnet import build_resnet
from expnet_stream.models.tf_checkpoint import write_checkpoint

pytestmark = pytest.mark.unit


def _tf_layout(value: torch.Tensor) -> npt.NDArray[np.float32]:
    arr = value.detach().numpy()
    if arr.ndim == 4:
        arr = arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO (kaffe / TF)
    elif arr.ndim == 2:
        arr = arr.T  # (29, 2048) -> (2048, 29) as exprCNN_fc1/weights
    return np.ascontiguousarray(arr, np.float32)


def _official_tensors(model: ExpNet, scope: str = "exprCNN") -> dict[str, npt.NDArray[np.float32]]:
    sd = model.state_dict()
    return {name: _tf_layout(sd[key]) for key, name in off.official_variable_names(model, scope).items()}


def _randomise_bn(model: ExpNet, seed: int) -> None:
    """Non-trivial BN statistics so that a mapping mix-up (mean <-> variance, scale <-> offset) shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, torch.nn.Linear):
                m.bias.copy_(torch.randn(m.out_features, generator=g))


def _release(root: Path, model: ExpNet, *, head_in_ckpt: bool = True, npz: bool = False) -> Path:
    """Write a fake release in the repository layout: Expression_Model/ (ckpt + mean), ResNet/ (head npz)."""
    tensors = _official_tensors(model)
    if not head_in_ckpt:
        del tensors["exprCNN/exprCNN_fc1/weights"], tensors["exprCNN/exprCNN_fc1/biases"]
    tensors["global_step"] = np.asarray(1000, np.int64)  # extra variables are ignored
    (root / "Expression_Model").mkdir(parents=True)
    write_checkpoint(root / "Expression_Model" / "ini_exprNet_model.ckpt", tensors)
    mean = np.random.default_rng(0).uniform(60, 180, (3, 224, 224)).astype(np.float32)
    np.save(root / "Expression_Model" / "3DMM_expr_mean.npy", mean)
    if npz:
        (root / "ResNet").mkdir()
        np.savez(
            root / "ResNet" / "ExpNet_fc_weights.npz",
            ini_weights_expr=_tf_layout(model.fc.weight).ravel(),
            ini_biases_expr=model.fc.bias.detach().numpy(),
        )
    return root


@dataclass
class _Release:
    root: Path
    source: ExpNet
    model: ExpNet
    contract: PreprocessContract


@pytest.fixture(scope="module")
def r101_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Release]:
    """A full-size ResNet-101 release (170 MB in tmp, the real name table), written and imported once."""
    source = build_expnet(off.OFFICIAL_CONFIG, seed=7)
    _randomise_bn(source, 7)
    root = _release(tmp_path_factory.mktemp("official"), source)
    model, contract = off.import_official(root)
    yield _Release(root, source, model, contract)


def _conv1_bn_relu_reference(x_nchw: npt.NDArray[np.float32], t: dict[str, npt.NDArray[np.float32]]) -> np.ndarray:
    """conv1 (TF SAME: pad 2 top/left, 3 bottom/right, stride 2, HWIO kernel) + bn_conv1 + ReLU in numpy, NHWC."""
    x = x_nchw.transpose(0, 2, 3, 1).astype(np.float64)
    x = np.pad(x, ((0, 0), (2, 3), (2, 3), (0, 0)))
    w = t["exprCNN/conv1/weights"].astype(np.float64)  # (7, 7, 3, 64)
    win = np.lib.stride_tricks.sliding_window_view(x, (7, 7), axis=(1, 2))[:, ::2, ::2]  # (N, 112, 112, 3, 7, 7)
    y = np.tensordot(win, w.transpose(2, 0, 1, 3), axes=([3, 4, 5], [0, 1, 2]))  # (N, 112, 112, 64)
    bn = {k: t[f"exprCNN/bn_conv1/{k}"].astype(np.float64) for k in ("mean", "variance", "scale", "offset")}
    y = (y - bn["mean"]) / np.sqrt(bn["variance"] + 1e-5) * bn["scale"] + bn["offset"]
    return np.maximum(y, 0.0).transpose(0, 3, 1, 2)


def test_official_names_follow_the_release_graph() -> None:
    with torch.device("meta"):
        model = ExpNet(build_resnet("resnet101", stem_pad="tf_same"))
    names = off.official_variable_names(model)
    assert names["trunk.conv1.weight"] == "exprCNN/conv1/weights"
    assert names["trunk.bn_conv1.running_var"] == "exprCNN/bn_conv1/variance"
    assert names["trunk.res2.res2a.branch1.weight"] == "exprCNN/res2a_branch1/weights"
    assert names["trunk.res2.res2a.bn_branch1.weight"] == "exprCNN/bn2a_branch1/scale"
    assert names["trunk.res4.res4b22.branch2c.weight"] == "exprCNN/res4b22_branch2c/weights"
    assert names["trunk.res5.res5c.bn_branch2c.bias"] == "exprCNN/bn5c_branch2c/offset"
    assert names["fc.weight"] == "exprCNN/exprCNN_fc1/weights"
    # ThreeDMM_expr.py: 104 convs (conv1, 4 projections, 33 blocks x 3) and as many batch norms, no conv biases.
    layers = {n.split("/")[1] for n in names.values()}
    assert sum(1 for n in layers if n == "conv1" or n.startswith("res")) == 104
    assert sum(1 for n in layers if n.startswith("bn")) == 104
    assert len(names) == 104 + 104 * 4 + 2


def test_import_official_resnet101(r101_release: _Release) -> None:
    model, contract = r101_release.model, r101_release.contract
    src_tf = _official_tensors(r101_release.source)
    got = model.state_dict()
    for key, tf_name in off.official_variable_names(model).items():
        np.testing.assert_array_equal(_tf_layout(got[key]), src_tf[tf_name], err_msg=f"{key} <- {tf_name}")
    for key, value in r101_release.source.state_dict().items():
        assert torch.equal(got[key], value), key
    assert contract.model_name == off.OFFICIAL_MODEL_NAME
    assert (contract.basis_id, contract.weights) == ("expnet-official-bfm29", "official-expnet")
    assert contract.trained and contract.model_id == "expnet_resnet101.tf_same@official-expnet"
    assert (contract.input_size, contract.crop_size, contract.crop_to_input) == (224, 227, "resize_tf1_bilinear")
    mean = contract.mean_image()  # the CHW official file, served as HWC
    assert mean.shape == (224, 224, 3)
    np.testing.assert_array_equal(
        mean, np.load(r101_release.root / "Expression_Model" / "3DMM_expr_mean.npy").transpose(1, 2, 0)
    )

    # Golden check computed from the TF tensors alone: conv1 (TF SAME padding) + bn_conv1 + ReLU.
    x = np.random.default_rng(1).uniform(-120, 120, (1, 3, 224, 224)).astype(np.float32)
    ref = _conv1_bn_relu_reference(x, src_tf)
    trunk = model.trunk
    with torch.no_grad():
        y = trunk.relu(trunk.bn_conv1(trunk.conv1(trunk.pad1(torch.from_numpy(x))))).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-3)


def test_save_official_round_trip(r101_release: _Release, tmp_path: Path) -> None:
    out = tmp_path / "out" / "expnet_official.pt"
    ckpt, onnx = off.save_official(r101_release.model, r101_release.contract, out)
    assert onnx is None and ckpt.is_file()
    assert (tmp_path / "out" / "expnet_official.mean.npy").is_file()
    model, contract = load_checkpoint(ckpt)
    assert contract.mean_image_path == "expnet_official.mean.npy"  # relative: travels with the checkpoint
    assert type(model.trunk.pad1).__name__ == "ZeroPad2d"  # the TF SAME stem survives the reload
    for key, value in r101_release.source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.fixture()
def small_official(monkeypatch: pytest.MonkeyPatch) -> ExpNetConfig:
    """Run the importer on a ResNet-18 trunk (same code path and naming scheme, 40x less data)."""
    cfg = ExpNetConfig("resnet18", trunk_overrides={"stem_pad": "tf_same"})
    monkeypatch.setattr(off, "OFFICIAL_CONFIG", cfg)
    return cfg


def test_head_from_npz_when_checkpoint_lacks_it(small_official: ExpNetConfig, tmp_path: Path) -> None:
    source = build_expnet(small_official, seed=3)
    _randomise_bn(source, 3)
    root = _release(tmp_path, source, head_in_ckpt=False, npz=True)
    model, _ = off.import_official(root)
    assert torch.equal(model.fc.weight, source.fc.weight) and torch.equal(model.fc.bias, source.fc.bias)
    (root / "ResNet" / "ExpNet_fc_weights.npz").unlink()
    with pytest.raises(ModelError, match="no exprCNN_fc1 head"):
        off.import_official(root)


def test_checkpoint_head_wins_over_npz(small_official: ExpNetConfig, tmp_path: Path) -> None:
    source = build_expnet(small_official, seed=4)
    _randomise_bn(source, 4)
    root = _release(tmp_path, source, npz=True)
    stale = np.zeros((512 * 29,), np.float32)  # the npz only initialises; the graph restores the checkpoint over it
    np.savez(root / "ResNet" / "ExpNet_fc_weights.npz", ini_weights_expr=stale, ini_biases_expr=np.zeros(29))
    model, _ = off.import_official(root)
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_onnx_export_carries_mean_and_contract(small_official: ExpNetConfig, tmp_path: Path) -> None:
    from expnet_stream.models import contract_path_for

    source = build_expnet(small_official, seed=5)
    root = _release(tmp_path / "rel", source)
    _, onnx = off.convert_official(root, tmp_path / "o" / "m.pt", onnx=tmp_path / "x" / "m.onnx")
    assert onnx is not None and onnx.is_file()
    data = json.loads(contract_path_for(onnx).read_text())
    assert data["mean_image_path"] == "m.mean.npy" and data["basis_id"] == "expnet-official-bfm29"
    contract = PreprocessContract.from_json(contract_path_for(onnx))
    assert contract.mean_image().shape == (224, 224, 3)  # resolved next to the ONNX file


def test_import_errors(small_official: ExpNetConfig, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a folder"):
        off.import_official(tmp_path / "missing")
    with pytest.raises(ModelError, match=r"no ini_exprNet_model\.ckpt\.index"):
        off.import_official(tmp_path)
    (tmp_path / "ini_exprNet_model.ckpt").write_bytes(b"\0" * 64)
    with pytest.raises(ModelError, match="V1"):
        off.import_official(tmp_path)
    source = build_expnet(small_official, seed=6)
    tensors = _official_tensors(source)
    del tensors["exprCNN/res3a_branch1/weights"]
    write_checkpoint(tmp_path / "v2" / "ini_exprNet_model.ckpt", tensors)
    with pytest.raises(ModelError, match=r"3DMM_expr_mean\.npy"):
        off.import_official(tmp_path / "v2")
    np.save(tmp_path / "v2" / "3DMM_expr_mean.npy", np.zeros((3, 224, 224), np.float32))
    with pytest.raises(ModelError, match=r"missing from the official checkpoint, e\.g\. \['exprCNN/res3a_branch1"):
        off.import_official(tmp_path / "v2")
    tensors["exprCNN/res3a_branch1/weights"] = np.zeros((1, 1, 64, 64), np.float32)  # wrong shape
    write_checkpoint(tmp_path / "v3" / "ini_exprNet_model.ckpt", tensors)
    np.save(tmp_path / "v3" / "3DMM_expr_mean.npy", np.zeros((3, 100, 100), np.float32))
    with pytest.raises(ModelError, match="does not fit"):
        off.import_official(tmp_path / "v3")


def test_unscoped_checkpoint_is_found(small_official: ExpNetConfig, tmp_path: Path) -> None:
    source = build_expnet(small_official, seed=8)
    write_checkpoint(tmp_path / "ini_exprNet_model.ckpt", _official_tensors(source, scope=""))
    np.save(tmp_path / "3DMM_expr_mean.npy", np.zeros((3, 224, 224), np.float32))
    model, _ = off.import_official(tmp_path)
    assert torch.equal(model.trunk.conv1.weight, source.trunk.conv1.weight)


# ---------------------------------------------------------------------------------------------------------------------
# Parameter counts and golden outputs
# ---------------------------------------------------------------------------------------------------------------------

TORCHVISION_RESNET101_PARAMS = 44_549_160  # published count, including the 1000-way fc
IMAGENET_FC_PARAMS = 2048 * 1000 + 1000


def test_parameter_counts_match_published_resnet101() -> None:
    with torch.device("meta"):
        trunk = build_resnet("resnet101")
        model = ExpNet(build_resnet("resnet101", stem_pad="tf_same"))
    trunk_params = sum(p.numel() for p in trunk.parameters())
    assert trunk_params == TORCHVISION_RESNET101_PARAMS - IMAGENET_FC_PARAMS == 42_500_160
    assert sum(p.numel() for p in model.fc.parameters()) == 2048 * 29 + 29 == 59_421
    assert sum(p.numel() for p in model.parameters()) == 42_559_581  # the stem padding variant adds nothing
    # BN running statistics (Caffe BatchNorm blobs) on top: 2 per BN channel.
    bn_channels = sum(m.num_features for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(b.numel() for n, b in trunk.named_buffers() if "running" in n) == 2 * bn_channels


# expnet_resnet18.s112, seed 0, input torch.rand(1, 3, 112, 112, Generator seed 1234) * 255 - 127.5; computed once.
GOLDEN_R18_S112 = [6.76389217376709, 3.8259902000427246, 3.706251859664917, 4.535287857055664, 2.8692245483398438]


def test_golden_output_expnet_resnet18_s112() -> None:
    model, contract = create_model("expnet_resnet18.s112", seed=0)
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(1, 3, contract.input_size, contract.input_size, generator=g) * 255.0 - 127.5
    with torch.no_grad():
        y = model(x)
    np.testing.assert_allclose(y[0, :5].numpy(), GOLDEN_R18_S112, rtol=1e-4, atol=1e-4)
