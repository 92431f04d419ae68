"""The view's web app (Starlette): two static pages, a JSON API, an event stream per stream page (SSE) and the
picture of a watched stream (MJPEG). Every route asks for the token when there is one.

Routes (``id`` is a stream id, in the query so any id fits):

* ``/`` the streams page, ``/stream?id=`` a stream's page, ``/static/...`` their script and style;
* ``/api/streams`` the stream table; ``/api/stream?id=`` a stream's row, latest aggregates and last 60 s;
* ``/api/stream/events?id=`` Server-Sent Events: frames (track, box, top emotion), aggregates, state;
* ``/api/stream/picture.mjpg?id=`` ``multipart/x-mixed-replace`` JPEGs (each part with ``X-Capture-Time``);
* ``/api/status`` the view's own counters.

The token comes as ``?token=`` (what EventSource and ``<img>`` can send), ``Authorization: Bearer``, or the
``expnet_view_token`` cookie the first page sets (HttpOnly, SameSite=Strict).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from ..errors import OptionalDependencyError
from . import INSTALL_HINT

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - tests/unit/test_view.py runs the command without starlette
    raise OptionalDependencyError(INSTALL_HINT) from exc

from .hub import Channel, LimitReached
from .picture import Picture
from .service import ViewService

log = logging.getLogger(__name__)

__all__ = ["build_app"]

COOKIE = "expnet_view_token"
STATIC = resources.files(__package__) / "static"
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # a token in the query never leaves in a Referer
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
BOUNDARY = "expnetframe"


def _token_of(scope: Scope) -> tuple[str | None, bool]:
    """The token a request brings, and whether it came in the query."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    if "x-expnet-view-token" in headers:
        return headers["x-expnet-view-token"], False
    if "cookie" in headers:
        morsel = SimpleCookie(headers["cookie"]).get(COOKIE)
        if morsel is not None:
            return morsel.value, False
    return None, False


class GuardMiddleware:
    """Checks the token on every HTTP and WebSocket request (constant-time compare) and adds the security headers;
    a page opened with a good ``?token=`` also sets the cookie, so the page's own requests carry it."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given, in_query = _token_of(scope)
        if self.token is not None and (given is None or not hmac.compare_digest(given.encode(), self.token.encode())):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            res = PlainTextResponse(
                "401: this view needs its access token (?token=, Authorization: Bearer, or its cookie)",
                401,
                headers={"www-authenticate": "Bearer"},
            )
            await self._with_headers(res, scope, receive, send, set_cookie=False)
            return
        await self._with_headers(self.app, scope, receive, send, set_cookie=in_query and self.token is not None)

    async def _with_headers(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, *, set_cookie: bool
    ) -> None:
        async def send_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + SECURITY_HEADERS
                if set_cookie and self.token is not None:
                    cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                    headers.append((b"set-cookie", cookie.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_headers)


class PushResponse(Response):
    """A response that streams ``chunks()`` until the client goes or the iterator ends, then calls ``cleanup``
    (always: on a disconnect, a failed write, or the server shutting down)."""

    def __init__(
        self, chunks: Callable[[], AsyncIterator[bytes]], media_type: str, cleanup: Callable[[], None]
    ) -> None:
        super().__init__(media_type=media_type, headers={"x-accel-buffering": "no"})
        self.chunks = chunks
        self.cleanup = cleanup
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # streamed: no length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        async def stream() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        tasks = [asyncio.ensure_future(until_disconnect()), asyncio.ensure_future(stream())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is not None and not isinstance(exc, OSError):
                    log.warning("view push ended: %r", exc)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.cleanup()


def safe_json(data: Any) -> str:
    """JSON with ``<``, ``>`` and ``&`` as unicode escapes: an event's text can never read as markup, even to a
    client that sniffs; newlines are always escaped, so an SSE ``data:`` line stays one line."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return safe_json(content).encode()


def sse(kind: str, data: Any) -> bytes:
    """One Server-Sent Event (its kind is one of the view's own names, never an event's text)."""
    return f"event: {kind}\ndata: {safe_json(data)}\n\n".encode()


