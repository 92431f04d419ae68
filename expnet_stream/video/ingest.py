"""Demux a video file or URL with PyAV and publish its encoded packets to the input topic.

Every send is checked: when ``publish`` returns a future (kafka-python's ``FutureRecordMetadata``, or anything with
``is_done``, ``failed()`` and ``exception``), :func:`ingest` keeps it until it resolves and counts the messages the
broker did not acknowledge (:attr:`IngestStats.lost`). A stream that was started always gets its ``stream_end``: with
reason ``eof`` at the end of the source, the stop reason (``stopped``, ``interrupted``, ``terminated``) when a
:class:`StopFlag` is set, and ``error: ...`` when demuxing fails mid-stream (the error is raised after the marker).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import av

from ..errors import DecodeError
from ..events.codec import encode
from ..events.schema import StreamEnd, StreamStart, VideoPacket

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], object]
"""Sends one message: (key = stream id, msgpack value). May return a :class:`SendFuture` to have the send checked."""

PRUNE_EVERY = 256
"""Sends between two sweeps of the resolved futures: what a stream holds stays bounded by what is in flight."""

MAX_REASON_CHARS = 200
"""``StreamEnd.reason`` of an error is cut to this length."""


@runtime_checkable
class SendFuture(Protocol):
    """What :func:`ingest` needs of a send's result (kafka-python's futures have it)."""

    is_done: bool
    exception: Any

    def failed(self) -> bool: ...


class StopFlag(threading.Event):
    """A stop event that says why: the ``reason`` of the ``stream_end`` that a stopped stream gets."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = "stopped"

    def stop(self, reason: str = "stopped") -> None:
        """Ask every stream watching this flag to end; the first reason given wins."""
        if not self.is_set():
            self.reason = reason
        self.set()


