"""A tiny HTTP server for ``/metrics``, ``/healthz`` and ``/readyz`` (stdlib, one daemon thread).

* ``/metrics``: the worker's registry in the Prometheus text format.
* ``/healthz``: 200 while the worker is alive (its main loop ticked within the liveness timeout), else 503.
* ``/readyz``: 200 only in :attr:`WorkerStatus.READY` (partitions assigned, engine loaded, broker reachable), else 503.

Both health endpoints answer a small JSON body (status, checks, seconds since the last loop tick). The server binds
127.0.0.1 by default; containers bind 0.0.0.0 through ``EXPNET_OPS__METRICS_HOST``. Port 0 picks a free port
(read it back from :attr:`HealthServer.port`).

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> from expnet_stream.ops.status import WorkerHealth
    >>> server = HealthServer(CollectorRegistry(), WorkerHealth().snapshot, port=0).start()
    >>> server.port > 0
    True
    >>> server.stop()
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..errors import ConfigError
from .settings import OpsSettings
from .status import HealthSnapshot

log = logging.getLogger(__name__)

StatusProvider = Callable[[], HealthSnapshot]


MAX_CONNECTIONS = 16
"""Connections served at once; more are closed at once (a scraper and two probes need three)."""
REQUEST_TIMEOUT_S = 5.0
"""A connection that sends no complete request within this long is closed (idle connections held threads for ever)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    registry: CollectorRegistry
    status_provider: StatusProvider

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # every slot taken: refuse, never queue a thread
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "expnet-stream"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S  # the socket's timeout: a silent or slow client is dropped

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                snap = self.server.status_provider()
                self._json(200 if snap.alive else 503, snap.as_dict())
            elif path == "/readyz":
                snap = self.server.status_provider()
                self._json(200 if snap.ready else 503, snap.as_dict())
            elif path == "/":
                self._json(200, {"endpoints": ["/metrics", "/healthz", "/readyz"]})
            else:
                self._json(404, {"error": f"no such endpoint {path!r}"})
        except (BrokenPipeError, ConnectionResetError):  # client went away
            return
        except Exception as exc:  # a broken collector must not kill the server thread
            log.exception("health endpoint failed path=%s", path)
            self._json(500, {"error": type(exc).__name__})

    def do_HEAD(self) -> None:
        self.do_GET()

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)


class HealthServer:
    """Serves one worker's metrics and health on ``host:port`` from a daemon thread.

    Args:
        registry: the worker's :class:`CollectorRegistry` (``WorkerMetrics.registry``).
        status_provider: returns the current :class:`HealthSnapshot` (``WorkerHealth.snapshot``); called per request.
        host: bind address; loopback unless a container or pod needs it reachable (``0.0.0.0``).
        port: TCP port; 0 = an ephemeral port (see :attr:`port` after :meth:`start`).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        status_provider: StatusProvider,
        host: str = "127.0.0.1",
        port: int = 9400,
    ) -> None:
        self.registry = registry
        self.status_provider = status_provider
        self.host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when started with port 0)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HealthServer:
        """Bind and serve in a daemon thread; raises :class:`ConfigError` when the address is taken or invalid."""
        if self._server is not None:
            return self
        cls = _Server6 if ":" in self.host else _Server
        try:
            server = cls((self.host, self._requested_port), _Handler)
        except OSError as exc:
            hint = (
                " (another worker on this host?): set ops.metrics_port to 0 (`--metrics-port 0`, "
                "EXPNET_OPS__METRICS_PORT=0) to pick a free port, or choose another"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
            raise ConfigError(
                f"ops.metrics_host/metrics_port: cannot serve metrics and health on "
                f"{self.host}:{self._requested_port}: {exc}{hint}"
            ) from exc
        server.registry = self.registry
        server.status_provider = self.status_provider
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="expnet-health", daemon=True
        )
        self._thread.start()
        log.info("serving /metrics /healthz /readyz on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_ops(
    settings: OpsSettings, registry: CollectorRegistry, status_provider: StatusProvider
) -> HealthServer | None:
    """Start the metrics/health server the settings ask for (``metrics_port`` 0: a free port, logged); ``None`` when
    ``metrics_enabled`` is false."""
    if not settings.metrics_enabled:
        log.info("metrics/health server disabled (ops.metrics_enabled=false)")
        return None
    server = HealthServer(registry, status_provider, host=settings.metrics_host, port=settings.metrics_port).start()
    if settings.metrics_port == 0:
        log.warning("metrics and health on a free port: %s (ops.metrics_port=0)", server.url)
    return server
