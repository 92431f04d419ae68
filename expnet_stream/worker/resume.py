"""Where a new owner of a partition must start decoding so no frame, window or track id is lost.

Decoders need a keyframe, and the temporal stage needs history. A worker that takes over a partition at
committed offset ``c`` scans the records just below ``c`` (doubling the window up to a limit) and finds, for
every stream still open at ``c``:

* the last keyframe at or before ``T - horizon``, where ``T`` is the stream's newest packet time below ``c`` and
  ``horizon`` the longest aggregate window plus the allowed lateness: replaying from there rebuilds every window
  still open at ``c`` from its first frame, so aggregates stay complete under at-least-once;
* the last :class:`~expnet_stream.events.schema.TrackState` the previous owner wrote for the stream (into the
  worker-state topic, whose tail is read) about a frame below ``c``: the replay reaches back to that frame too, and
  renames the tracks it rebuilds to those ids.

It then re-reads from the earliest of those keyframes and replays up to ``c`` (decoding, detecting and
inferring, without re-publishing). This needs nothing from the broker but the log itself: commit metadata
would be the obvious place for hints, but not every Kafka-protocol broker keeps it (Tansu drops it).

The scan runs on a worker thread while the partition is paused (:class:`RewindScans`), never on the poll loop:
however long it takes, the consumer keeps polling its other partitions within ``max_poll_interval_ms``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ..errors import SchemaError
from ..events.codec import decode
from ..events.schema import IDLE, StreamEnd, StreamStart, TrackState, VideoPacket

log = logging.getLogger(__name__)

STATE_MAC_HEADER = "expnet-state-mac"
"""Record header of a signed track state: hex HMAC-SHA256 of the record value under ``state_secret``."""


def state_mac(secret: bytes, value: bytes) -> bytes:
    """The signature a worker puts in :data:`STATE_MAC_HEADER` of a track state it writes."""
    return hmac.new(secret, value, hashlib.sha256).hexdigest().encode()


def state_signed(secret: bytes, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None) -> bool:
    """Whether a worker-state record was written by a worker that holds ``secret`` (compared in constant time)."""
    if value is None:
        return False
    macs = [v for k, v in headers or () if k == STATE_MAC_HEADER and v is not None]
    return len(macs) == 1 and hmac.compare_digest(macs[0], state_mac(secret, value))


@dataclass
class Rewind:
    """Result of a rewind scan: where to re-read from, and the track states to restore."""

    offset: int | None
    """Offset to re-read from (None: no open stream needs a rewind)."""
    complete: bool
    """False when an open stream's keyframe (or track state frame) lay beyond the scanned records."""
    states: dict[str, TrackState] = field(default_factory=dict)
    """Last track state per open stream, written below the committed offset."""


@dataclass
class _Scan:
    keyframes: list[tuple[int, float]] = field(default_factory=list)  # (offset, pts_time)
    last_time: float = float("-inf")
    last_seq: int = -1
    began: bool = False  # its stream_start (or packet seq 0) is in the scanned records
    state: TrackState | None = None


