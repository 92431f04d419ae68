"""``expnet-stream view``: the live view in a browser (a Starlette app on uvicorn, its own read-only consumers).

Needs the ``view`` extra (``pip install 'expnet-stream[view]'``); importing :mod:`.app` without it raises
:class:`~expnet_stream.errors.OptionalDependencyError` with the install command.
"""

from __future__ import annotations

from .settings import ViewSettings as ViewSettings
