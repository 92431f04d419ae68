"""Plugins checked against a base class, loaded by name, ``module:Class`` or entry point.

Built-in plugins live in the top-level ``plugins/`` folder (the ``expnet_stream_plugins``
package) and register themselves with :func:`register` when imported. Third-party plugins
are published in the ``expnet_stream.plugins`` entry-point group with names
``"<kind>.<name>"`` (e.g. ``face_detector.my_detector = my_pkg.det:MyDetector``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "expnet_stream.plugins"
BUILTIN_PACKAGE = "expnet_stream_plugins"

_BASES: dict[str, type] = {}
_REGISTRY: dict[str, dict[str, type]] = {}
_builtins_loaded = False

T = TypeVar("T", bound=type)


def declare_kind(kind: str, base: type) -> None:
    """Declare a plugin kind and the base class every plugin of that kind must subclass."""
    _BASES[kind] = base
    _REGISTRY.setdefault(kind, {})


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: register a built-in plugin under ``name``."""

    def deco(cls: T) -> T:
        _check(kind, cls, name)
        _REGISTRY.setdefault(kind, {})[name] = cls
        return cls

    return deco


def _check(kind: str, cls: object, spec: str) -> type:
    base = _BASES.get(kind)
    if base is None:
        raise PluginError(f"unknown plugin kind {kind!r}; known kinds: {sorted(_BASES)}")
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise PluginError(
            f"plugin {spec!r} of kind {kind!r} is not a subclass of {base.__module__}.{base.__qualname__}"
        )
    return cls


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    try:
        importlib.import_module(BUILTIN_PACKAGE)
    except ImportError as exc:  # pragma: no cover - broken install
        raise PluginError(f"built-in plugins ({BUILTIN_PACKAGE}) failed to import: {exc}") from exc


def available(kind: str) -> list[str]:
    """Names of the plugins of ``kind`` that can be loaded by name (built-ins and entry points)."""
    _load_builtins()
    names = set(_REGISTRY.get(kind, {}))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        k, _, n = ep.name.partition(".")
        if k == kind:
            names.add(n)
    return sorted(names)


def resolve(kind: str, spec: str) -> type:
    """Find the plugin class for ``spec``: a registered name, an entry point or ``module:Class``."""
    _load_builtins()
    if kind not in _BASES:
        raise PluginError(f"unknown plugin kind {kind!r}; known kinds: {sorted(_BASES)}")
    if spec in _REGISTRY.get(kind, {}):
        return _REGISTRY[kind][spec]
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == f"{kind}.{spec}":
            try:
                return _check(kind, ep.load(), spec)
            except ImportError as exc:
                raise PluginError(f"entry point {ep.name!r} ({ep.value}) failed to import: {exc}") from exc
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"plugin module {module_name!r} failed to import: {exc}") from exc
        try:
            obj = getattr(module, attr)
        except AttributeError as exc:
            raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from exc
        return _check(kind, obj, spec)
    raise PluginError(f"no {kind} plugin named {spec!r}; available: {available(kind)} (or use 'module:Class')")


def create(kind: str, spec: str, **options: Any) -> Any:
    """Instantiate the plugin ``spec`` of ``kind`` with keyword ``options``."""
    cls = resolve(kind, spec)
    log.debug("loading plugin kind=%s spec=%s class=%s", kind, spec, cls.__qualname__)
    return cls(**options)