@dataclass
class IngestStats:
    """What one stream's ingest sent, and what the broker did not acknowledge.

    ``sent`` counts every message handed to ``publish`` (stream markers too), ``packets`` the video packets among them.
    ``lost`` counts the messages whose send failed (``lost_packets`` the video packets among them); ``errors`` holds
    the first five failures (``'Type: message'``), ``first_error`` the first exception. ``pending`` counts the sends
    not resolved yet: :meth:`settle` with ``final=True`` (after the producer's flush) counts those as lost.
    ``end_reason`` is the reason of the ``stream_end`` sent for the stream, None while none was sent.
    """

    stream_id: str
    session: str = field(default_factory=lambda: new_session())
    packets: int = 0
    keyframes: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    sent: int = 0
    lost: int = 0
    lost_packets: int = 0
    errors: list[str] = field(default_factory=list)
    first_error: BaseException | None = field(default=None, repr=False)
    stream_started: bool = False
    end_reason: str | None = None
    _inflight: list[tuple[SendFuture, bool]] = field(default_factory=list, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def pending(self) -> int:
        return len(self._inflight)

    def record_failure(self, exc: BaseException, *, packet: bool) -> None:
        """Count one message the broker did not get (call holding ``_lock`` when other threads use these stats)."""
        self.lost += 1
        self.lost_packets += int(packet)
        if self.first_error is None:
            self.first_error = exc
        if len(self.errors) < 5:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def track(self, result: object, *, packet: bool) -> None:
        """Keep a send's future (when it is one) until it resolves; failed ones count as lost."""
        self.sent += 1
        if isinstance(result, SendFuture):
            self._inflight.append((result, packet))
        if self.sent % PRUNE_EVERY == 0:
            self.settle()

    def settle(self, *, final: bool = False) -> int:
        """Drop the resolved futures, counting the failed ones; with ``final`` the unresolved ones count as lost too.

        Returns the number of lost messages so far.
        """
        with self._lock:
            return self._settle(final)

    def _settle(self, final: bool) -> int:
        still: list[tuple[SendFuture, bool]] = []
        for fut, packet in self._inflight:
            if fut.is_done:
                if fut.failed():
                    exc = fut.exception
                    if not isinstance(exc, BaseException):
                        exc = RuntimeError(str(exc))
                    self.record_failure(exc, packet=packet)
            elif final:
                self.record_failure(TimeoutError("not acknowledged before the producer was closed"), packet=packet)
            else:
                still.append((fut, packet))
        self._inflight = still
        return self.lost

    def claim_end(self, reason: str) -> bool:
        """True for the one caller that may send this stream's ``stream_end`` (holding ``_lock``)."""
        if self.end_reason is not None or not self.stream_started:
            return False
        self.end_reason = reason
        return True


def _public_source(source: str) -> str:
    """The source without credentials (rtsp://user:pass@host -> rtsp://host)."""
    parts = urlsplit(source)
    if parts.password or parts.username:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return source


def new_session() -> str:
    """A new ingest session id: one per stream per ingester run (a worker refuses another session's records for a
    live stream)."""
    return uuid.uuid4().hex[:16]


def iter_stream_messages(
    source: str,
    stream_id: str,
    *,
    session: str | None = None,
    realtime: bool = False,
    loops: int = 1,
    max_packets: int | None = None,
    stop: threading.Event | None = None,
) -> Generator[StreamStart | VideoPacket | StreamEnd, None, None]:
    """Yield the stream-start message, one message per video packet, then the end-of-stream marker.

    With ``realtime`` the packets are paced by their decode timestamps; ``loops`` repeats a file,
    shifting timestamps so they keep increasing. Setting ``stop`` ends the stream at the next packet (a realtime wait
    wakes up at once) with reason ``stop.reason`` when it is a :class:`StopFlag`, else ``stopped``; so does reaching
    ``max_packets``.

    Every message carries ``session`` (a new one when None).

    Raises :class:`DecodeError` when the source cannot be opened or demuxing fails; then no end marker is yielded
    (:func:`ingest` sends one with reason ``error: ...`` for a stream it started).
    """
    session = session or new_session()
    try:
        container = av.open(source, options={"rtsp_transport": "tcp"} if source.startswith("rtsp") else None)
    except (av.error.FFmpegError, OSError) as exc:
        raise DecodeError(f"cannot open video source {_public_source(source)!r}: {exc}") from exc
    try:
        if not container.streams.video:
            raise DecodeError(f"{_public_source(source)!r} has no video stream")
        vs = container.streams.video[0]
        ctx = vs.codec_context
        extradata = bytes(ctx.extradata) if ctx.extradata else None
        tb = (vs.time_base.numerator, vs.time_base.denominator) if vs.time_base else (1, 90000)
        rate = vs.average_rate
        frame_rate = (rate.numerator, rate.denominator) if rate else None
        yield StreamStart(
            stream_id=stream_id,
            session=session,
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            time_base=tb,
            frame_rate=frame_rate,
            extradata=extradata,
            source=_public_source(source),
            sent_time=time.time(),
        )
        seq = 0
        t0 = time.monotonic()
        first_ts: int | None = None
        offset = 0
        stopped = False
        for loop in range(loops):
            if loop > 0:
                container.seek(0)
            last_ts = offset
            for packet in container.demux(vs):
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                if packet.size == 0:
                    continue
                pts = None if packet.pts is None else packet.pts + offset
                dts = None if packet.dts is None else packet.dts + offset
                ts = dts if dts is not None else pts
                if realtime and ts is not None:
                    if first_ts is None:
                        first_ts = ts
                    due = t0 + (ts - first_ts) * tb[0] / tb[1]
                    delay = due - time.monotonic()
                    if delay > 0:
                        if stop is None:
                            time.sleep(delay)
                        elif stop.wait(delay):
                            stopped = True
                            break
                if ts is not None:
                    last_ts = max(last_ts, ts, pts or ts)
                yield VideoPacket(
                    stream_id=stream_id,
                    session=session,
                    seq=seq,
                    pts=pts,
                    dts=dts,
                    time_base=tb,
                    keyframe=bool(packet.is_keyframe),
                    codec=ctx.name,
                    extradata=extradata if packet.is_keyframe else None,
                    width=ctx.width,
                    height=ctx.height,
                    data=bytes(packet),
                    capture_time=time.time(),
                )
                seq += 1
                if max_packets is not None and seq >= max_packets:
                    stopped = True
                    break
            if stopped:
                break
            # next loop starts one frame after the last timestamp
            step = round(tb[1] / tb[0] / (frame_rate[0] / frame_rate[1])) if frame_rate else 1
            offset = last_ts + max(step, 1)
        if not stopped:
            reason = "eof"
        elif stop is not None and stop.is_set():
            reason = getattr(stop, "reason", "stopped")
        else:
            reason = "stopped"
        yield StreamEnd(stream_id=stream_id, session=session, packets=seq, reason=reason, sent_time=time.time())
    except av.error.FFmpegError as exc:
        raise DecodeError(f"demuxing {_public_source(source)!r} failed: {exc}") from exc
    finally:
        container.close()


def _error_reason(exc: BaseException) -> str:
    """``error: <short>`` for a ``stream_end``; never the source URL (it may carry credentials)."""
    cause = exc.__cause__
    if isinstance(exc, DecodeError) and isinstance(cause, av.error.FFmpegError):
        text = f"demuxing failed: {cause.strerror or type(cause).__name__}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    short = "error: " + " ".join(text.split())
    return short if len(short) <= MAX_REASON_CHARS else short[: MAX_REASON_CHARS - 3] + "..."


def end_stream(stats: IngestStats, publish: Publish, reason: str) -> bool:
    """Send ``stats``' stream its ``stream_end`` (``packets`` = the packets sent) unless it has one or never started.

    Safe to call from another thread than the one ingesting (a stream stuck in a blocking read). Returns whether a
    marker was sent; a failing send is counted in ``stats``, never raised.
    """
    with stats._lock:
        if not stats.claim_end(reason):
            return False
        end = StreamEnd(
            stream_id=stats.stream_id,
            session=stats.session,
            packets=stats.packets,
            reason=reason,
            sent_time=time.time(),
        )
        try:
            stats.track(publish(stats.stream_id, encode(end)), packet=False)
        except Exception as exc:
            stats.sent += 1
            stats.record_failure(exc, packet=False)
            log.error("stream=%s: could not send stream_end (%s): %s", stats.stream_id, reason, exc)
            return False
    return True


def ingest(
    source: str,
    stream_id: str,
    publish: Publish,
    *,
    flush: Callable[[], object] | None = None,
    stats: IngestStats | None = None,
    **kwargs: Any,
) -> IngestStats:
    """Publish a whole source through ``publish``; returns counts. Keyword args as :func:`iter_stream_messages`.

    ``publish`` may return a future per send (kafka-python's ``producer.send``): failed sends are counted in
    ``IngestStats.lost``/``errors``, resolved futures are dropped every :data:`PRUNE_EVERY` sends. With ``flush``
    (e.g. ``producer.flush``) it is called at the end and every unresolved send then counts as lost, so the returned
    stats are final; without it, call ``stats.settle(final=True)`` after flushing yourself. Pass ``stats`` to watch
    a running ingest from another thread (and to end a stuck stream with :func:`end_stream`).

    A stream that was started always gets a ``stream_end``: when demuxing fails mid-stream (:class:`DecodeError`) one
    with reason ``error: <short>`` and ``packets`` = the packets sent is published before the error is raised; when
    ``publish`` itself raises, that message is counted as lost, an end marker is tried, and the error is raised.
    """
    stats = stats if stats is not None else IngestStats(stream_id=stream_id)
    key = stream_id
    messages = iter_stream_messages(source, stream_id, session=stats.session, **kwargs)
    try:
        for msg in messages:
            with stats._lock:
                if isinstance(msg, StreamEnd):
                    if not stats.claim_end(msg.reason):
                        break  # another thread ended the stream already
                    msg = msg.model_copy(update={"packets": stats.packets})
                elif stats.end_reason is not None:
                    break  # ended from outside (see end_stream): nothing more after the marker
                is_packet = isinstance(msg, VideoPacket)
                try:
                    result = publish(key, encode(msg))
                except Exception as exc:
                    stats.sent += 1
                    stats.record_failure(exc, packet=is_packet)
                    raise
                stats.track(result, packet=is_packet)
                if isinstance(msg, StreamStart):
                    stats.stream_started = True
                elif isinstance(msg, VideoPacket):
                    stats.packets += 1
                    stats.keyframes += int(msg.keyframe)
                    stats.bytes += len(msg.data)
    except Exception as exc:
        if stats.stream_started and stats.end_reason is None:
            reason = _error_reason(exc)
            log.error("stream=%s ends with %r after %d packets", stream_id, reason, stats.packets)
            end_stream(stats, publish, reason)
        raise
    finally:
        messages.close()
        if flush is not None:
            try:
                flush()
            finally:
                stats.settle(final=True)
        else:
            stats.settle()
        stats.finished = time.time()
    log.info(
        "ingested stream=%s packets=%d keyframes=%d lost=%d end=%s",
        stream_id,
        stats.packets,
        stats.keyframes,
        stats.lost,
        stats.end_reason,
    )
    return stats