def build_app(service: ViewService) -> ASGIApp:
    """The ASGI app of ``service`` (its event feed is started by the caller)."""
    settings = service.settings
    token = settings.token.get_secret_value() if settings.token is not None else None

    def stream_id(request: Request) -> str:
        sid = request.query_params.get("id", "")
        if not sid or len(sid) > 256:
            raise LimitReached("give the stream as ?id= (1 to 256 characters)", 400)
        return sid

    async def page(request: Request) -> Response:
        name = "index.html" if request.url.path == "/" else "stream.html"
        return Response((STATIC / name).read_bytes(), media_type="text/html; charset=utf-8")

    async def streams(request: Request) -> Response:
        return SafeJSONResponse({"now": time.time(), "streams": service.table.rows(), "view": service.status()})

    async def stream_detail(request: Request) -> Response:
        sid = stream_id(request)
        detail = service.table.detail(sid, settings.timeline_s)
        if detail is None:
            return SafeJSONResponse({"error": "no such stream (not seen in the last minutes)", "stream": sid}, 404)
        return SafeJSONResponse(detail)

    async def status(request: Request) -> Response:
        return SafeJSONResponse(service.status())

    async def events(request: Request) -> Response:
        sid = stream_id(request)
        slot = service.clients.slot()
        slot.__enter__()
        channel: Channel[dict[str, Any]] = Channel(asyncio.get_running_loop(), settings.client_queue)
        service.fanout.subscribe(sid, channel)

        def cleanup() -> None:
            service.fanout.unsubscribe(sid, channel)
            channel.close()
            slot.__exit__(None, None, None)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n" + sse("snapshot", service.table.detail(sid, settings.timeline_s))
            last_row = 0.0
            while True:
                items = await channel.get(1.0)
                if items is None:
                    return
                out = [sse(item["kind"], item) for item in items]
                if channel.dropped:
                    out.append(sse("dropped", {"count": channel.dropped}))
                    channel.dropped = 0
                if time.monotonic() - last_row >= 1.0:  # the state changes with time alone (live -> idle)
                    last_row = time.monotonic()
                    out.append(sse("row", service.table.state_of(sid)))
                yield b"".join(out)

        return PushResponse(chunks, "text/event-stream", cleanup)

    async def picture(request: Request) -> Response:
        sid = stream_id(request)
        slot = service.clients.slot()
        slot.__enter__()
        loop = asyncio.get_running_loop()
        channel: Channel[Picture] = Channel(loop, 1)  # only the newest picture waits for a slow client
        try:
            service.pictures.watch(sid, channel.put)
        except LimitReached:
            slot.__exit__(None, None, None)
            raise

        def cleanup() -> None:
            channel.close()
            service.pictures.unwatch(sid, channel.put)
            slot.__exit__(None, None, None)

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                items = await channel.get(5.0)
                if items is None:
                    return
                for p in items[-1:]:
                    head = (
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(p.jpeg)}\r\n"
                        f"X-Capture-Time: {p.capture_time:.3f}\r\nX-Pts-Time: {p.pts_time:.3f}\r\n"
                        f"X-Picture-Seq: {p.seq}\r\nX-Faces: {p.faces}\r\nX-Matched: {int(p.matched)}\r\n\r\n"
                    )
                    yield head.encode() + p.jpeg + b"\r\n"

        return PushResponse(chunks, f"multipart/x-mixed-replace; boundary={BOUNDARY}", cleanup)

    async def limited(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, LimitReached):  # registered for LimitReached only
            raise exc
        headers = {"retry-after": "5"} if exc.status in (429, 503) else None
        return SafeJSONResponse({"error": str(exc)}, exc.status, headers=headers)

    routes = [
        Route("/", page),
        Route("/stream", page),
        Route("/api/streams", streams),
        Route("/api/stream", stream_detail),
        Route("/api/stream/events", events),
        Route("/api/stream/picture.mjpg", picture),
        Route("/api/status", status),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {LimitReached: limited}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return GuardMiddleware(app, token)
