"""Container health probe without curl: ``python -m expnet_stream.ops.probe [healthz|readyz]``.

Asks the worker's own endpoint on 127.0.0.1 at ``EXPNET_OPS__METRICS_PORT`` (default 9400); exit status 0 when it
answers 200, 1 otherwise. Used by the Dockerfile HEALTHCHECK (slim images ship no curl).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe(path: str = "healthz", port: int | None = None, timeout_s: float = 3.0) -> bool:
    """Whether ``http://127.0.0.1:PORT/PATH`` answers 200."""
    port = port if port is not None else int(os.environ.get("EXPNET_OPS__METRICS_PORT", "9400") or 9400)
    url = f"http://127.0.0.1:{port}/{path.lstrip('/')}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return 0 if probe(args[0] if args else "healthz") else 1


if __name__ == "__main__":
    sys.exit(main())
