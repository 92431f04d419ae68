"""Caffe/MSRA-style ResNet trunks in plain torch (the trunk of ExpNet).

ExpNet's official release (fengju514/Expression-Net, ``ResNet/ThreeDMM_expr.py``) is the MSRA Caffe ResNet-101
converted to TensorFlow with caffe-tensorflow ("kaffe"). This module rebuilds that trunk so that a checkpoint converted
from it maps one to one, and offers lighter trunks for CPU fleets. Differences from torchvision's ResNet:

* In a bottleneck block the stride sits on the FIRST 1x1 conv (``branch2a``), not on the 3x3 conv.
* ``pool1`` is a 3x3/2 max pool without padding in Caffe's ceil mode (same output size and values as the TF
  ``SAME`` pooling of the converted model).
* Submodules carry Caffe layer names: ``conv1``, ``bn_conv1``, stages ``res2``..``res5`` holding blocks named
  ``res2a``, ``res2b``, ... (ResNet-101: ``res3b1``..``res3b3``, ``res4b1``..``res4b22``), and inside a block
  ``branch2a``/``bn_branch2a``, ``branch2b``/``bn_branch2b``, ``branch2c``/``bn_branch2c`` and the projection
  shortcut ``branch1``/``bn_branch1``. :meth:`ResNetTrunk.caffe_param_table` lists every parameter and BN buffer
  with its Caffe layer name (``res4b22_branch2a``, ``bn4b22_branch2a``, ...), see :class:`CaffeParam`.

File order follows timm: blocks, model, builder, configs.

>>> trunk = build_resnet("resnet18")
>>> trunk.feat_dim, next(iter(trunk.caffe_param_table()))
(512, CaffeParam(caffe_layer='conv1', caffe_blob='weights', torch_key='conv1.weight'))
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from ..errors import ModelError

logger = logging.getLogger(__name__)

__all__ = [
    "RESNET_CONFIGS",
    "BasicBlock",
    "Bottleneck",
    "CaffeParam",
    "ResNetConfig",
    "ResNetTrunk",
    "build_resnet",
    "init_weights",
]


class CaffeParam(NamedTuple):
    """One trunk tensor and where it lives in a Caffe/kaffe ResNet.

    Attributes:
        caffe_layer: Caffe layer name, e.g. ``conv1``, ``bn_conv1``, ``res4b22_branch2a``, ``bn4b22_branch2a``.
        caffe_blob: blob name as caffe-tensorflow (kaffe) stores it, which is what the official ExpNet TF checkpoint
            holds (variables ``<layer>/<blob>``): ``weights`` for convs; ``mean``, ``variance``, ``scale``, ``offset``
            for batch norms. In a raw Caffe model, ``scale``/``offset`` are blobs 0/1 of the separate Scale layer
            (``bn_conv1`` -> ``scale_conv1``, ``bn2a_branch2a`` -> ``scale2a_branch2a``), and ``mean``/``variance``
            are BatchNorm blobs 0/1 divided by blob 2 (the moving-average factor).
        torch_key: key in ``ResNetTrunk.state_dict()``. Conv weights are OIHW in torch and Caffe; kaffe TF stores HWIO
            (transpose ``(3, 2, 0, 1)`` to load).
    """

    caffe_layer: str
    caffe_blob: str
    torch_key: str


_BN_BLOBS = (("mean", "running_mean"), ("variance", "running_var"), ("scale", "weight"), ("offset", "bias"))


def _bn(channels: int) -> nn.BatchNorm2d:
    # Caffe's BatchNorm eps and torch's default agree (1e-5).
    return nn.BatchNorm2d(channels, eps=1e-5)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


# ---------------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------------


class _CaffeBlock(nn.Module):
    """Shared parts of the residual blocks: projection shortcut and the Caffe name table."""

    branches: tuple[str, ...] = ()
    expansion: int = 1

    def _init_shortcut(self, in_ch: int, out_ch: int, stride: int) -> None:
        self.branch1: nn.Conv2d | None = None
        self.bn_branch1: nn.BatchNorm2d | None = None
        if stride != 1 or in_ch != out_ch:
            self.branch1 = _conv(in_ch, out_ch, 1, stride)
            self.bn_branch1 = _bn(out_ch)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None or self.bn_branch1 is None:
            return x
        out: torch.Tensor = self.bn_branch1(self.branch1(x))
        return out

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN that closes the residual branch (its gamma is scaled down at init)."""
        bn = getattr(self, f"bn_{self.branches[-1]}")
        if not isinstance(bn, nn.BatchNorm2d):
            raise ModelError(f"block has no batch norm bn_{self.branches[-1]}")
        return bn

    def caffe_params(self, block_name: str, prefix: str) -> Iterator[CaffeParam]:
        """Yield the block's tensors; ``block_name`` is e.g. ``res4b22``, ``prefix`` its state_dict prefix."""
        block_id = block_name.removeprefix("res")  # "4b22"
        names = (*(("branch1",) if self.branch1 is not None else ()), *self.branches)
        for branch in names:
            yield CaffeParam(f"res{block_id}_{branch}", "weights", f"{prefix}{branch}.weight")
            for blob, attr in _BN_BLOBS:
                yield CaffeParam(f"bn{block_id}_{branch}", blob, f"{prefix}bn_{branch}.{attr}")


