"""Import the officially released ExpNet weights (fengju514/Expression-Net) into the torch model, without TensorFlow.

The release (``Expression_Model.tar.gz`` + the repository's ``ResNet/`` folder) holds:

* ``ini_exprNet_model.ckpt`` (``.index`` + ``.data-00000-of-00001``): a TF V2 checkpoint written by a ``tf.train.Saver``
  over ``GLOBAL_VARIABLES`` of scope ``exprCNN`` (``main_ExpShapePoseNet.py``). The trunk is the MSRA Caffe
  ResNet-101 converted with caffe-tensorflow (``ResNet/ThreeDMM_expr.py`` over ``kaffe/tensorflow/network_expr.py``):
  every layer is a ``tf.variable_scope(<caffe layer name>)`` with ``tf.get_variable`` names, so the variables are
  ``exprCNN/conv1/weights`` (HWIO), ``exprCNN/bn_conv1/{mean,variance,scale,offset}``,
  ``exprCNN/res2a_branch1/weights``, ``exprCNN/bn2a_branch1/...``, ..., ``exprCNN/res4b22_branch2c/weights``,
  ``exprCNN/bn5c_branch2c/...``. The convs have no bias (``biased=False``). Batch norms are
  ``tf.nn.batch_normalization(variance_epsilon=1e-5)`` with scale/offset (Caffe's BatchNorm + Scale layers folded
  by kaffe), which is torch ``BatchNorm2d(eps=1e-5)`` in eval mode.
* The head ``exprCNN/exprCNN_fc1/{weights (2048, 29), biases (29)}`` (``pool5 @ weights + biases``). The graph
  initialises it from ``ResNet/ExpNet_fc_weights.npz`` (``ini_weights_expr``, ``ini_biases_expr``) and then restores
  the checkpoint over it, so the checkpoint's head wins; the npz is the fallback when the checkpoint lacks it.
* ``3DMM_expr_mean.npy``: the mean image, ``(3, 224, 224)`` channels-first, [0, 255], subtracted from the BGR input
  after the 227 -> 224 TF1 bilinear resize (the contract's defaults reproduce that preprocessing).
* kaffe emits ``padding='SAME'`` for every conv and pool; for conv1 (7x7/2 on 224) that pads 2 top/left and 3
  bottom/right instead of Caffe's 3/3, so the imported model uses the ``stem_pad="tf_same"`` trunk
  (:data:`OFFICIAL_MODEL_NAME`). All other SAME paddings equal the Caffe ones.

Coefficients of the official model refer to the 29 expression components of the release's modified Basel Face Model
(``BaselFaceModel_mod.mat``, not redistributable): basis id :data:`OFFICIAL_BASIS_ID`, which this project cannot ship.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ..errors import ModelError
from .contract import PreprocessContract, contract_path_for
from .expnet import ExpNet, ExpNetConfig, build_expnet, untrained_weights_tag
from .registry import list_models, register_model, save_checkpoint
from .tf_checkpoint import list_checkpoint, read_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL_BASIS_ID",
    "OFFICIAL_CONFIG",
    "OFFICIAL_MODEL_NAME",
    "OFFICIAL_SCOPE",
    "OFFICIAL_WEIGHTS_TAG",
    "OfficialFiles",
    "convert_official",
    "find_official_files",
    "import_official",
    "official_variable_names",
    "save_official",
    "state_dict_from_tf",
]

OFFICIAL_MODEL_NAME = "expnet_resnet101.tf_same"
OFFICIAL_CONFIG = ExpNetConfig("resnet101", trunk_overrides={"stem_pad": "tf_same"})
OFFICIAL_BASIS_ID = "expnet-official-bfm29"
OFFICIAL_WEIGHTS_TAG = "official-expnet"
OFFICIAL_SCOPE = "exprCNN"
HEAD_LAYER = "exprCNN_fc1"
CHECKPOINT_PREFIX = "ini_exprNet_model.ckpt"
MEAN_IMAGE = "3DMM_expr_mean.npy"
FC_NPZ = "ExpNet_fc_weights.npz"
# Where the release keeps each file relative to the repository root; DIR itself is searched first.
_SUBDIRS = ("", "Expression_Model", "ResNet")


# ---------------------------------------------------------------------------------------------------------------------
# Registry entry for the TF-padded ResNet-101 (so checkpoints of imported weights load with load_checkpoint)
# ---------------------------------------------------------------------------------------------------------------------


def _official_entrypoint(*, seed: int | None = 0) -> tuple[ExpNet, PreprocessContract]:
    model = build_expnet(OFFICIAL_CONFIG, seed=seed)
    contract = PreprocessContract(
        model_name=OFFICIAL_MODEL_NAME,
        weights=untrained_weights_tag(seed) if seed is not None else "untrained-uninitialised",
    )
    return model, contract


def ensure_registered() -> None:
    """Register :data:`OFFICIAL_MODEL_NAME` unless the built-in variants already do."""
    if OFFICIAL_MODEL_NAME not in list_models():
        register_model(OFFICIAL_MODEL_NAME)(_official_entrypoint)


# ---------------------------------------------------------------------------------------------------------------------
# Files and names
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfficialFiles:
    """The release files found under a folder: checkpoint prefix, mean image and (optional) head npz."""

    checkpoint: Path
    mean_image: Path
    fc_npz: Path | None


def _find(directory: Path, name: str, *, index: bool = False) -> Path | None:
    for sub in _SUBDIRS:
        candidate = directory / sub / name
        if (candidate.with_name(candidate.name + ".index") if index else candidate).is_file():
            return candidate
    return None


def find_official_files(directory: str | os.PathLike[str]) -> OfficialFiles:
    """Locate the release files in ``directory`` or its ``Expression_Model/`` and ``ResNet/`` subfolders."""
    root = Path(directory)
    if not root.is_dir():
        raise ModelError(f"{root} is not a folder (give the folder holding {CHECKPOINT_PREFIX}.index)")
    ckpt = _find(root, CHECKPOINT_PREFIX, index=True)
    if ckpt is None:
        if _find(root, CHECKPOINT_PREFIX) is not None:
            raise ModelError(
                f"{CHECKPOINT_PREFIX} under {root} is a single file (TF V1 checkpoint); only V2 (.index + .data) is "
                "supported"
            )
        raise ModelError(f"no {CHECKPOINT_PREFIX}.index under {root} (searched {', '.join(_SUBDIRS[1:])} too)")
    mean = _find(root, MEAN_IMAGE)
    if mean is None:
        raise ModelError(f"no {MEAN_IMAGE} under {root}: the official model needs its mean image")
    return OfficialFiles(checkpoint=ckpt, mean_image=mean, fc_npz=_find(root, FC_NPZ))


def official_variable_names(model: ExpNet, scope: str = OFFICIAL_SCOPE) -> dict[str, str]:
    """``torch state_dict key -> TF variable name`` for ``model`` (any Caffe-named trunk), e.g.
    ``trunk.res4.res4b22.branch2a.weight -> exprCNN/res4b22_branch2a/weights``."""
    pre = f"{scope}/" if scope else ""
    names = {f"trunk.{p.torch_key}": f"{pre}{p.caffe_layer}/{p.caffe_blob}" for p in model.trunk.caffe_param_table()}
    names["fc.weight"] = f"{pre}{HEAD_LAYER}/weights"
    names["fc.bias"] = f"{pre}{HEAD_LAYER}/biases"
    return names


def _detect_scope(names: list[str]) -> str:
    scopes = sorted(n[: -len("conv1/weights")].rstrip("/") for n in names if n.endswith("conv1/weights"))
    scopes = [s for s in scopes if not s.endswith("_")]  # e.g. "foo_conv1/weights" is another layer
    if OFFICIAL_SCOPE in scopes:
        return OFFICIAL_SCOPE
    if len(scopes) == 1:
        logger.warning("official checkpoint scope is %r, not %r", scopes[0], OFFICIAL_SCOPE)
        return scopes[0]
    raise ModelError(f"cannot find the ExpNet trunk in the checkpoint (conv1/weights under scopes {scopes})")


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------------


def _converted(tf_name: str, value: npt.NDArray[np.generic], target: torch.Tensor) -> torch.Tensor:
    arr = np.asarray(value, np.float32)
    if target.ndim == 4:
        arr = arr.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif target.ndim == 2:
        arr = arr.T  # (in, out) -> (out, in)
    if tuple(arr.shape) != tuple(target.shape):
        raise ModelError(f"{tf_name}: shape {tuple(value.shape)} does not fit {tuple(target.shape)} after conversion")
    return torch.from_numpy(np.ascontiguousarray(arr))


def state_dict_from_tf(
    model: ExpNet, tensors: dict[str, npt.NDArray[np.generic]], scope: str = OFFICIAL_SCOPE
) -> dict[str, torch.Tensor]:
    """A complete ``model.state_dict()`` from TF variables named as in :func:`official_variable_names`.

    Conv weights HWIO -> OIHW, the head (2048, 29) -> (29, 2048); BN mean/variance/scale/offset -> running_mean,
    running_var, weight, bias. ``num_batches_tracked`` is 0. Missing variables raise ModelError listing them.
    """
    target = model.state_dict()
    names = official_variable_names(model, scope)
    missing = sorted(v for v in names.values() if v not in tensors)
    if missing:
        raise ModelError(f"{len(missing)} variables missing from the official checkpoint, e.g. {missing[:5]}")
    state: dict[str, torch.Tensor] = {}
    for key, tf_name in names.items():
        state[key] = _converted(tf_name, tensors[tf_name], target[key])
    for key, value in target.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    unmapped = sorted(set(target) - set(state))
    if unmapped:
        raise ModelError(f"no official variable for model tensors {unmapped[:5]}")
    return state


def _head_from_npz(path: Path, feat_dim: int) -> dict[str, npt.NDArray[np.float32]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            weights = np.asarray(npz["ini_weights_expr"], np.float32).reshape(feat_dim, -1)
            biases = np.asarray(npz["ini_biases_expr"], np.float32).reshape(-1)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"cannot read the ExpNet head from {path}: {exc}") from exc
    return {"weights": weights, "biases": biases}


def _check_mean_image(path: Path, size: int) -> None:
    try:
        mean = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the official mean image {path}: {exc}") from exc
    if mean.shape not in ((3, size, size), (size, size, 3)):
        raise ModelError(f"{path}: mean image must be (3, {size}, {size}) (or HWC), got {mean.shape}")
    if not np.all(np.isfinite(mean)) or mean.min() < 0 or mean.max() > 255:
        raise ModelError(f"{path}: mean image values must be finite and within [0, 255]")


def import_official(directory: str | os.PathLike[str], *, verify: bool = True) -> tuple[ExpNet, PreprocessContract]:
    """Read the official ExpNet release in ``directory`` into ``(model, contract)`` (model in eval mode).

    The contract names :data:`OFFICIAL_MODEL_NAME`, basis :data:`OFFICIAL_BASIS_ID`, weights
    :data:`OFFICIAL_WEIGHTS_TAG` and the release's mean image by absolute path (:func:`convert_official` copies it
    next to the checkpoint and makes the path relative). ``verify`` checks the data crc32c of every tensor.
    """
    files = find_official_files(directory)
    ensure_registered()
    model = build_expnet(OFFICIAL_CONFIG, seed=None)
    info = list_checkpoint(files.checkpoint)
    scope = _detect_scope(list(info))
    names = official_variable_names(model, scope)
    head_keys = {names["fc.weight"], names["fc.bias"]}
    wanted = [n for n in names.values() if n in info]
    tensors = read_checkpoint(files.checkpoint, wanted, verify=verify)
    if not head_keys <= tensors.keys():
        if files.fc_npz is None:
            raise ModelError(f"the checkpoint has no {HEAD_LAYER} head and no {FC_NPZ} was found next to it")
        logger.info("official head not in the checkpoint; using %s", files.fc_npz)
        head = _head_from_npz(files.fc_npz, model.trunk.feat_dim)
        tensors[names["fc.weight"]], tensors[names["fc.bias"]] = head["weights"], head["biases"]
    elif files.fc_npz is not None:
        head = _head_from_npz(files.fc_npz, model.trunk.feat_dim)
        same = np.array_equal(head["weights"], tensors[names["fc.weight"]])
        logger.info("official head taken from the checkpoint (as the release's graph does); npz identical=%s", same)
    extra = sorted(set(info) - set(wanted) - head_keys)
    if extra:
        logger.info("ignoring %d checkpoint variables outside the ExpNet graph, e.g. %s", len(extra), extra[:3])
    model.load_state_dict(state_dict_from_tf(model, tensors, scope), strict=True)
    _check_mean_image(files.mean_image, OFFICIAL_CONFIG.input_size)
    contract = PreprocessContract(
        model_name=OFFICIAL_MODEL_NAME,
        input_size=OFFICIAL_CONFIG.input_size,
        crop_size=OFFICIAL_CONFIG.crop_size,
        num_coeffs=OFFICIAL_CONFIG.num_coeffs,
        mean_image_path=str(files.mean_image.resolve()),
        basis_id=OFFICIAL_BASIS_ID,
        weights=OFFICIAL_WEIGHTS_TAG,
    )
    logger.info("imported official ExpNet checkpoint=%s scope=%s tensors=%d", files.checkpoint, scope, len(tensors))
    return model.eval(), contract


def _with_mean_copy(contract: PreprocessContract, dest_file: Path) -> PreprocessContract:
    """Copy the contract's mean image to ``<dest stem>.mean.npy`` beside ``dest_file``; return the contract using it."""
    if contract.mean_image_path is None:
        return contract
    mean_name = f"{dest_file.stem}.mean.npy"
    try:
        shutil.copyfile(contract.mean_image_path, dest_file.parent / mean_name)
    except OSError as exc:
        raise ModelError(f"cannot copy the mean image next to {dest_file}: {exc}") from exc
    return contract.model_copy(update={"mean_image_path": mean_name})


def save_official(
    model: ExpNet,
    contract: PreprocessContract,
    out: str | os.PathLike[str],
    *,
    onnx: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path | None]:
    """Save an imported model as a checkpoint at ``out`` (+ ``<stem>.mean.npy`` beside it) and optionally export
    ONNX (+ its contract and mean image). Returns ``(checkpoint, onnx or None)``.

    The mean image path in the saved contracts is relative: it resolves against the folder of the contract JSON
    (ONNX) or, for the checkpoint, the checkpoint's folder.
    """
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(out_path, model, _with_mean_copy(contract, out_path))
    onnx_path: Path | None = None
    if onnx is not None:
        from .export import export_onnx

        onnx_path = Path(onnx)
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        onnx_path = export_onnx(model, _with_mean_copy(contract, onnx_path), onnx_path)
        logger.info("official contract written path=%s", contract_path_for(onnx_path))
    return ckpt, onnx_path


def convert_official(
    directory: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    onnx: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> tuple[Path, Path | None]:
    """``import-official``: :func:`import_official` then :func:`save_official`."""
    model, contract = import_official(directory, verify=verify)
    return save_official(model, contract, out, onnx=onnx)
