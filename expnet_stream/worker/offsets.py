"""Which input offsets may be committed: only those whose work is finished and acknowledged."""

from __future__ import annotations

import heapq


class OffsetTracker:
    """Tracks one partition's offsets from "consumed" to "done".

    The committable position is the smallest offset that is consumed but not done (or one past the
    highest offset seen when everything is done), so a commit never skips unfinished work.

    >>> t = OffsetTracker()
    >>> for o in (5, 6, 7): t.consumed(o)
    >>> t.done(6); t.committable()
    5
    >>> t.done(5); t.committable()
    7
    >>> t.done(7); t.committable()
    8
    """

    def __init__(self) -> None:
        self._open: list[int] = []  # heap of consumed, not yet done offsets
        self._done: set[int] = set()
        self._next: int | None = None  # one past the highest consumed offset

    def consumed(self, offset: int) -> None:
        heapq.heappush(self._open, offset)
        if self._next is None or offset + 1 > self._next:
            self._next = offset + 1

    def done(self, offset: int) -> None:
        self._done.add(offset)
        while self._open and self._open[0] in self._done:
            self._done.discard(heapq.heappop(self._open))

    def committable(self) -> int | None:
        """The offset to commit (next to read), or None when nothing was consumed."""
        if self._open:
            return self._open[0]
        return self._next

    @property
    def pending(self) -> int:
        return len(self._open)
