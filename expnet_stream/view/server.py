"""Runs the view: the service's consumers and its app on uvicorn, in a thread of this process (``demo --view``) or
in the foreground (``expnet-stream view``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import quote

from ..errors import ConfigError
from .service import ViewService

log = logging.getLogger(__name__)

__all__ = ["ViewServer"]


class ViewServer:
    """``service`` served on ``host:port`` (port 0: any free port) by uvicorn on a daemon thread."""

    def __init__(self, service: ViewService) -> None:
        from . import require_view_extra

        require_view_extra()
        import uvicorn

        from .app import build_app

        self.service = service
        s = service.settings
        config = uvicorn.Config(
            build_app(service),
            host=s.host,
            port=s.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="view-http", daemon=True)
        self.port = s.port

    def start(self, timeout_s: float = 15.0) -> ViewServer:
        self.service.start()
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.service.stop()
                raise ConfigError(
                    f"the view could not listen on {self.service.settings.host}:{self.service.settings.port} "
                    "(in use? see the log above)"
                )
            time.sleep(0.02)
        servers: list[Any] = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                self.port = int(sock.getsockname()[1])
                break
        log.info("view listening url=%s", self.url)
        return self

    @property
    def url(self) -> str:
        host = self.service.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def url_with_token(self) -> str:
        """The URL to open: with ``?token=`` when the view has one (the page then keeps it in a cookie)."""
        token = self.service.settings.token
        return self.url + (f"?token={quote(token.get_secret_value())}" if token is not None else "")

    def wait(self) -> None:
        """Until the server stops (Ctrl-C in the foreground)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self.service.stop()
