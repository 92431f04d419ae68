"""ExpNet (Chang et al., FG 2018): a ResNet trunk and one linear layer regressing 29 expression coefficients.

File order follows timm: model, builder, configs, registered variants. Input is float32 NCHW that
:meth:`~expnet_stream.models.contract.PreprocessContract.normalize` produced (BGR minus mean); output ``(N, 29)``.

>>> from expnet_stream.models import create_model
>>> model, contract = create_model("expnet_resnet18.s112")
>>> model(torch.zeros(2, 3, contract.input_size, contract.input_size)).shape
torch.Size([2, 29])
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .contract import PreprocessContract
from .entrypoints import register_model
from .resnet import ResNetTrunk, build_resnet, init_weights

logger = logging.getLogger(__name__)

__all__ = ["EXPNET_CONFIGS", "ExpNet", "ExpNetConfig", "ExpNetWithEmotions", "build_expnet", "untrained_weights_tag"]

# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class ExpNet(nn.Module):
    """``trunk`` (N, 3, S, S) -> (N, feat_dim), then ``fc`` Linear(feat_dim, num_coeffs).

    The head is called ``fc`` (official: ``exprCNN_fc1`` with weights (2048, 29), i.e. the transpose of ``fc.weight``).
    An optional second head ``emotion_fc`` Linear(feat_dim, num_emotions) on the same features gives emotion logits
    (multi-task training); :meth:`forward` returns the coefficients only, :meth:`forward_all` both.
    """

    def __init__(self, trunk: ResNetTrunk, num_coeffs: int = 29, num_emotions: int = 0) -> None:
        super().__init__()
        self.trunk = trunk
        self.fc = nn.Linear(trunk.feat_dim, num_coeffs)
        self.num_coeffs = num_coeffs
        self.emotion_fc: nn.Linear | None = nn.Linear(trunk.feat_dim, num_emotions) if num_emotions > 0 else None

    @property
    def num_emotions(self) -> int:
        return 0 if self.emotion_fc is None else int(self.emotion_fc.out_features)

    def add_emotion_head(self, num_emotions: int, *, seed: int = 0) -> None:
        """Attach a freshly initialised emotion head (small normal weights, zero bias) on the trunk features."""
        head = nn.Linear(self.fc.in_features, num_emotions)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
            head.bias.zero_()
        self.emotion_fc = head.to(self.fc.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.trunk(x))
        return out

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(coefficients (N, K), emotion logits (N, C) or None)`` from one trunk pass."""
        feat = self.trunk(x)
        return self.fc(feat), None if self.emotion_fc is None else self.emotion_fc(feat)


