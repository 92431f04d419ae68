"""A broker that cannot be reached is one clear line, not a page of client retries."""

from __future__ import annotations

import socket
import time

from ..errors import ExpNetError

REACH_TIMEOUT_S = 8.0
"""How long a command tries the bootstrap servers before it gives up (a broker that is still starting gets this)."""


class BrokerUnreachableError(ExpNetError):
    """No bootstrap server accepted a TCP connection."""


def _host_port(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        raise BrokerUnreachableError(f"bootstrap server {server!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def require_broker(bootstrap: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Return once one of the comma-separated ``bootstrap`` servers accepts a TCP connection; raise
    :class:`BrokerUnreachableError` naming every address and why, after ``timeout_s``."""
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    if not servers:
        raise BrokerUnreachableError("no Kafka bootstrap server given (--bootstrap or kafka.bootstrap)")
    addresses = [(s, *_host_port(s)) for s in servers]
    deadline = time.monotonic() + timeout_s
    why: dict[str, str] = {}
    while True:
        for server, host, port in addresses:
            left = deadline - time.monotonic()
            try:
                socket.create_connection((host, port), timeout=max(0.2, min(2.0, left))).close()
                return
            except OSError as exc:
                why[server] = exc.strerror or type(exc).__name__
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    reasons = ", ".join(f"{s}: {w}" for s, w in why.items())
    raise BrokerUnreachableError(
        f"cannot reach the Kafka broker at {bootstrap} ({reasons}; tried for {timeout_s:.0f} s): check that the "
        "broker is running and reachable from here, and that --bootstrap (or kafka.bootstrap, "
        "EXPNET_KAFKA__BOOTSTRAP) names its advertised host:port"
    )
