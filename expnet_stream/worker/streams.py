"""Stage 1 of the pipeline: the stream table. Every open stream's decoder, counters and the input sources its frames
still hold; capacity (``max_streams``); the previous owner's track states for streams a takeover replays."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ..errors import DecodeError
from ..events.schema import TrackState
from ..video.decode import DecodeLimits, StreamDecoder

log = logging.getLogger(__name__)


class Source(NamedTuple):
    """Where an input message came from."""

    partition: int
    offset: int


NO_SOURCE = Source(-1, -1)

FUTURE_SLACK_S = 5.0
"""How far ahead of the worker's clock a producer's capture time may count (clock skew between hosts)."""


@dataclass
class StreamCounters:
    packets: int = 0
    packets_skipped: int = 0
    frames_decoded: int = 0
    frames_sampled: int = 0
    frames_replayed: int = 0
    frames_with_faces: int = 0
    faces: int = 0


@dataclass
class StreamState:
    stream_id: str
    partition: int
    decoder: StreamDecoder
    counters: StreamCounters = field(default_factory=StreamCounters)
    last_slot: int | None = None
    frame_seq: int = 0
    # (pts, source) of decoded packets whose frame has not been emitted yet, in decode order
    outstanding: list[tuple[float, Source]] = field(default_factory=list)
    # pts of replayed packets: their frames were emitted by a previous owner
    replay_pts: set[int] = field(default_factory=set)
    # idle detection (the worker closes a stream that falls silent)
    last_seen: float = field(default_factory=time.monotonic)  # monotonic time of its last input message
    last_capture: float = 0.0  # capture_time of its last packet
    last_seq: int = -1  # highest packet seq seen
    idle_marker_sent: bool = False
    # track ids across takeovers: the previous owner's last track state (restored during replay), and ours
    carry: TrackState | None = None
    checkpoint: TrackState | None = None
    thumb: npt.NDArray[np.uint8] | None = None  # previous sampled frame, 64x36 grey (scene cuts)
    keyframe_pending: bool = False  # a keyframe was decoded since the last sampled frame
    checkpoint_sent_at: float = 0.0
    session: str | None = None  # the ingest session that owns the stream (None: a sender without sessions)

    def hold(self, pts: int | None, source: Source) -> None:
        """A decoded packet whose frame is not emitted yet (None pts sorts first: released by the next frame)."""
        self.outstanding.append((-math.inf if pts is None else float(pts), source))

    def release(self, pts: int | None) -> list[Source]:
        """Sources of packets whose frames are now all out (decoders emit frames in pts order)."""
        if pts is None:
            return []
        keep: list[tuple[float, Source]] = []
        out: list[tuple[float, Source]] = []
        for item in self.outstanding:
            (out if item[0] <= pts else keep).append(item)
        self.outstanding = keep
        return [s for _, s in out]

    def release_all(self) -> list[Source]:
        """Every source still held (the stream ends or restarts)."""
        out = [s for _, s in self.outstanding]
        self.outstanding.clear()
        return out


class StreamTable:
    """The open streams by id, at most ``max_streams``; a stream met mid-way (a takeover) gets its carried track
    state."""

    def __init__(
        self, *, decoder_threads: int = 1, max_streams: int | None = None, limits: DecodeLimits | None = None
    ) -> None:
        self.decoder_threads = decoder_threads
        self.max_streams = max_streams
        self.limits = limits
        self.streams: dict[str, StreamState] = {}
        #: last track states of streams a takeover replays (from the rewind scan), by stream id
        self.carried: dict[str, TrackState] = {}
        #: newest packet capture_time per input partition ("stream time" for idle detection)
        self.partition_time: dict[int, float] = {}
        #: called with a stream evicted at max_streams, before it is forgotten, and with a stream whose decoder is
        #: evicted at ``limits.memory_bytes`` (the intake flushes it)
        self.on_evict: Callable[[StreamState], None] | None = None
        self.evicted = 0
        self.decoders_evicted = 0

    def get(self, stream_id: str) -> StreamState | None:
        return self.streams.get(stream_id)

    def open(self, stream_id: str, partition: int, *, replace: bool = False) -> StreamState:
        """A new state for the stream (``replace``: it restarts, taking its old slot)."""
        if not replace:
            self.check_capacity(stream_id)
        decoder = StreamDecoder(stream_id, threads=self.decoder_threads, limits=self.limits, reserve=self._reserve)
        state = self.streams[stream_id] = StreamState(stream_id, partition, decoder)
        return state

    @property
    def decoder_memory(self) -> int:
        """Estimated bytes of the open decoders (:meth:`DecodeLimits.memory_for`)."""
        return sum(st.decoder.memory_bytes for st in self.streams.values())

    def _reserve(self, decoder: StreamDecoder, need: int) -> None:
        """Room for a decoder about to open with ``need`` bytes within ``limits.memory_bytes``. Decoders are evicted
        (:attr:`on_evict` flushes them; each reopens at its stream's next keyframe, its packets before it are
        dead-lettered as ``decoder_evicted``): first those that decoded nothing but their opening keyframe (a flood of
        one-picture streams cannot push out a stream in the middle of a GOP), each group least recently active first.
        A decoder larger than the whole budget is refused (``decoder_memory``)."""
        budget = None if self.limits is None else self.limits.memory_bytes
        if budget is None:
            return
        if need > budget:
            raise DecodeError(
                f"stream {decoder.stream_id}: its decoder needs about {need / 2**20:.0f} MiB, over decode.memory_mb "
                f"({budget / 2**20:.0f} MiB)",
                "decoder_memory",
            )
        others = [st for st in self.streams.values() if st.decoder.memory_bytes and st.decoder is not decoder]
        used = sum(st.decoder.memory_bytes for st in others)
        for victim in sorted(others, key=lambda st: (st.decoder.packets > 1, st.last_seen)):
            if used + need <= budget:
                break
            used -= victim.decoder.memory_bytes
            log.warning(
                "stream=%s: decoder evicted to make room for stream=%s (decode.memory_mb); it resumes at its next "
                "keyframe",
                victim.stream_id,
                decoder.stream_id,
            )
            if self.on_evict is not None:
                self.on_evict(victim)
            victim.decoder.flush()  # closes it, if on_evict did not
            victim.decoder.evicted = True
            self.decoders_evicted += 1

    def resume(self, stream_id: str, partition: int) -> tuple[StreamState, bool]:
        """The stream's state, and whether it was opened here without a ``stream_start`` (met mid-way)."""
        state = self.streams.get(stream_id)
        if state is not None:
            return state, False
        state = self.open(stream_id, partition)
        state.carry = self.carried.pop(stream_id, None)
        return state, True

    def check_capacity(self, stream_id: str) -> None:
        """Make room for a new stream at ``max_streams``: the stream that holds its slot for the least is evicted
        (:attr:`on_evict` flushes it; it resumes at its next keyframe when it sends again): first one that never sent
        a packet (a flood of bare ``stream_start`` cannot hold every slot), else the least recently active. Without
        an ``on_evict`` the new stream is refused (``too_many_streams``)."""
        if self.max_streams is None or len(self.streams) < self.max_streams:
            return
        if self.on_evict is None:
            raise DecodeError(
                f"stream {stream_id}: {len(self.streams)} streams are open (max_streams)", "too_many_streams"
            )
        victim = min(self.streams.values(), key=lambda st: (st.counters.packets > 0, st.last_seen))
        log.warning(
            "stream=%s evicted to make room for stream=%s (max_streams=%d); it resumes at its next keyframe",
            victim.stream_id,
            stream_id,
            self.max_streams,
        )
        self.evicted += 1
        self.on_evict(victim)
        self.close(victim)

    def close(self, state: StreamState) -> None:
        """Forget the stream if this state is still its current one (a restart may have replaced it)."""
        if self.streams.get(state.stream_id) is state:
            del self.streams[state.stream_id]

    def saw_capture(self, state: StreamState, partition: int, capture_time: float, now: float | None = None) -> None:
        """Advance the stream's and its partition's stream time. ``capture_time`` is the producer's clock: one from
        the future (a skewed or hostile producer) must not make the other streams of the partition look silent, so
        it counts as at most ``FUTURE_SLACK_S`` ahead of ours, far below any idle limit (``idle.stream_s`` is 30 s;
        before, a minute was allowed and one packet closed every stream of its partition)."""
        capture = min(capture_time, (time.time() if now is None else now) + FUTURE_SLACK_S)
        state.last_capture = max(state.last_capture, capture)
        self.partition_time[partition] = max(self.partition_time.get(partition, 0.0), capture)

    def drop_partitions(self, partitions: set[int]) -> list[str]:
        """Forget streams of revoked partitions; returns their ids."""
        gone = [sid for sid, st in self.streams.items() if st.partition in partitions]
        for sid in gone:
            del self.streams[sid]
        for p in partitions:
            self.partition_time.pop(p, None)
        return gone
