"""The live picture of a watched stream: its packets read from the input topic, decoded (the worker's
:class:`~expnet_stream.video.decode.StreamDecoder`), drawn with the faces of its frame events by the annotators of
``expnet-stream annotate`` (:func:`~expnet_stream.video.draw.draw_faces`) and sent as JPEG at ``picture_fps``.

Only watched streams are decoded: a :class:`PictureWatcher` runs, on its own thread with its own consumer, while a
client shows its picture. A decoded frame waits up to ``picture_wait_s`` (from its capture) for its frame event, then
is drawn with the faces of the latest event at most ``hold_s`` older (thinner boxes), or none.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import cv2
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ..config.settings import KafkaSettings
from ..errors import DecodeError, SchemaError
from ..events.codec import decode
from ..events.schema import FrameEvent, StreamEnd, StreamStart, VideoPacket
from ..video.decode import DecodedFrame, StreamDecoder
from ..video.draw import draw_faces
from .hub import LimitReached
from .settings import ViewSettings

log = logging.getLogger(__name__)

__all__ = ["Picture", "PictureWatcher", "Pictures"]

MAX_EVENTS_PER_STREAM = 256
MAX_PENDING_BYTES = 48 * 1024 * 1024
"""Decoded frames waiting for their events, per watched stream (about 200 frames of 640x360, 2 of 4K)."""


@dataclass(frozen=True)
class Picture:
    """One JPEG of a watched stream."""

    jpeg: bytes
    seq: int
    pts_time: float
    capture_time: float
    faces: int
    matched: bool  # drawn with its own frame event (not held, not without)


class PictureWatcher:
    """Decodes one stream from the input topic and calls ``sink`` with its pictures, until :meth:`stop`."""

    def __init__(
        self,
        stream_id: str,
        kafka: KafkaSettings,
        input_topic: str,
        settings: ViewSettings,
        sink: Callable[[Picture], None],
        *,
        group_id: str,
    ) -> None:
        self.stream_id = stream_id
        self._key = stream_id.encode()
        self.kafka = kafka
        self.topic = input_topic
        self.settings = settings
        self.sink = sink
        self.group_id = group_id
        self.decoder = StreamDecoder(stream_id)
        self._events: OrderedDict[int, FrameEvent] = OrderedDict()  # by pts
        self._latest_event_pts = -1
        self._events_lock = threading.Lock()
        self._pending: deque[tuple[DecodedFrame, float]] = deque()
        self._last_drawn: FrameEvent | None = None
        self._next_due = 0.0
        self.sent = 0
        self.decoded = 0
        self.errors = 0
        self.ended = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"view-picture-{stream_id[:32]}", daemon=True)

    # ---------------------------------------------------------------------------------------------- from the feed
    def on_event(self, ev: FrameEvent) -> None:
        """A frame event of this stream (called from the event consumer's thread)."""
        if ev.pts is None:
            return
        with self._events_lock:
            self._events[ev.pts] = ev
            self._latest_event_pts = max(self._latest_event_pts, ev.pts)
            while len(self._events) > MAX_EVENTS_PER_STREAM:
                self._events.popitem(last=False)

    # ---------------------------------------------------------------------------------------------- the thread
    def start(self) -> PictureWatcher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _consumer(self) -> KafkaConsumer:
        c = KafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id=f"{self.group_id}-picture",
            fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        ids = c.partitions_for_topic(self.topic) or set()
        parts = [TopicPartition(self.topic, p) for p in sorted(ids)]
        c.assign(parts)
        if parts:
            ends, begins = c.end_offsets(parts), c.beginning_offsets(parts)
            for tp in parts:  # read back to a keyframe: the decoder needs one before it shows anything
                c.seek(tp, max(begins.get(tp, 0), ends.get(tp, 0) - self.settings.rewind_records))
        return c

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                    if not consumer.assignment():
                        consumer.close(autocommit=False)
                        consumer = None
                        self._stop.wait(0.5)
                        continue
                batches = consumer.poll(timeout_ms=30, max_records=200)
            except KafkaError as exc:
                log.warning("view picture stream=%s: %s; retrying", self.stream_id, exc)
                self._stop.wait(1.0)
                continue
            for records in batches.values():
                for record in records:
                    if record.key == self._key:  # other streams' packets are not even unpacked
                        self._on_record(record.value)
            self._emit(time.time())
        if consumer is not None:
            consumer.close(autocommit=False)

    def _on_record(self, value: bytes) -> None:
        try:
            msg = decode(value)
        except SchemaError:
            self.errors += 1
            return
        if isinstance(msg, StreamStart):
            self.ended = False
        elif isinstance(msg, StreamEnd):
            self.ended = True
            flushed = self.decoder.flush()  # the frames a decoder holds back (B-frames) until the end
            self.decoded += len(flushed)
            self._queue([(f, time.time()) for f in flushed])
        elif isinstance(msg, VideoPacket):
            if time.time() - msg.capture_time > 30 and not msg.keyframe and self.decoder.waiting_for_keyframe:
                return
            try:
                frames = self.decoder.decode(msg)
            except DecodeError:
                self.errors += 1
                return
            self.ended = False
            self.decoded += len(frames)
            self._queue([(f, msg.capture_time) for f in frames])

    def _queue(self, frames: list[tuple[DecodedFrame, float]]) -> None:
        """Queue decoded frames; a frame that a newer ready frame supersedes goes at once (so reading back to a
        keyframe holds one frame, not hundreds), and the queue never holds more than ``MAX_PENDING_BYTES``."""
        now = time.time()
        for item in frames:
            self._pending.append(item)
            while len(self._pending) >= 2 and self._ready(*self._pending[1], now):
                self._pending.popleft()
            cap = max(2, MAX_PENDING_BYTES // max(1, item[0].image.nbytes))
            while len(self._pending) > cap:
                self._pending.popleft()

    def _ready(self, frame: DecodedFrame, capture_time: float, now: float) -> bool:
        if now - capture_time >= self.settings.picture_wait_s:
            return True
        with self._events_lock:
            return frame.pts is not None and (frame.pts in self._events or self._latest_event_pts > frame.pts)

    def _emit(self, now: float) -> None:
        """Send the newest ready frame (at most ``picture_fps`` a second); older ready frames are passed over."""
        choice: tuple[DecodedFrame, float] | None = None
        while self._pending and self._ready(*self._pending[0], now):
            choice = self._pending.popleft()
        if choice is None:
            return
        if now < self._next_due:
            self._pending.appendleft(choice)  # still the newest ready one when the next picture is due
            return
        frame, capture_time = choice
        interval = 1.0 / self.settings.picture_fps
        # a schedule of slots, not "interval after the last": picture_fps on average whatever the frames' phase
        self._next_due = max(self._next_due + interval, now - interval / 2)
        ev, held = self._faces_for(frame)
        image = frame.image.copy() if not frame.image.flags.writeable else frame.image
        if ev is not None and ev.faces:
            draw_faces(image, ev.faces, held=held)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
        if not ok:
            self.errors += 1
            return
        self.sent += 1
        self.sink(Picture(buf.tobytes(), self.sent, frame.pts_time, capture_time, len(ev.faces) if ev else 0, not held))

    def _faces_for(self, frame: DecodedFrame) -> tuple[FrameEvent | None, bool]:
        with self._events_lock:
            ev = self._events.get(frame.pts) if frame.pts is not None else None
        if ev is not None:
            self._last_drawn = ev
            return ev, False
        last = self._last_drawn
        if last is not None and 0.0 <= frame.pts_time - last.pts_time <= self.settings.hold_s + 1e-6:
            return last, True
        return None, True


class Pictures:
    """The watched streams: a :class:`PictureWatcher` per stream with clients, at most ``max_watched``
    (:class:`LimitReached` 503 past it); a watcher stops when its last client leaves."""

    def __init__(self, kafka: KafkaSettings, input_topic: str, settings: ViewSettings, *, group_id: str) -> None:
        self.kafka = kafka
        self.topic = input_topic
        self.settings = settings
        self.group_id = group_id
        self._watchers: dict[str, tuple[PictureWatcher, list[Callable[[Picture], None]]]] = {}
        self._lock = threading.Lock()
        self.refused = 0

    def watched(self) -> list[str]:
        with self._lock:
            return list(self._watchers)

    def watch(self, stream_id: str, sink: Callable[[Picture], None]) -> PictureWatcher:
        """Add ``sink`` to the stream's pictures, starting its watcher if it has none."""
        with self._lock:
            entry = self._watchers.get(stream_id)
            if entry is None:
                if len(self._watchers) >= self.settings.max_watched:
                    self.refused += 1
                    raise LimitReached(
                        f"{len(self._watchers)} streams are watched, the view's limit (max_watched)", 503
                    )
                sinks: list[Callable[[Picture], None]] = []

                def fan(p: Picture, sinks: list[Callable[[Picture], None]] = sinks) -> None:
                    for s in list(sinks):
                        s(p)

                watcher = PictureWatcher(stream_id, self.kafka, self.topic, self.settings, fan, group_id=self.group_id)
                entry = (watcher, sinks)
                self._watchers[stream_id] = entry
                watcher.start()
                log.info("view: watching stream=%s", stream_id)
            entry[1].append(sink)
            return entry[0]

    def unwatch(self, stream_id: str, sink: Callable[[Picture], None]) -> None:
        with self._lock:
            entry = self._watchers.get(stream_id)
            if entry is None:
                return
            if sink in entry[1]:
                entry[1].remove(sink)
            if entry[1]:
                return
            del self._watchers[stream_id]
        entry[0].stop(timeout_s=0)  # called on the web app's event loop: never waits for the thread
        log.info("view: stopped watching stream=%s", stream_id)

    def on_frame(self, ev: FrameEvent) -> None:
        """Route a frame event to its stream's watcher (if watched)."""
        with self._lock:
            entry = self._watchers.get(ev.stream_id)
        if entry is not None:
            entry[0].on_event(ev)

    def stop(self) -> None:
        with self._lock:
            entries = list(self._watchers.values())
            self._watchers.clear()
        for watcher, _ in entries:
            watcher.stop()
