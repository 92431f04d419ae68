"""The table of model entrypoints and the :func:`register_model` decorator that fills it.

A leaf module (no torch, no model code): the architectures (:mod:`~expnet_stream.models.expnet`,
:mod:`~expnet_stream.models.light`) decorate their variants with :func:`register_model` from here, and
:mod:`~expnet_stream.models.registry` imports those modules to register the built-ins, then looks names up in
:data:`ENTRYPOINTS`. So the registry depends on the models and the models never import the registry.
``register_model`` is re-exported by the registry (and ``expnet_stream.models``), where callers import it from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ModelError

if TYPE_CHECKING:
    from .contract import PreprocessContract

__all__ = ["ENTRYPOINTS", "ModelEntrypoint", "register_model"]

# Typed generically (the model as Any, a torch module): naming ExpNet here would make a cycle with the architectures.
ModelEntrypoint = Callable[..., "tuple[Any, PreprocessContract]"]
_F = TypeVar("_F", bound=ModelEntrypoint)

ENTRYPOINTS: dict[str, ModelEntrypoint] = {}
"""Registered name (may hold a ``.tag``) -> ``fn(*, seed: int | None) -> (model, contract)``."""


def register_model(name: str) -> Callable[[_F], _F]:
    """Register ``fn(*, seed: int | None) -> (model, contract)`` under ``name`` (may hold a ``.tag``)."""

    def decorator(fn: _F) -> _F:
        if name in ENTRYPOINTS and ENTRYPOINTS[name] is not fn:
            raise ModelError(f"model {name!r} is already registered")
        ENTRYPOINTS[name] = fn
        return fn

    return decorator
