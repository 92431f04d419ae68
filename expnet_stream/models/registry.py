"""timm-style model registry and checkpoints that carry their preprocessing contract.

>>> "expnet_resnet101" in list_models()
True
>>> model, contract = create_model("expnet_resnet18.s112", seed=0)
>>> contract.model_id
'expnet_resnet18.s112@UNTRAINED-random-init-seed0'
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..fileio import atomic_writer

# The built-in variants register themselves (with the decorator of the leaf module `entrypoints`) when imported.
from . import expnet as _expnet  # noqa: F401
from . import light as _light  # noqa: F401
from .contract import PreprocessContract
from .entrypoints import ENTRYPOINTS as _ENTRYPOINTS
from .entrypoints import ModelEntrypoint as ModelEntrypoint
from .entrypoints import register_model as register_model
from .expnet import ExpNet

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "create_model", "list_models", "load_checkpoint", "register_model", "save_checkpoint"]

CHECKPOINT_FORMAT = "expnet-stream/checkpoint-v1"


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching a shell-style ``pattern``, e.g. ``list_models("expnet_resnet18*")``."""
    return sorted(n for n in _ENTRYPOINTS if fnmatch.fnmatchcase(n, pattern))


def _entrypoint(name: str) -> ModelEntrypoint:
    try:
        return _ENTRYPOINTS[name]
    except KeyError as exc:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(sorted(_ENTRYPOINTS))}") from exc


def create_model(
    name: str, *, seed: int = 0, pretrained_path: str | os.PathLike[str] | None = None
) -> tuple[ExpNet, PreprocessContract]:
    """Build a registered model in eval mode with its contract.

    Without ``pretrained_path`` the weights are a deterministic random init of ``seed`` (same seed, bit-identical
    tensors) and the contract's weights tag is ``untrained-random-init-seed<seed>``. With it, the checkpoint's weights
    and contract are returned; its model name must be ``name``.
    """
    if pretrained_path is not None:
        model, contract = load_checkpoint(pretrained_path)
        if contract.model_name != name:
            raise ModelError(f"checkpoint {pretrained_path} holds {contract.model_name!r}, not {name!r}")
        return model, contract
    model, contract = _entrypoint(name)(seed=seed)
    logger.debug("created model model_id=%s", contract.model_id)
    return model, contract


def save_checkpoint(path: str | os.PathLike[str], model: torch.nn.Module, contract: PreprocessContract) -> Path:
    """Save ``{"format", "contract" (JSON text), "state_dict"}`` with ``torch.save``, atomically; returns the path."""
    path = Path(path)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "contract": contract.model_dump_json(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    try:
        with atomic_writer(path) as fh:
            torch.save(payload, fh)
    except OSError as exc:
        raise ModelError(f"cannot write checkpoint {path}: {exc}") from exc
    logger.info("saved checkpoint path=%s model_id=%s", path, contract.model_id)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[ExpNet, PreprocessContract]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``): model in eval mode + contract."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not an expnet-stream checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    try:
        contract_data = json.loads(payload["contract"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"checkpoint {path} has no valid contract: {exc}") from exc
    contract = PreprocessContract.from_dict(contract_data, source=str(path))
    contract._base_dir = path.parent  # relative mean-image paths resolve next to the checkpoint
    model, _ = _entrypoint(contract.model_name)(seed=None)
    state = payload.get("state_dict", {})
    if isinstance(state, dict) and "emotion_fc.weight" in state:
        model.add_emotion_head(int(state["emotion_fc.weight"].shape[0]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ModelError(f"checkpoint {path} does not fit {contract.model_name}: {exc}") from exc
    logger.info("loaded checkpoint path=%s model_id=%s", path, contract.model_id)
    return model.eval(), contract
