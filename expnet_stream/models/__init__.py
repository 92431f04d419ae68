"""ExpNet models: architectures, registry, preprocessing contract and ONNX export.

Only the contract and the emotion outputs are imported eagerly: they need numpy and pydantic, not torch, so the
worker (ONNX Runtime only) can use them. Names that need torch (the ``torch`` extra) are imported on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .contract import PreprocessContract as PreprocessContract
from .contract import contract_path_for as contract_path_for
from .emotion import EMOTIONS as EMOTIONS
from .emotion import FER_CLASSES as FER_CLASSES
from .emotion import EmotionHead as EmotionHead
from .emotion import ModelEmotions as ModelEmotions

if TYPE_CHECKING:
    from .expnet import ExpNet as ExpNet
    from .export import ensure_onnx as ensure_onnx
    from .export import export_onnx as export_onnx
    from .export import file_sha256 as file_sha256
    from .registry import create_model as create_model
    from .registry import list_models as list_models
    from .registry import load_checkpoint as load_checkpoint
    from .registry import register_model as register_model
    from .registry import save_checkpoint as save_checkpoint

_LAZY = {
    "ensure_onnx": "export",
    "export_onnx": "export",
    "file_sha256": "export",
    "ExpNet": "expnet",
    "create_model": "registry",
    "list_models": "registry",
    "load_checkpoint": "registry",
    "register_model": "registry",
    "save_checkpoint": "registry",
}

__all__ = ["EMOTIONS", "FER_CLASSES", "EmotionHead", "ModelEmotions", "PreprocessContract", "contract_path_for", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