class BasicBlock(_CaffeBlock):
    """Two 3x3 convs (ResNet-18/34); the stride sits on ``branch2a``."""

    branches = ("branch2a", "branch2b")
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.branch2a = _conv(in_ch, planes, 3, stride)
        self.bn_branch2a = _bn(planes)
        self.branch2b = _conv(planes, out_ch, 3)
        self.bn_branch2b = _bn(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self._init_shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.relu(self.bn_branch2a(self.branch2a(x)))
        y = self.bn_branch2b(self.branch2b(y))
        out: torch.Tensor = self.relu(y + self._shortcut(x))
        return out


class Bottleneck(_CaffeBlock):
    """1x1 -> 3x3 -> 1x1 (x4) bottleneck; Caffe/MSRA puts the stride on the first 1x1 conv (``branch2a``).

    ``stride_in_1x1=False`` gives the torchvision ("ResNet v1.5") variant with the stride on the 3x3 conv.
    """

    branches = ("branch2a", "branch2b", "branch2c")
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, *, stride_in_1x1: bool = True) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.branch2a = _conv(in_ch, planes, 1, s1)
        self.bn_branch2a = _bn(planes)
        self.branch2b = _conv(planes, planes, 3, s3)
        self.bn_branch2b = _bn(planes)
        self.branch2c = _conv(planes, out_ch, 1)
        self.bn_branch2c = _bn(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self._init_shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.relu(self.bn_branch2a(self.branch2a(x)))
        y = self.relu(self.bn_branch2b(self.branch2b(y)))
        y = self.bn_branch2c(self.branch2c(y))
        out: torch.Tensor = self.relu(y + self._shortcut(x))
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResNetConfig:
    """Architecture of a trunk.

    Attributes:
        block: ``basic`` (ResNet-18/34) or ``bottleneck`` (ResNet-50/101).
        layers: blocks per stage ``res2``..``res5``.
        numbered_stages: stages whose blocks after the first are named ``b1``, ``b2``, ... instead of ``b``, ``c``, ...
            (MSRA ResNet-101/152 name ``res3b1``..``res3b3`` and ``res4b1``..``res4b22``; stages 2 and 5 use letters).
        stride_in_1x1: Caffe/MSRA stride placement (True) or torchvision's (False); bottleneck only.
        stem_pad: ``caffe`` pads conv1 by 3 on every side (the Caffe model). ``tf_same`` pads (2, 3) top-left /
            bottom-right, which is what the official ExpNet TF graph does (kaffe emits ``padding='SAME'``); use it
            to reproduce converted official weights bit for bit. Assumes an even input size.
    """

    block: Literal["basic", "bottleneck"]
    layers: tuple[int, int, int, int]
    numbered_stages: tuple[int, ...] = ()
    stride_in_1x1: bool = True
    stem_pad: Literal["caffe", "tf_same"] = "caffe"


def caffe_block_name(stage: int, index: int, numbered: bool) -> str:
    """Caffe name of block ``index`` (0-based) of stage ``stage`` (2..5).

    >>> caffe_block_name(2, 0, False), caffe_block_name(2, 2, False), caffe_block_name(4, 22, True)
    ('res2a', 'res2c', 'res4b22')
    """
    if index == 0:
        return f"res{stage}a"
    if numbered:
        return f"res{stage}b{index}"
    if index >= 26:
        raise ModelError(f"stage res{stage} has more than 26 blocks; use numbered Caffe names")
    return f"res{stage}{chr(ord('a') + index)}"


class ResNetTrunk(nn.Module):
    """Caffe-style ResNet up to the global average pool: ``(N, 3, S, S) -> (N, feat_dim)``."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.stem_pad == "tf_same":
            self.pad1: nn.Module = nn.ZeroPad2d((2, 3, 2, 3))
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=0, bias=False)
        else:
            self.pad1 = nn.Identity()
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn_conv1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        in_ch = 64
        self.block_names: list[str] = []
        stages: list[nn.Sequential] = []
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), cfg.layers, strict=True), start=2):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for index in range(count):
                stride = 2 if index == 0 and stage > 2 else 1
                block: _CaffeBlock
                if cfg.block == "basic":
                    block = BasicBlock(in_ch, planes, stride)
                else:
                    block = Bottleneck(in_ch, planes, stride, stride_in_1x1=cfg.stride_in_1x1)
                name = caffe_block_name(stage, index, stage in cfg.numbered_stages)
                blocks[name] = block
                self.block_names.append(name)
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(blocks))
        self.res2, self.res3, self.res4, self.res5 = stages
        self.pool5 = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.pool1(self.relu(self.bn_conv1(self.conv1(self.pad1(x)))))
        y = self.res5(self.res4(self.res3(self.res2(y))))
        return torch.flatten(self.pool5(y), 1)

    def residual_blocks(self) -> Iterator[tuple[str, str, _CaffeBlock]]:
        """Yield ``(caffe_block_name, state_dict_prefix, block)`` in network order."""
        for stage in range(2, 6):
            seq = getattr(self, f"res{stage}")
            for name, block in seq.named_children():
                if not isinstance(block, _CaffeBlock):
                    raise ModelError(f"unexpected module {type(block).__name__} in res{stage}")
                yield name, f"res{stage}.{name}.", block

    def caffe_param_table(self) -> list[CaffeParam]:
        """Every trunk parameter and BN running statistic exactly once, with its Caffe layer and blob name.

        ``num_batches_tracked`` buffers have no Caffe counterpart and are not listed. Typical use when converting::

            sd = trunk.state_dict()
            for p in trunk.caffe_param_table():
                sd[p.torch_key].copy_(torch.from_numpy(caffe[p.caffe_layer][p.caffe_blob]))
        """
        table = [CaffeParam("conv1", "weights", "conv1.weight")]
        table += [CaffeParam("bn_conv1", blob, f"bn_conv1.{attr}") for blob, attr in _BN_BLOBS]
        for name, prefix, block in self.residual_blocks():
            table.extend(block.caffe_params(name, prefix))
        return table


# ---------------------------------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------------------------------


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Deterministic init of every parameter and buffer from ``generator`` (same seed => bit-identical tensors).

    Convs: Kaiming normal (fan_out, ReLU). BN: gamma 1, beta 0, running mean 0 / var 1; the last BN of each residual
    branch gets gamma ``1/sqrt(number of blocks)`` so an untrained deep trunk keeps activations bounded in eval mode.
    Linear: normal(0, 0.01), bias 0. Works on modules built on the ``meta`` device and moved with ``to_empty``.
    """
    blocks = [m for m in module.modules() if isinstance(m, _CaffeBlock)]
    residual_gamma = 1.0 / math.sqrt(max(len(blocks), 1))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif any(True for _ in m.parameters(recurse=False)):
                raise ModelError(f"init_weights does not know how to initialise {type(m).__name__}")
        for block in blocks:
            block.last_bn().weight.fill_(residual_gamma)


def build_resnet(name: str, **overrides: object) -> ResNetTrunk:
    """Build a trunk from :data:`RESNET_CONFIGS` with torch's default init (:func:`init_weights` makes it seeded).

    ``overrides`` replace config fields, e.g. ``build_resnet("resnet101", stem_pad="tf_same")``.
    """
    try:
        cfg = RESNET_CONFIGS[name]
    except KeyError as exc:
        raise ModelError(f"unknown ResNet trunk {name!r}; known: {sorted(RESNET_CONFIGS)}") from exc
    if overrides:
        try:
            cfg = ResNetConfig(**{**cfg.__dict__, **overrides})
        except TypeError as exc:
            raise ModelError(f"bad ResNet config override {overrides}: {exc}") from exc
    return ResNetTrunk(cfg)


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------

RESNET_CONFIGS: dict[str, ResNetConfig] = {
    "resnet18": ResNetConfig("basic", (2, 2, 2, 2)),
    "resnet34": ResNetConfig("basic", (3, 4, 6, 3)),
    "resnet50": ResNetConfig("bottleneck", (3, 4, 6, 3)),
    # MSRA Caffe ResNet-101 as used by ExpNet: res3b1..b3 and res4b1..b22 numbered, stages 2 and 5 lettered.
    "resnet101": ResNetConfig("bottleneck", (3, 4, 23, 3), numbered_stages=(3, 4)),
}