class ExpNetWithEmotions(nn.Module):
    """Export view of an ExpNet with an emotion head: ``x -> (coefficients, softmax(logits / temperature))``."""

    def __init__(self, model: ExpNet, temperature: float = 1.0) -> None:
        super().__init__()
        if model.emotion_fc is None:
            raise ValueError("the model has no emotion head")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.model.trunk(x)
        head = self.model.emotion_fc
        if head is None:
            raise ValueError("the model's emotion head was removed after wrapping")
        coeffs, logits = self.model.fc(feat), head(feat)
        return coeffs, torch.softmax(logits / self.temperature, dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpNetConfig:
    """A registered variant: trunk, input geometry and head size.

    Attributes:
        trunk: key of :data:`~expnet_stream.models.resnet.RESNET_CONFIGS`.
        input_size: network input side (paper 224).
        crop_size: face crop side before the crop -> input resize (paper 227; keep the 227/224 proportion).
        num_coeffs: head outputs (paper 29).
        trunk_overrides: ResNetConfig fields to override, e.g. ``{"stem_pad": "tf_same"}``.
    """

    trunk: str
    input_size: int = 224
    crop_size: int = 227
    num_coeffs: int = 29
    trunk_overrides: dict[str, Any] = field(default_factory=dict)


def untrained_weights_tag(seed: int) -> str:
    """Weights tag of a random-init model, e.g. ``untrained-random-init-seed0``."""
    return f"untrained-random-init-seed{seed}"


def build_expnet(cfg: ExpNetConfig, *, seed: int | None = 0) -> ExpNet:
    """Build an ExpNet in eval mode.

    The module is created on the ``meta`` device (no global RNG use, no wasted default init) and then every tensor
    is initialised from ``torch.Generator().manual_seed(seed)``: same seed, bit-identical weights. ``seed=None``
    leaves the tensors uninitialised for a caller that loads a state dict right away.
    """
    return build_seeded(lambda: ExpNet(build_resnet(cfg.trunk, **cfg.trunk_overrides), cfg.num_coeffs), seed)


def build_seeded(make: Callable[[], ExpNet], seed: int | None) -> ExpNet:
    """Build on the meta device, materialise on CPU, init from a private seeded generator; eval mode."""
    with torch.device("meta"):
        model = make()
    model = model.to_empty(device="cpu")
    if seed is not None:
        init_weights(model, torch.Generator().manual_seed(seed))
    return model.eval()


def untrained_contract(
    name: str, input_size: int, crop_size: int, num_coeffs: int, seed: int | None
) -> PreprocessContract:
    """The contract of freshly initialised weights (tagged UNTRAINED)."""
    return PreprocessContract(
        model_name=name,
        input_size=input_size,
        crop_size=crop_size,
        num_coeffs=num_coeffs,
        weights=untrained_weights_tag(seed) if seed is not None else "untrained-uninitialised",
    )


def _create(name: str, seed: int | None) -> tuple[ExpNet, PreprocessContract]:
    cfg = EXPNET_CONFIGS[name]
    return build_expnet(cfg, seed=seed), untrained_contract(name, cfg.input_size, cfg.crop_size, cfg.num_coeffs, seed)


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------

EXPNET_CONFIGS: dict[str, ExpNetConfig] = {
    "expnet_resnet101": ExpNetConfig("resnet101"),
    "expnet_resnet50": ExpNetConfig("resnet50"),
    "expnet_resnet34": ExpNetConfig("resnet34"),
    "expnet_resnet18": ExpNetConfig("resnet18"),
    # CPU variant: half the input side (a quarter of the FLOPs); 114 keeps the paper's 227/224 crop proportion.
    "expnet_resnet18.s112": ExpNetConfig("resnet18", input_size=112, crop_size=114),
    # the official release's layout: TF 'SAME' conv1 padding (2 before, 3 after)
    "expnet_resnet101.tf_same": ExpNetConfig("resnet101", trunk_overrides={"stem_pad": "tf_same"}),
}

# ---------------------------------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------------------------------


@register_model("expnet_resnet101")
def expnet_resnet101(*, seed: int | None = 0) -> tuple[ExpNet, PreprocessContract]:
    """The paper's model: MSRA Caffe ResNet-101 trunk, 2048 -> 29, 224 input from a 227 crop."""
    return _create("expnet_resnet101", seed)


@register_model("expnet_resnet50")
def expnet_resnet50(*, seed: int | None = 0) -> tuple[ExpNet, PreprocessContract]:
    """Caffe ResNet-50 trunk, 2048 -> 29, 224 input."""
    return _create("expnet_resnet50", seed)


@register_model("expnet_resnet34")
def expnet_resnet34(*, seed: int | None = 0) -> tuple[ExpNet, PreprocessContract]:
    """ResNet-34 (basic blocks) trunk, 512 -> 29, 224 input."""
    return _create("expnet_resnet34", seed)


@register_model("expnet_resnet18")
def expnet_resnet18(*, seed: int | None = 0) -> tuple[ExpNet, PreprocessContract]:
    """ResNet-18 (basic blocks) trunk, 512 -> 29, 224 input."""
    return _create("expnet_resnet18", seed)


@register_model("expnet_resnet18.s112")
def expnet_resnet18_s112(*, seed: int | None = 0) -> tuple[ExpNet, PreprocessContract]:
    """ResNet-18 trunk at 112 px input (crop 114) for CPU fleets."""
    return _create("expnet_resnet18.s112", seed)


@register_model("expnet_resnet101.tf_same")
def expnet_resnet101_tf_same(*, seed: int | None = 0) -> tuple[ExpNet, PreprocessContract]:
    """ResNet-101 with TF 'SAME' conv1 padding (2/3): the layout of the official converted weights."""
    return _create("expnet_resnet101.tf_same", seed)
