"""Model variants, deterministic init, checkpoints, the Caffe name table and the preprocessing contract."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from expnet_stream.errors import ModelError
from expnet_stream.models import (
    PreprocessContract,
    contract_path_for,
    create_model,
    list_models,
    load_checkpoint,
    save_checkpoint,
)
from expnet_stream.models.resnet import RESNET_CONFIGS, build_resnet

pytestmark = pytest.mark.unit

VARIANTS = ["expnet_resnet101", "expnet_resnet50", "expnet_resnet34", "expnet_resnet18", "expnet_resnet18.s112"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_list_models() -> None:
    assert set(VARIANTS) <= set(list_models())
    assert list_models("expnet_resnet18*") == ["expnet_resnet18", "expnet_resnet18.s112"]


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_forward_shape(name: str) -> None:
    model, contract = create_model(name)
    assert not model.training
    assert contract.model_name == name and contract.num_coeffs == 29
    crops = np.random.default_rng(0).integers(0, 256, (2, contract.crop_size, contract.crop_size, 3), np.uint8)
    with torch.no_grad():
        y = model(torch.from_numpy(contract.normalize(crops)))
    assert y.shape == (2, 29) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert not torch.equal(y[0], y[1])


def test_paper_geometry() -> None:
    _, c101 = create_model("expnet_resnet101")
    assert (c101.input_size, c101.crop_size, c101.crop_expand, c101.channel_order) == (224, 227, 0.25, "BGR")
    _, small = create_model("expnet_resnet18.s112")
    assert (small.input_size, small.crop_size) == (112, 114)


def test_unknown_model() -> None:
    with pytest.raises(ModelError, match="unknown model"):
        create_model("expnet_vgg16")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model.state_dict()


def test_init_is_deterministic_per_seed() -> None:
    a, ca = create_model("expnet_resnet18.s112", seed=0)
    b, _ = create_model("expnet_resnet18.s112", seed=0)
    c, cc = create_model("expnet_resnet18.s112", seed=1)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["trunk.conv1.weight"], sc["trunk.conv1.weight"])
    assert ca.weights == "untrained-random-init-seed0" and cc.weights == "untrained-random-init-seed1"


def test_init_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_model("expnet_resnet18.s112")
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, contract = create_model("expnet_resnet18.s112", seed=3)
    trained = contract.model_copy(update={"weights": "lfw-v1", "basis_id": "mp478-procrustes-pca29/v1"})
    path = save_checkpoint(tmp_path / "m.pt", model, trained)
    loaded, loaded_contract = load_checkpoint(path)
    assert loaded_contract == trained
    assert loaded_contract.trained and loaded_contract.model_id == "expnet_resnet18.s112@lfw-v1"
    s0, s1 = _state(model), _state(loaded)
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
    again, _ = create_model("expnet_resnet18.s112", pretrained_path=path)
    assert torch.equal(_state(again)["fc.weight"], s0["fc.weight"])
    with pytest.raises(ModelError, match="holds"):
        create_model("expnet_resnet18", pretrained_path=path)


def test_checkpoint_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ModelError, match="not an expnet-stream checkpoint"):
        load_checkpoint(other)
    model, contract = create_model("expnet_resnet18.s112")
    wrong = save_checkpoint(tmp_path / "wrong.pt", model, contract.model_copy(update={"model_name": "expnet_resnet34"}))
    with pytest.raises(ModelError, match="does not fit"):
        load_checkpoint(wrong)


@pytest.mark.parametrize("trunk", sorted(RESNET_CONFIGS))
def test_caffe_table_covers_every_trunk_tensor_once(trunk: str) -> None:
    with torch.device("meta"):
        net = build_resnet(trunk)
    table = net.caffe_param_table()
    keys = [p.torch_key for p in table]
    expected = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(expected)
    caffe = [(p.caffe_layer, p.caffe_blob) for p in table]
    assert len(caffe) == len(set(caffe))


def test_caffe_names_resnet101() -> None:
    with torch.device("meta"):
        net = build_resnet("resnet101")
    table = {(p.caffe_layer, p.caffe_blob): p.torch_key for p in net.caffe_param_table()}
    assert len(table) == 104 * 5  # 104 convs, each with a BN of 4 tensors
    assert table[("conv1", "weights")] == "conv1.weight"
    assert table[("bn_conv1", "variance")] == "bn_conv1.running_var"
    assert table[("res2a_branch1", "weights")] == "res2.res2a.branch1.weight"
    assert table[("bn2a_branch1", "scale")] == "res2.res2a.bn_branch1.weight"
    assert table[("res3b3_branch2c", "weights")] == "res3.res3b3.branch2c.weight"
    assert table[("res4b22_branch2a", "weights")] == "res4.res4b22.branch2a.weight"
    assert table[("bn5c_branch2c", "offset")] == "res5.res5c.bn_branch2c.bias"
    assert net.block_names[:4] == ["res2a", "res2b", "res2c", "res3a"]
    assert "res4f" not in net.block_names and "res4b22" in net.block_names
    with torch.device("meta"):
        r50 = build_resnet("resnet50")
    assert "res4f" in r50.block_names


def test_caffe_stride_on_first_1x1() -> None:
    with torch.device("meta"):
        net = build_resnet("resnet50")
    block = net.res3.res3a
    assert block.branch2a.stride == (2, 2) and block.branch2a.kernel_size == (1, 1)
    assert block.branch2b.stride == (1, 1)
    assert block.branch1 is not None and block.branch1.stride == (2, 2)
    assert net.pool1.ceil_mode and net.pool1.padding == 0


def test_trunk_shapes_and_tf_same_stem() -> None:
    for stem in ("caffe", "tf_same"):
        net = build_resnet("resnet18", stem_pad=stem).eval()
        with torch.no_grad():
            x = net.pool1(net.bn_conv1(net.conv1(net.pad1(torch.zeros(1, 3, 224, 224)))))
            assert x.shape == (1, 64, 56, 56)
            assert net(torch.zeros(1, 3, 112, 112)).shape == (1, 512)
    with pytest.raises(ModelError, match="override"):
        build_resnet("resnet18", no_such_field=1)


# -- contract ------------------------------------------------------------------------------------------------------


def test_contract_model_id_is_loud_when_untrained() -> None:
    c = PreprocessContract(model_name="expnet_resnet18")
    assert not c.trained
    assert c.model_id == "expnet_resnet18@UNTRAINED-random-init-seed0"
    assert "UNTRAINED" in c.model_copy(update={"weights": "untrained"}).model_id
    trained = c.model_copy(update={"weights": "lfw-v2"})
    assert trained.trained and trained.model_id == "expnet_resnet18@lfw-v2"


def test_contract_json_round_trip(tmp_path: Path) -> None:
    c = PreprocessContract(model_name="expnet_resnet18", mean_bgr=(1.0, 2.0, 3.0))
    path = c.to_json(contract_path_for(tmp_path / "model.onnx"))
    assert path.name == "model.contract.json"
    assert PreprocessContract.from_json(path) == c
    assert json.loads(path.read_text())["output_name"] == "expr"


def test_contract_rejects_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.contract.json"
    bad.write_text(json.dumps({"model_name": "x", "surprise": 1}))
    with pytest.raises(ModelError, match="surprise"):
        PreprocessContract.from_json(bad)
    with pytest.raises(ModelError, match="cannot read"):
        PreprocessContract.from_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="crop_size"):
        PreprocessContract(model_name="x", input_size=224, crop_size=200)
    with pytest.raises(ValueError):
        PreprocessContract(model_name="x", frozen_field_test=1)  # type: ignore[call-arg]
    c = PreprocessContract(model_name="x")
    with pytest.raises(ValueError):
        c.input_size = 3  # type: ignore[misc]


def test_contract_mean_image(tmp_path: Path) -> None:
    mean = np.full((3, 4, 4), 10.0, np.float32)  # CHW like the official 3DMM_expr_mean.npy
    mean[2] = 30.0
    np.save(tmp_path / "mean.npy", mean)
    c = PreprocessContract(model_name="x", input_size=4, crop_size=4, mean_image_path="mean.npy")
    path = c.to_json(tmp_path / "m.contract.json")
    loaded = PreprocessContract.from_json(path)  # relative path resolves against the JSON's folder
    x = loaded.normalize(np.full((1, 4, 4, 3), 40, np.uint8))
    assert x[0, :, 0, 0].tolist() == [30.0, 30.0, 10.0]
