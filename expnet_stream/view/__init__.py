"""``expnet-stream view``: the live view in a browser (a Starlette app on uvicorn, its own read-only consumers).

Needs the ``view`` extra (``pip install 'expnet-stream[view]'``); importing :mod:`.app` without it raises
:class:`~expnet_stream.errors.OptionalDependencyError` with the install command.
"""

from __future__ import annotations

from ..errors import OptionalDependencyError
from .settings import ViewSettings as ViewSettings

INSTALL_HINT = "expnet-stream view needs the `view` extra: pip install 'expnet-stream[view]' (starlette, uvicorn)"


def require_view_extra() -> None:
    """:class:`OptionalDependencyError` with the install command when starlette or uvicorn is missing."""
    import importlib

    for name in ("starlette", "uvicorn"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise OptionalDependencyError(f"{INSTALL_HINT}; missing: {name}") from exc