def rewind_point(
    records: list[tuple[int, bytes | None]],
    committed: int,
    horizon_s: float = 0.0,
    states: Sequence[TrackState] = (),
) -> Rewind:
    """Earliest keyframe offset needed to resume the streams open at ``committed``.

    ``records`` are ``(offset, value)`` below ``committed`` in offset order; ``horizon_s`` how much stream time
    before each stream's newest packet the replay must cover (0: only the decoder's keyframe); ``states`` the track
    states read from the worker-state topic, oldest first (the newest one about a frame below ``committed`` wins).

    >>> rewind_point([], 10)
    Rewind(offset=None, complete=True, states={})
    """
    streams: dict[str, _Scan] = {}
    for offset, value in records:
        if offset >= committed or value is None:
            continue
        try:
            msg = decode(value)
        except SchemaError:
            continue
        if isinstance(msg, VideoPacket):
            sc = streams.setdefault(msg.stream_id, _Scan())
            t = 0.0 if msg.pts is None else msg.pts * msg.time_base[0] / msg.time_base[1]
            sc.last_time = max(sc.last_time, t)
            sc.last_seq = max(sc.last_seq, msg.seq)
            sc.began |= msg.seq == 0
            if msg.keyframe:
                sc.keyframes.append((offset, t))
        elif isinstance(msg, StreamEnd):
            sc_end = streams.get(msg.stream_id)
            if msg.reason == IDLE and sc_end is not None and sc_end.last_seq >= msg.packets:
                continue  # a worker's idle marker the stream outlived: the worker ignores it too
            streams.pop(msg.stream_id, None)
        elif isinstance(msg, StreamStart):
            streams[msg.stream_id] = _Scan(began=True)
    for state in states:
        sc_state = streams.get(state.stream_id)
        if sc_state is not None and state.pts_time <= sc_state.last_time + 1e-6:
            sc_state.state = state  # a frame the replay reaches (a later one was published after the commit)
    needed: list[int] = []
    complete = True
    restore: dict[str, TrackState] = {}
    for sid, sc in streams.items():
        if sc.last_seq < 0:
            continue  # started, no packet yet
        target = sc.last_time - horizon_s
        if sc.state is not None:
            restore[sid] = sc.state
            target = min(target, sc.state.pts_time)
        before = [off for off, t in sc.keyframes if t <= target + 1e-9]
        if before:
            needed.append(before[-1])
        elif sc.keyframes and sc.began:
            needed.append(sc.keyframes[0][0])  # the stream began inside the scan: replay all of it
        else:
            complete = False  # its keyframe (or enough history) lies further back
            if sc.keyframes:
                needed.append(sc.keyframes[0][0])
    return Rewind(min(needed) if needed else None, complete, restore)


def read_range(
    kafka_kwargs: dict[str, Any],
    tp: TopicPartition,
    start: int,
    end: int | None,
    timeout_s: float = 15.0,
    *,
    accept: Callable[[Any], bool] | None = None,
) -> list[tuple[int, bytes | None]]:
    """Records ``[start, end)`` of one partition, read with a throwaway consumer outside the group; ``end=None``
    reads to the end the fetch high watermark reports (``end_offsets()`` cannot say it: Tansu answers the last
    batch's base offset + 1). ``accept`` (a consumer record: bool) leaves out the records it refuses."""
    consumer = KafkaConsumer(**kafka_kwargs, group_id=None, enable_auto_commit=False)
    out: list[tuple[int, bytes | None]] = []
    last = -1
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    last = r.offset
                    if (end is None or r.offset < end) and (accept is None or accept(r)):
                        out.append((r.offset, r.value))
            stop = end if end is not None else consumer.highwater(tp)
            if stop is not None and (last >= stop - 1 or consumer.position(tp) >= stop):
                break
    finally:
        consumer.close()
    return out


