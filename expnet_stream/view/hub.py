"""Push channels from the consumer threads to the web app's clients, and the bounds on them.

A :class:`Channel` is one client's bounded queue: the consumer thread :meth:`~Channel.put` s without ever waiting
(the oldest item is dropped when full, and counted), the client's coroutine awaits :meth:`~Channel.get`. So a slow
or vanished browser costs at most its queue, never the consumer's time.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Generic, TypeVar

__all__ = ["Channel", "ClientLimit", "Fanout", "LimitReached"]

T = TypeVar("T")


class LimitReached(Exception):
    """A bound is full: the web app answers ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Channel(Generic[T]):
    """A bounded queue that drops its oldest item when full; filled from any thread, read from one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxlen: int) -> None:
        self._loop = loop
        self._items: deque[T] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def put(self, item: T) -> None:
        """Queue ``item`` (never blocks; drops the oldest item when full)."""
        with self._lock:
            if self.closed:
                return
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(item)
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: nobody reads any more
            self.closed = True

    def close(self) -> None:
        """Wake the reader; :meth:`get` returns what is left, then None."""
        self.closed = True
        with suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ready.set)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    async def get(self, timeout_s: float) -> list[T] | None:
        """Everything queued (possibly an empty list after ``timeout_s``); None once closed and drained."""
        with self._lock:
            if self._items:
                out = list(self._items)
                self._items.clear()
                self._ready.clear()
                return out
            if self.closed:
                return None
            self._ready.clear()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            return []
        with self._lock:
            out = list(self._items)
            self._items.clear()
            return out if out or not self.closed else None


class ClientLimit:
    """At most ``limit`` push connections at once: :meth:`slot` raises :class:`LimitReached` (429) when full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._n = 0
        self._lock = threading.Lock()
        self.refused = 0

    @property
    def count(self) -> int:
        return self._n

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._n >= self.limit:
                self.refused += 1
                raise LimitReached(f"{self._n} clients are connected, the view's limit (max_clients)", 429)
            self._n += 1
        try:
            yield
        finally:
            with self._lock:
                self._n -= 1


class Fanout:
    """Channels by key (a stream id, or "*" for every stream); :meth:`publish` puts an item into each channel of a
    key without blocking."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Channel[Any]]] = {}
        self._lock = threading.Lock()

    def subscribe(self, key: str, channel: Channel[Any]) -> None:
        with self._lock:
            self._subs.setdefault(key, set()).add(channel)

    def unsubscribe(self, key: str, channel: Channel[Any]) -> None:
        with self._lock:
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(channel)
                if not subs:
                    del self._subs[key]

    def publish(self, key: str, item: Any) -> None:
        with self._lock:
            targets = list(self._subs.get(key, ())) + list(self._subs.get("*", ()))
        for ch in targets:
            ch.put(item)

    def keys(self) -> int:
        with self._lock:
            return len(self._subs)
