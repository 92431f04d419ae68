"""Demux a video file or URL with PyAV and publish its encoded packets to the input topic."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import av

from ..errors import DecodeError
from ..events.codec import encode
from ..events.schema import StreamEnd, StreamStart, VideoPacket

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]
"""Sends one message: (key = stream id, msgpack value)."""


@dataclass
class IngestStats:
    stream_id: str
    packets: int = 0
    keyframes: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None


def _public_source(source: str) -> str:
    """The source without credentials (rtsp://user:pass@host -> rtsp://host)."""
    parts = urlsplit(source)
    if parts.password or parts.username:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return source


def iter_stream_messages(
    source: str,
    stream_id: str,
    *,
    realtime: bool = False,
    loops: int = 1,
    max_packets: int | None = None,
    stop: threading.Event | None = None,
) -> Iterator[StreamStart | VideoPacket | StreamEnd]:
    """Yield the stream-start message, one message per video packet, then the end-of-stream marker.

    With ``realtime`` the packets are paced by their decode timestamps; ``loops`` repeats a file,
    shifting timestamps so they keep increasing.
    """
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
                        time.sleep(delay)
                if ts is not None:
                    last_ts = max(last_ts, ts, pts or ts)
                yield VideoPacket(
                    stream_id=stream_id,
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
        yield StreamEnd(stream_id=stream_id, packets=seq, reason="stopped" if stopped else "eof", sent_time=time.time())
    except av.error.FFmpegError as exc:
        raise DecodeError(f"demuxing {_public_source(source)!r} failed: {exc}") from exc
    finally:
        container.close()


def ingest(source: str, stream_id: str, publish: Publish, **kwargs: object) -> IngestStats:
    """Publish a whole source through ``publish``; returns counts. Keyword args as :func:`iter_stream_messages`."""
    stats = IngestStats(stream_id=stream_id)
    key = stream_id
    for msg in iter_stream_messages(source, stream_id, **kwargs):  # type: ignore[arg-type]
        value = encode(msg)
        publish(key, value)
        if isinstance(msg, VideoPacket):
            stats.packets += 1
            stats.keyframes += int(msg.keyframe)
            stats.bytes += len(msg.data)
    stats.finished = time.time()
    log.info("ingested stream=%s packets=%d keyframes=%d", stream_id, stats.packets, stats.keyframes)
    return stats
