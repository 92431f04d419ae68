"""Stage 1b: input messages into the queue. ``stream_start`` opens (or restarts) a stream, a packet is decoded and its
frames sampled and queued, ``stream_end`` flushes the decoder and queues the stream's end. Replayed packets (below a
takeover's committed position) rebuild decoder and temporal state; their frames are not emitted again."""

from __future__ import annotations

import logging
import time

from ..errors import DecodeError
from ..events.schema import IDLE, StreamEnd, StreamStart, VideoPacket
from ..ops.metrics import PipelineObserver
from ..video.decode import DecodedFrame
from .finisher import Finisher
from .schedule import DetectionSchedule, Sampler
from .stages import StageTimes
from .streams import FUTURE_SLACK_S, Source, StreamState, StreamTable
from .tracks import TrackStage
from .work import FrameWork, WorkQueue

log = logging.getLogger(__name__)


class Intake:
    def __init__(
        self,
        table: StreamTable,
        queue: WorkQueue,
        finisher: Finisher,
        *,
        sampler: Sampler,
        schedule: DetectionSchedule | None = None,
        tracks: TrackStage | None = None,
        stages: StageTimes,
        observer: PipelineObserver | None = None,
        session_takeover_s: float = 10.0,
    ) -> None:
        self.session_takeover_s = session_takeover_s
        self.table = table
        self.queue = queue
        self.finisher = finisher
        self.sampler = sampler
        self.schedule = schedule
        self.tracks = tracks
        self.stages = stages
        self.observer = observer
        self.now = time.time()  # the worker's clock for the record in hand (see handle)
        table.on_evict = self._evict

    def _evict(self, state: StreamState) -> None:
        """A stream evicted at max_streams, or its decoder evicted at ``decode.memory_mb``, is closed as on a restart:
        the frames its decoder holds go out; its next packets open a new decoder at a keyframe."""
        if state.outstanding:
            self._close(state, state.last_capture, state.outstanding[-1][1], False)

    def _close(self, state: StreamState, at: float, source: Source, replay: bool) -> None:
        """The frames the stream's decoder still holds go out; the packets that gave no frame finish with them."""
        self._enqueue(state, state.decoder.flush(), at, source, replay)
        for src in state.release_all():
            self.finisher.after_control(src)

    def handle(
        self,
        msg: StreamStart | VideoPacket | StreamEnd,
        source: Source,
        replay: bool = False,
        arrived: float | None = None,
    ) -> None:
        """``arrived``: the record's Kafka timestamp (Unix seconds). The worker's clock, which bounds how far ahead a
        producer's times count, is read as no later than it: a takeover replaying the record decides as the first
        reading did, and a backlog read late is judged by when it was written."""
        now = time.time()
        self.now = now if arrived is None or arrived <= 0 else min(now, arrived)
        if isinstance(msg, StreamStart):
            self._start(msg, source, replay)
        elif isinstance(msg, VideoPacket):
            self._packet(msg, source, replay)
        else:
            self._end(msg, source, replay)

    def _owner(self, state: StreamState | None, session: str | None, at: float, what: str) -> bool:
        """Whether a record of ``session`` may act on the live stream ``state``: its own session, or a stream without
        one. Another session takes the stream over only after ``session_takeover_s`` of the stream's silence in
        stream time (an ingester restarted after a crash); before that it raises ``foreign_session``."""
        if state is None or state.session is None or session == state.session:
            return False
        silence = min(at, self.now + FUTURE_SLACK_S) - state.last_capture
        if state.last_capture > 0 and silence <= self.session_takeover_s:
            raise DecodeError(
                f"stream {state.stream_id}: {what} of session {session!r}, but the stream belongs to session "
                f"{state.session!r} (live {max(silence, 0.0):.1f} s ago; another session takes over after "
                f"{self.session_takeover_s:g} s of silence)",
                "foreign_session",
            )
        log.warning("stream=%s: session %r takes over from silent session %r", state.stream_id, session, state.session)
        return True

    def _start(self, msg: StreamStart, source: Source, replay: bool) -> None:
        old = self.table.get(msg.stream_id)
        self._owner(old, msg.session, msg.sent_time, "stream_start")
        state = self._restart(old, msg.stream_id, msg.session, msg.sent_time, source, replay)
        if msg.session is not None:  # live from its start: another session's start right after it is refused
            state.last_capture = min(msg.sent_time, self.now + FUTURE_SLACK_S)
        self.finisher.after_control(source)

    def _restart(
        self, old: StreamState | None, stream_id: str, session: str | None, at: float, source: Source, replay: bool
    ) -> StreamState:
        """A fresh state for the stream; the previous one's frames go out first, what it held finishes with them."""
        if old is not None:
            log.info("stream=%s restarted; closing the previous decoder", stream_id)
            self._close(old, at, source, replay)
        state = self.table.open(stream_id, source.partition, replace=old is not None)
        state.session = session
        self.table.carried.pop(stream_id, None)
        return state

    def _state(self, stream_id: str, partition: int, seq: int | None = None) -> StreamState:
        """The stream's state; a stream met mid-way (no stream_start: a takeover) is marked resumed."""
        state, new = self.table.resume(stream_id, partition)
        if new and self.tracks is not None and seq != 0:
            self.tracks.resumed(stream_id)
        return state

    def _packet(self, pkt: VideoPacket, source: Source, replay: bool) -> None:
        live = self.table.get(pkt.stream_id)
        if self._owner(live, pkt.session, pkt.capture_time, "a packet"):
            if not pkt.keyframe:
                raise DecodeError(
                    f"stream {pkt.stream_id}: session {pkt.session!r} takes over at a keyframe", "foreign_session"
                )
            state = self._restart(live, pkt.stream_id, pkt.session, pkt.capture_time, source, replay)
        else:
            state = self._state(pkt.stream_id, source.partition, pkt.seq)
            if state.session is None and state.counters.packets == 0:
                state.session = pkt.session  # met mid-way (a takeover): the session of its first packet
        state.counters.packets += 1
        state.last_seen = time.monotonic()
        self.table.saw_capture(state, source.partition, pkt.capture_time, self.now)
        state.last_seq = max(state.last_seq, pkt.seq)
        fresh = state.decoder.waiting_for_keyframe
        try:
            with self.stages.time("decode"):
                frames = state.decoder.decode(pkt)
        except DecodeError as exc:
            if exc.reason in ("before_keyframe", "decoder_evicted"):
                state.counters.packets_skipped += 1
                if self.observer is not None:
                    self.observer.frame_dropped(source.partition, "before_keyframe")
            raise
        if fresh:
            # a decoder (re)starting at a keyframe: presentation index = the keyframe's packet seq
            # (one frame per packet, closed GOPs: what the ingester publishes)
            state.frame_seq = pkt.seq
        if replay and pkt.pts is not None:
            state.replay_pts.add(pkt.pts)
        state.hold(pkt.pts, source)
        self._enqueue(state, frames, pkt.capture_time, source, replay)

    def _end(self, end: StreamEnd, source: Source, replay: bool) -> None:
        live = self.table.get(end.stream_id)
        if live is not None and live.session is not None and end.session != live.session:
            raise DecodeError(  # never a takeover: an end of another session ends nothing of this one
                f"stream {end.stream_id}: stream_end of session {end.session!r}, but the stream belongs to session "
                f"{live.session!r}",
                "foreign_session",
            )
        if end.reason == IDLE:  # written by a worker that found the stream silent
            live = self.table.get(end.stream_id)
            if live is None or live.last_seq >= end.packets:  # gone already, or revived since: ignore
                if live is not None:
                    live.idle_marker_sent = False
                self.finisher.after_control(source)
                return
            log.info("stream=%s idle after packet seq=%d: closing it", end.stream_id, end.packets - 1)
        state = self._state(end.stream_id, source.partition)
        with self.stages.time("decode"):
            frames = state.decoder.flush()
        self._enqueue(state, frames, end.sent_time, source, replay)
        self.queue.append(FrameWork(stream=state, end=end, source=source, replay=replay))

    def _enqueue(
        self, state: StreamState, frames: list[DecodedFrame], capture_time: float, source: Source, replay: bool
    ) -> None:
        rebuild = self.tracks is not None and self.tracks.rebuild
        for frame in frames:
            state.counters.frames_decoded += 1
            state.keyframe_pending |= frame.keyframe
            seq = state.frame_seq
            state.frame_seq += 1
            sampled = self.sampler.sample(state, frame)
            replayed = frame.pts is not None and frame.pts in state.replay_pts
            h, w = frame.image.shape[:2]
            work = FrameWork(
                stream=state,
                pts=frame.pts,
                time_base=frame.time_base,
                width=w,
                height=h,
                sampled=sampled,
                capture_time=capture_time,
                source=source,
                frame_seq=seq,
                replay=replayed,
            )
            if self.observer is not None:
                obs = self.observer
                obs.frame_decoded(source.partition)
                if replayed:
                    obs.frame_replayed(source.partition)
                elif not sampled:
                    obs.frame_skipped(source.partition)
            if sampled and (not replayed or rebuild):
                self.queue.defer(work, frame.image, float(frame.pts_time))
                if self.schedule is not None:
                    self.schedule.note(state, frame.image, work)
            self.queue.append(work)