def read_states(
    kafka_kwargs: dict[str, Any], topic: str, partition: int, *, tail: int = 4096, secret: bytes | None = None
) -> list[TrackState]:
    """Track states in the last ``tail`` records of the worker-state partition that mirrors input ``partition``; with
    a ``secret`` (``state_secret``), only those a worker of the fleet signed (:func:`state_signed`)."""
    consumer = KafkaConsumer(**kafka_kwargs, group_id=None, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            log.warning("worker-state topic %s is missing: track ids restart on takeover", topic)
            return []
        tp = TopicPartition(topic, partition if partition in parts else partition % len(parts))
        end = consumer.end_offsets([tp])[tp]  # at most a batch short on Tansu: fine for where the tail starts
        begin = consumer.beginning_offsets([tp])[tp]
    finally:
        consumer.close()
    out: list[TrackState] = []
    refused = 0

    def signed(record: Any) -> bool:
        nonlocal refused
        ok = secret is None or state_signed(secret, record.value, record.headers)
        refused += not ok
        return ok

    records = read_range(kafka_kwargs, tp, max(begin, end - tail), None, accept=signed)
    if refused:
        log.warning(
            "partition=%d: %d record(s) of worker-state topic %s not signed with state_secret: ignored",
            tp.partition,
            refused,
            topic,
        )
    for _, value in records:
        try:
            msg = decode(value) if value is not None else None
        except SchemaError:
            continue
        if isinstance(msg, TrackState):
            out.append(msg)
    return out


def find_rewind(
    kafka_kwargs: dict[str, Any],
    tp: TopicPartition,
    committed: int,
    *,
    horizon_s: float = 0.0,
    state_topic: str | None = None,
    state_secret: bytes | None = None,
    window: int = 256,
    max_window: int = 16384,
) -> Rewind:
    """Where to re-read from so every stream open at ``committed`` resumes at a keyframe with ``horizon_s`` of
    history and its last track state (at most ``max_window`` records back; beyond that its windows are partial)."""
    states: list[TrackState] = []
    if state_topic is not None:
        try:
            states = read_states(kafka_kwargs, state_topic, tp.partition, secret=state_secret)
        except KafkaError as exc:
            log.warning("partition=%d: cannot read worker state (%s); track ids restart", tp.partition, exc)
    while True:
        start = max(0, committed - window)
        try:
            records = read_range(kafka_kwargs, tp, start, committed)
        except KafkaError as exc:
            log.warning("partition=%d: cannot scan for keyframes (%s); resuming at the commit", tp.partition, exc)
            return Rewind(None, False)
        rewind = rewind_point(records, committed, horizon_s, states)
        if rewind.complete or start == 0 or window >= max_window:
            if not rewind.complete:
                log.warning(
                    "partition=%d: a stream's keyframe or history lies more than %d records back", tp.partition, window
                )
            return rewind
        window *= 2


class RewindScans:
    """Rewind scans on worker threads, so the poll loop never waits for one (see the module docstring).

    The worker pauses a newly assigned partition, :meth:`start` s its scan, and each step :meth:`finished` hands
    back the partitions whose scan is done, to seek and resume.
    """

    def __init__(
        self,
        kafka_kwargs: dict[str, Any],
        *,
        threads: int = 2,
        horizon_s: float = 0.0,
        state_topic: str | None = None,
        state_secret: bytes | None = None,
    ) -> None:
        self.kafka_kwargs = kafka_kwargs
        self.horizon_s = horizon_s
        self.state_topic = state_topic
        self.state_secret = state_secret
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rewind-scan")
        self._running: dict[int, tuple[Future[Rewind], int, float]] = {}

    def start(self, tp: TopicPartition, committed: int) -> None:
        fut = self._pool.submit(
            find_rewind,
            self.kafka_kwargs,
            tp,
            committed,
            horizon_s=self.horizon_s,
            state_topic=self.state_topic,
            state_secret=self.state_secret,
        )
        self._running[tp.partition] = (fut, committed, time.monotonic())

    def finished(self) -> list[tuple[int, int, Rewind]]:
        """``(partition, committed, rewind)`` of the scans done since the last call."""
        out = []
        for p, (fut, committed, t0) in list(self._running.items()):
            if fut.done():
                del self._running[p]
                try:
                    rewind = fut.result()
                except Exception as exc:  # a failed scan resumes at the commit
                    log.warning("partition=%d: rewind scan failed (%s); resuming at the commit", p, exc)
                    rewind = Rewind(None, False)
                log.debug("partition=%d: rewind scan took %.2f s", p, time.monotonic() - t0)
                out.append((p, committed, rewind))
        return out

    def cancel(self, partitions: set[int]) -> None:
        """Forget scans of partitions no longer held (their results are dropped)."""
        for p in partitions:
            entry = self._running.pop(p, None)
            if entry is not None:
                entry[0].cancel()

    @property
    def running(self) -> set[int]:
        return set(self._running)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
