"""Where a new owner of a partition must start decoding so no frame after the committed position is lost.

Decoders need a keyframe. A worker that takes over a partition at committed offset ``c`` scans the
records just below ``c`` (doubling the window up to a limit) and finds, for every stream still open at
``c``, its last keyframe before ``c``. It then re-reads from the earliest of those keyframes and
replays up to ``c`` (decoding without re-publishing). This needs nothing from the broker but the log
itself: commit metadata would be the obvious place for the hint, but not every Kafka-protocol
broker keeps it (Tansu drops it).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ..errors import SchemaError
from ..events.codec import decode
from ..events.schema import StreamEnd, StreamStart, VideoPacket

log = logging.getLogger(__name__)


def rewind_point(records: list[tuple[int, bytes | None]], committed: int) -> tuple[int | None, bool]:
    """Earliest keyframe offset needed to resume the streams open at ``committed``.

    ``records`` are ``(offset, value)`` below ``committed`` in offset order. Returns ``(offset or None,
    complete)``; ``complete`` is False when an open stream had no keyframe in the window (scan further back).

    >>> rewind_point([], 10)
    (None, True)
    """
    last_kf: dict[str, int] = {}
    open_streams: set[str] = set()
    for offset, value in records:
        if offset >= committed or value is None:
            continue
        try:
            msg = decode(value)
        except SchemaError:
            continue
        if isinstance(msg, VideoPacket):
            open_streams.add(msg.stream_id)
            if msg.keyframe:
                last_kf[msg.stream_id] = offset
        elif isinstance(msg, StreamEnd):
            open_streams.discard(msg.stream_id)
            last_kf.pop(msg.stream_id, None)
        elif isinstance(msg, StreamStart):
            last_kf.pop(msg.stream_id, None)
    needed = [last_kf[s] for s in open_streams if s in last_kf]
    complete = all(s in last_kf for s in open_streams)
    return (min(needed) if needed else None), complete


def read_range(
    kafka_kwargs: dict[str, Any], tp: TopicPartition, start: int, end: int, timeout_s: float = 15.0
) -> list[tuple[int, bytes | None]]:
    """Records ``[start, end)`` of one partition, read with a throwaway consumer outside the group."""
    consumer = KafkaConsumer(**kafka_kwargs, group_id=None, enable_auto_commit=False)
    out: list[tuple[int, bytes | None]] = []
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((r.offset, r.value) for r in records if r.offset < end)
            if (out and out[-1][0] >= end - 1) or consumer.position(tp) >= end:
                break
    finally:
        consumer.close()
    return out


def find_rewind(
    kafka_kwargs: dict[str, Any], tp: TopicPartition, committed: int, *, window: int = 256, max_window: int = 16384
) -> int | None:
    """Offset to re-read from so every stream open at ``committed`` resumes at a keyframe (None: no rewind)."""
    while True:
        start = max(0, committed - window)
        try:
            records = read_range(kafka_kwargs, tp, start, committed)
        except KafkaError as exc:
            log.warning("partition=%d: cannot scan for keyframes (%s); resuming at the commit", tp.partition, exc)
            return None
        rewind, complete = rewind_point(records, committed)
        if complete or start == 0 or window >= max_window:
            if not complete:
                log.warning("partition=%d: a stream's keyframe lies more than %d records back", tp.partition, window)
            return rewind
        window *= 2
