"""Light ExpNet variants for CPU fleets: ResNet-18 layout at a fraction of the width.

``expnet_lite18.s112``: ResNet-18 (basic blocks, 2-2-2-2) with half the channels (32-64-128-256, 2.8 M parameters,
a quarter of ResNet-18's FLOPs), 112 px input from the 114 px paper crop (the 227/224 proportion), 256 -> 29 head.
It is the variant the shipped default model was trained with: it trains on a 2-core CPU within a working session and
its ONNX file stays small. File order follows timm: model, builder, configs, registered variants.

>>> from expnet_stream.models import create_model
>>> model, contract = create_model("expnet_lite18.s112")
>>> model(torch.zeros(1, 3, 112, 112)).shape, contract.crop_size
(torch.Size([1, 29]), 114)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from .contract import PreprocessContract
from .entrypoints import register_model
from .expnet import ExpNet, build_seeded, untrained_contract
from .resnet import BasicBlock, caffe_block_name

logger = logging.getLogger(__name__)

__all__ = ["LITE_CONFIGS", "LiteConfig", "LiteResNetTrunk", "build_lite"]

# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class LiteResNetTrunk(nn.Module):
    """ResNet with basic blocks and configurable widths, up to the global average pool: ``(N, 3, S, S) -> (N, C)``."""

    def __init__(self, widths: tuple[int, int, int, int], layers: tuple[int, int, int, int]) -> None:
        super().__init__()
        stem = widths[0]
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn_conv1 = nn.BatchNorm2d(stem, eps=1e-5)
        self.relu = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        in_ch = stem
        stages: list[nn.Sequential] = []
        for stage, (planes, count) in enumerate(zip(widths, layers, strict=True), start=2):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for index in range(count):
                stride = 2 if index == 0 and stage > 2 else 1
                blocks[caffe_block_name(stage, index, False)] = BasicBlock(in_ch, planes, stride)
                in_ch = planes
            stages.append(nn.Sequential(blocks))
        self.res2, self.res3, self.res4, self.res5 = stages
        self.pool5 = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.pool1(self.relu(self.bn_conv1(self.conv1(x))))
        y = self.res5(self.res4(self.res3(self.res2(y))))
        return torch.flatten(self.pool5(y), 1)


# ---------------------------------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiteConfig:
    """A light variant: trunk widths/blocks and input geometry (crop keeps the 227/224 proportion)."""

    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    input_size: int = 112
    crop_size: int = 114
    num_coeffs: int = 29


def build_lite(cfg: LiteConfig, *, seed: int | None = 0) -> ExpNet:
    """Build in eval mode; like :func:`~expnet_stream.models.expnet.build_expnet`, seeded init is bit-identical."""
    return build_seeded(
        lambda: ExpNet(LiteResNetTrunk(cfg.widths, cfg.layers), cfg.num_coeffs),  # type: ignore[arg-type]
        seed,
    )


def _create(name: str, seed: int | None) -> tuple[ExpNet, PreprocessContract]:
    cfg = LITE_CONFIGS[name]
    return build_lite(cfg, seed=seed), untrained_contract(name, cfg.input_size, cfg.crop_size, cfg.num_coeffs, seed)


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------

LITE_CONFIGS: dict[str, LiteConfig] = {
    "expnet_lite18.s112": LiteConfig(),
}

# ---------------------------------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------------------------------


@register_model("expnet_lite18.s112")
def expnet_lite18_s112(*, seed: int | None = 0) -> tuple[ExpNet, PreprocessContract]:
    """Half-width ResNet-18 trunk at 112 px input (crop 114): the shipped CPU default."""
    return _create("expnet_lite18.s112", seed)
