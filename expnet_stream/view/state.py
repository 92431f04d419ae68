"""The stream table: what the view knows of each stream, bounded in streams, events per stream and time.

The table is fed by the event consumer (:mod:`.feed`) from one thread and read by the web app from another; every
method takes the table's lock. Times of "last heard" are the events' own publish times, so events read back at start
(``backfill_records``) place a stream correctly in the past.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from ..events.aggregate_schema import EmotionAggregate
from ..events.schema import FrameEvent, StreamSummary

__all__ = ["StreamRecord", "StreamTable", "compact_aggregate", "compact_frame"]

RATE_WINDOW_S = 5.0
"""Frames/s is counted over the events of this many seconds."""
MAX_TIMELINE_POINTS = 3000
"""Compact frames kept per stream for a new page's timeline (60 s at 50 frames/s)."""
MAX_TRACK_AGGREGATES = 32
"""Latest window aggregates kept per stream, one per track (the stream's own, track -1, always)."""
MAX_ID_CHARS = 256
MAX_FACES = 64
MAX_CLASSES = 32
MAX_CLASS_CHARS = 64
MAX_CLOCK_AHEAD_S = 5.0
"""An event published "in the future" by a skewed clock counts as published at most this far ahead."""


def _finite(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def _classes_ok(emotions: dict[str, float] | None) -> bool:
    if not emotions:
        return True
    return (
        len(emotions) <= MAX_CLASSES
        and all(len(k) <= MAX_CLASS_CHARS for k in emotions)
        and _finite(*emotions.values())
    )


def refusal(ev: FrameEvent | EmotionAggregate | StreamSummary) -> str | None:
    """Why the view passes over an event (None: it takes it). The schema leaves these open; the view's bounds do not:
    a stream id over 256 characters, a non-finite time or number, over 64 faces, over 32 emotion classes or a class
    name over 64 characters."""
    if not 0 < len(ev.stream_id) <= MAX_ID_CHARS:
        return "stream_id"
    if not _finite(ev.publish_time):
        return "time"
    if isinstance(ev, FrameEvent):
        if not _finite(ev.pts_time, ev.capture_time) or len(ev.faces) > MAX_FACES:
            return "frame"
        for f in ev.faces:
            if not (_finite(*f.box) and _classes_ok(f.emotions) and _classes_ok(f.emotions_smoothed)):
                return "face"
    elif isinstance(ev, EmotionAggregate):
        numbers = (ev.window_start, ev.window_end, ev.dominant_share, ev.stability)
        if not (_finite(*numbers) and _classes_ok(ev.emotions)):
            return "aggregate"
        if ev.dominant_emotion is not None and len(ev.dominant_emotion) > MAX_CLASS_CHARS:
            return "aggregate"
    return None


def _top(emotions: dict[str, float] | None) -> tuple[str | None, float | None]:
    if not emotions:
        return None, None
    name = max(emotions, key=lambda k: emotions[k])
    return name, round(float(emotions[name]), 3)


def compact_frame(ev: FrameEvent, receive_time: float) -> dict[str, Any]:
    """What a page needs of a frame event: times, and per face its track, box, top emotion (raw and smoothed)."""
    faces = []
    for f in ev.faces:
        top, p = _top(f.emotions)  # as the picture's label says
        smooth_top, smooth_p = _top(f.emotions_smoothed) if f.emotions_smoothed else (top, p)
        faces.append(
            {
                "track": f.track_id,
                "top": top,
                "p": p,
                "smooth_top": smooth_top,  # the track's smoothed emotion: the timeline's, flickers less
                "smooth_p": smooth_p,
                "box": [round(v, 1) for v in f.box],
            }
        )
    return {
        "kind": "frame",
        "stream": ev.stream_id,
        "seq": ev.frame_seq,
        "pts_time": round(ev.pts_time, 3),
        "capture_time": round(ev.capture_time, 3),
        "receive_time": round(receive_time, 3),
        "faces": faces,
    }


def compact_aggregate(ev: EmotionAggregate) -> dict[str, Any]:
    return {
        "kind": "aggregate",
        "stream": ev.stream_id,
        "track": ev.track_id,
        "window": [round(ev.window_start, 3), round(ev.window_end, 3)],
        "frames": ev.frames,
        "faces": ev.faces,
        "dominant": ev.dominant_emotion,
        "dominant_share": ev.dominant_share,
        "stability": ev.stability,
        "emotions": {k: round(v, 4) for k, v in (ev.emotions or {}).items()},
        "partial": ev.partial,
    }


@dataclass
class StreamRecord:
    """One stream as the view saw it."""

    stream_id: str
    first_seen: float
    last_seen: float  # publish time of the stream's latest event
    width: int = 0
    height: int = 0
    frames: int = 0
    faces_now: int = 0
    lag_s: float | None = None  # receive time - capture time of the latest frame event
    ended: str | None = None  # end_reason of the stream's summary
    ended_at: float = 0.0  # publish time of that summary
    dominant: str | None = None  # of the stream's latest window (track -1)
    times: deque[float] = field(default_factory=lambda: deque(maxlen=512))  # publish times, for frames/s
    timeline: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_TIMELINE_POINTS))
    aggregates: OrderedDict[int, dict[str, Any]] = field(default_factory=OrderedDict)

    def state(self, now: float, idle_after_s: float) -> str:
        if self.ended is not None:
            return "idle" if self.ended == "idle" else "ended"
        return "live" if now - self.last_seen <= idle_after_s else "idle"

    def fps(self, now: float) -> float:
        recent = [t for t in self.times if now - t <= RATE_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        return round((len(recent) - 1) / max(1e-3, recent[-1] - recent[0]), 2)

    def row(self, now: float, idle_after_s: float) -> dict[str, Any]:
        return {
            "stream": self.stream_id,
            "state": self.state(now, idle_after_s),
            "end_reason": self.ended,
            "fps": self.fps(now),
            "faces": self.faces_now,
            "dominant": self.dominant,
            "lag_s": None if self.lag_s is None else round(self.lag_s, 3),
            "last_seen_s": round(max(0.0, now - self.last_seen), 1),
            "size": [self.width, self.height],
            "frames": self.frames,
        }


class StreamTable:
    """Streams by id, at most ``max_streams`` (the one heard of longest ago goes first), each forgotten
    ``forget_after_s`` after its last event."""

    def __init__(self, max_streams: int = 256, forget_after_s: float = 300.0, idle_after_s: float = 5.0) -> None:
        self.max_streams = max_streams
        self.forget_after_s = forget_after_s
        self.idle_after_s = idle_after_s
        self._streams: OrderedDict[str, StreamRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        self.refused: dict[str, int] = {}  # events passed over, by reason (:func:`refusal`)

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)

    def _record(self, stream_id: str, t: float) -> StreamRecord:
        rec = self._streams.get(stream_id)
        if rec is None:
            rec = StreamRecord(stream_id, first_seen=t, last_seen=t)
            self._streams[stream_id] = rec
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
                self.evicted += 1
        else:
            self._streams.move_to_end(stream_id)
            rec.last_seen = max(rec.last_seen, t)
        return rec

    def _refused(self, ev: FrameEvent | EmotionAggregate | StreamSummary) -> bool:
        why = refusal(ev)
        if why is not None:
            self.refused[why] = self.refused.get(why, 0) + 1
        return why is not None

    def on_frame(self, ev: FrameEvent, receive_time: float) -> dict[str, Any] | None:
        """Count a frame event; returns its compact form (what pages get), None when :func:`refusal` refuses it."""
        if self._refused(ev):
            return None
        compact = compact_frame(ev, receive_time)
        t = min(ev.publish_time, time.time() + MAX_CLOCK_AHEAD_S)
        with self._lock:
            rec = self._record(ev.stream_id, t)
            if rec.ended is not None and t > rec.ended_at + 1.0:
                rec.ended = None  # the stream started again
            rec.width, rec.height = ev.width, ev.height
            rec.frames += 1
            rec.faces_now = len(ev.faces)
            rec.lag_s = receive_time - ev.capture_time
            rec.times.append(t)
            rec.timeline.append(compact)
        return compact

    def on_aggregate(self, ev: EmotionAggregate) -> dict[str, Any] | None:
        if self._refused(ev):
            return None
        compact = compact_aggregate(ev)
        with self._lock:
            rec = self._record(ev.stream_id, min(ev.publish_time, time.time() + MAX_CLOCK_AHEAD_S))
            if ev.track_id < 0:
                rec.dominant = ev.dominant_emotion
            rec.aggregates[ev.track_id] = compact
            rec.aggregates.move_to_end(ev.track_id)
            while len(rec.aggregates) > MAX_TRACK_AGGREGATES:
                oldest = next(k for k in rec.aggregates if k >= 0) if -1 in rec.aggregates else None
                rec.aggregates.pop(oldest if oldest is not None else next(iter(rec.aggregates)))
        return compact

    def on_summary(self, ev: StreamSummary) -> dict[str, Any] | None:
        if self._refused(ev):
            return None
        t = min(ev.publish_time, time.time() + MAX_CLOCK_AHEAD_S)
        reason = ev.end_reason[:200]
        with self._lock:
            rec = self._record(ev.stream_id, t)
            rec.ended, rec.ended_at = reason, t
            rec.faces_now = 0
            state = rec.state(time.time(), self.idle_after_s)
        return {"kind": "state", "stream": ev.stream_id, "state": state, "end_reason": reason}

    def expire(self, now: float | None = None) -> list[str]:
        """Forget the streams not heard of for ``forget_after_s``; returns their ids."""
        now = time.time() if now is None else now
        gone: list[str] = []
        with self._lock:
            for sid, rec in list(self._streams.items()):
                if now - rec.last_seen > self.forget_after_s:
                    del self._streams[sid]
                    gone.append(sid)
        return gone

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """The streams page's rows, the most recently heard of first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = [r.row(now, self.idle_after_s) for r in self._streams.values()]
        return sorted(rows, key=lambda r: r["last_seen_s"])

    def detail(self, stream_id: str, timeline_s: float, now: float | None = None) -> dict[str, Any] | None:
        """One stream's row, its latest aggregates and its frames of the last ``timeline_s`` seconds."""
        now = time.time() if now is None else now
        with self._lock:
            rec = self._streams.get(stream_id)
            if rec is None:
                return None
            return {
                "row": rec.row(now, self.idle_after_s),
                "aggregates": list(rec.aggregates.values()),
                "timeline": [c for c in rec.timeline if now - c["capture_time"] <= timeline_s],
            }

    def state_of(self, stream_id: str, now: float | None = None) -> dict[str, Any] | None:
        now = time.time() if now is None else now
        with self._lock:
            rec = self._streams.get(stream_id)
            return None if rec is None else rec.row(now, self.idle_after_s)
