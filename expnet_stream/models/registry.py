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
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..errors import ModelError
from .contract import PreprocessContract

if TYPE_CHECKING:
    from .expnet import ExpNet

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "create_model", "list_models", "load_checkpoint", "register_model", "save_checkpoint"]

CHECKPOINT_FORMAT = "expnet-stream/checkpoint-v1"

ModelEntrypoint = Callable[..., "tuple[ExpNet, PreprocessContract]"]
_F = TypeVar("_F", bound=ModelEntrypoint)

_ENTRYPOINTS: dict[str, ModelEntrypoint] = {}


def register_model(name: str) -> Callable[[_F], _F]:
    """Register ``fn(*, seed: int | None) -> (model, contract)`` under ``name`` (may hold a ``.tag``)."""

    def decorator(fn: _F) -> _F:
        if name in _ENTRYPOINTS and _ENTRYPOINTS[name] is not fn:
            raise ModelError(f"model {name!r} is already registered")
        _ENTRYPOINTS[name] = fn
        return fn

    return decorator


def _load_builtins() -> None:
    from . import expnet as _expnet  # noqa: F401  (registers the built-in variants)
    from . import light as _light  # noqa: F401  (the shipped light variant)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching a shell-style ``pattern``, e.g. ``list_models("expnet_resnet18*")``."""
    _load_builtins()
    return sorted(n for n in _ENTRYPOINTS if fnmatch.fnmatchcase(n, pattern))


def _entrypoint(name: str) -> ModelEntrypoint:
    _load_builtins()
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
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
