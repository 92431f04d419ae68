"""The broker-free core of a worker: decode, sample, detect, crop, batch across streams, infer, emit.

The Kafka worker and ``expnet-stream run`` both drive a :class:`Pipeline`: they feed it input
messages tagged with their source (partition, offset) and receive, in order per stream, output
events plus the sources whose work those events finish. A source is reported done only after
every frame it produced has its event emitted, so callers can commit offsets safely once the
emitted events are acknowledged.

Replay: after a restart a worker re-reads a partition from the last keyframe before its committed
position so decoders can resume without losing frames. Packets handled with ``replay=True``
were already finished by the previous owner: their frames rebuild decoder and sampler state but
are not emitted again.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from ..aggregate.temporal import StreamTemporal
from ..engines.base import Engine
from ..errors import DecodeError
from ..events.aggregate_schema import EmotionAggregate
from ..events.schema import (
    NUM_COEFFS,
    Face,
    FrameEvent,
    StreamEnd,
    StreamStart,
    StreamSummary,
    VideoPacket,
    frame_event_id,
    pack_coeffs,
)
from ..faces.crop import crop_boxes, crop_faces
from ..faces.detections import Detections
from ..faces.detector import FaceDetector
from ..ops.metrics import PipelineObserver
from ..video.decode import DecodedFrame, StreamDecoder
from .stages import StageTimes

log = logging.getLogger(__name__)

SMALL_FACE_PX = 48
LOW_SCORE = 0.5


class EmotionClassifier(Protocol):
    """Emotion output: coefficients ``(N, 29)`` and the model's own emotion output (or None) -> probabilities
    ``(N, C)`` over :attr:`classes` (:class:`~expnet_stream.models.emotion.EmotionHead` reads the coefficients,
    :class:`~expnet_stream.models.emotion.ModelEmotions` the model output)."""

    @property
    def classes(self) -> tuple[str, ...]: ...

    def predict_proba(
        self, coeffs: npt.ArrayLike, model_probs: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]: ...


class Source(NamedTuple):
    """Where an input message came from."""

    partition: int
    offset: int


NO_SOURCE = Source(-1, -1)


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
    sampled_index: int = 0  # sampled frames seen, for detect-every-n


@dataclass
class _Work:
    """One queue entry, completed in FIFO order. Holds crops, never the decoded frame."""

    stream: StreamState
    pts: int | None = None
    time_base: tuple[int, int] = (1, 1)
    width: int = 0
    height: int = 0
    sampled: bool = True
    capture_time: float = 0.0
    source: Source = NO_SOURCE
    dets: Detections | None = None
    crops: npt.NDArray[np.uint8] | None = None
    frame_seq: int = 0
    end: StreamEnd | None = None
    replay: bool = False
    tracked: bool = False  # track ids assigned at detection time (detect-every-n)
    predicted: bool = False  # boxes predicted by the tracker, not detected
    after: list[Source] = field(default_factory=list)  # control sources finished together with this entry
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def n_faces(self) -> int:
        return 0 if self.dets is None else len(self.dets)

    @property
    def pts_time(self) -> float:
        return 0.0 if self.pts is None else float(self.pts) * self.time_base[0] / self.time_base[1]


Emit = Callable[[FrameEvent | StreamSummary | EmotionAggregate, list[Source]], None]
"""Receives an output event and the input sources that are finished once it is acknowledged."""
Done = Callable[[list[Source]], None]
"""Receives sources finished without an output event (control messages, replayed frames)."""


class Pipeline:
    """Per-stream decoders and one cross-stream face batch in front of the engine. Single-threaded."""

    def __init__(
        self,
        detector: FaceDetector,
        engine: Engine,
        *,
        emit: Emit,
        done: Done,
        max_batch: int = 16,
        max_wait_ms: float = 40.0,
        sample_fps: float | None = None,
        decoder_threads: int = 1,
        stages: StageTimes | None = None,
        temporal: StreamTemporal | None = None,
        observer: PipelineObserver | None = None,
        emotion_head: EmotionClassifier | None = None,
    ) -> None:
        self.detector = detector
        self.emotion_head = emotion_head
        self.engine = engine
        self.contract = engine.contract
        self.emit = emit
        self.done = done
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.sample_fps = sample_fps
        self.decoder_threads = decoder_threads
        self.stages = stages or StageTimes()
        self.observer = observer
        self.streams: dict[str, StreamState] = {}
        self._queue: deque[_Work] = deque()
        # tracking, smoothing and window aggregates; keyed by stream id, owned by one StreamState at a time
        self.temporal = temporal
        self._temporal_owner: dict[str, StreamState] = {}
        self._queued_faces = 0

    # ---------------------------------------------------------------- input
    def handle(self, msg: StreamStart | VideoPacket | StreamEnd, source: Source, *, replay: bool = False) -> None:
        """Process one input message.

        Raises :class:`DecodeError` (with a ``reason``) for a packet that cannot be decoded, including
        packets before a stream's first keyframe; the caller dead-letters it and marks it done.
        """
        if isinstance(msg, StreamStart):
            old = self.streams.get(msg.stream_id)
            if old is not None:
                log.info("stream=%s restarted; closing the previous decoder", msg.stream_id)
                self._enqueue_frames(old, old.decoder.flush(), msg.sent_time, source, replay)
            self.streams[msg.stream_id] = self._new_state(msg.stream_id, source.partition)
            self._after_control(source)
        elif isinstance(msg, VideoPacket):
            self._handle_packet(msg, source, replay)
        else:
            self._handle_end(msg, source, replay)

    def _new_state(self, stream_id: str, partition: int) -> StreamState:
        return StreamState(stream_id, partition, StreamDecoder(stream_id, threads=self.decoder_threads))

    def _state(self, stream_id: str, partition: int) -> StreamState:
        state = self.streams.get(stream_id)
        if state is None:
            state = self.streams[stream_id] = self._new_state(stream_id, partition)
        return state

    def _after_control(self, source: Source) -> None:
        # Control messages finish when everything queued before them is emitted: keep FIFO order.
        if self._queue:
            self._queue[-1].after.append(source)
        else:
            self.done([source])

    def _handle_packet(self, pkt: VideoPacket, source: Source, replay: bool) -> None:
        state = self._state(pkt.stream_id, source.partition)
        state.counters.packets += 1
        fresh = state.decoder.waiting_for_keyframe
        try:
            with self.stages.time("decode"):
                frames = state.decoder.decode(pkt)
        except DecodeError as exc:
            if exc.reason == "before_keyframe":
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
        state.outstanding.append((-math.inf if pkt.pts is None else float(pkt.pts), source))
        self._enqueue_frames(state, frames, pkt.capture_time, source, replay)

    def _handle_end(self, end: StreamEnd, source: Source, replay: bool) -> None:
        state = self._state(end.stream_id, source.partition)
        with self.stages.time("decode"):
            frames = state.decoder.flush()
        self._enqueue_frames(state, frames, end.sent_time, source, replay)
        self._queue.append(_Work(stream=state, end=end, source=source, replay=replay))

    # ---------------------------------------------------------------- per frame
    def _enqueue_frames(
        self, state: StreamState, frames: list[DecodedFrame], capture_time: float, source: Source, replay: bool
    ) -> None:
        for frame in frames:
            state.counters.frames_decoded += 1
            seq = state.frame_seq
            state.frame_seq += 1
            sampled = self._sample(state, frame)
            replayed = frame.pts is not None and frame.pts in state.replay_pts
            h, w = frame.image.shape[:2]
            work = _Work(
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
            if sampled and not replayed:
                dets = self._detect(state, frame, work)
                if self.observer is not None and len(dets):
                    self.observer.faces(len(dets))
                with self.stages.time("crop"):
                    crops = crop_faces(frame.image, dets.xyxy, self.contract) if len(dets) else None
                work.dets, work.crops = dets, crops
                self._queued_faces += len(dets)
            self._queue.append(work)

    def _detect(self, state: StreamState, frame: DecodedFrame, work: _Work) -> Detections:
        """Faces of a sampled frame. With ``temporal.tracker.detect_every_n > 1`` the detector runs on every n-th
        sampled frame only; the frames between get the tracks' predicted boxes (quality flag ``predicted``)."""
        t = self.temporal
        if t is None or not t.settings.tracker.enabled or t.settings.tracker.detect_every_n <= 1:
            with self.stages.time("detect"):
                return self.detector.detect(frame.image)
        index = state.sampled_index
        state.sampled_index += 1
        work.tracked = True
        pts_time = float(frame.pts_time)
        if t.detect_due(index):
            with self.stages.time("detect"):
                dets = self.detector.detect(frame.image)
            return t.track(state.stream_id, pts_time, dets)
        work.predicted = True
        return t.predict(state.stream_id, pts_time)

    def _sample(self, state: StreamState, frame: DecodedFrame) -> bool:
        """Keep the first frame of each 1/fps slot of stream time (a grid, so replays sample the same frames)."""
        if self.sample_fps is None:
            return True
        slot = math.floor(frame.pts_time * self.sample_fps + 1e-6)
        if state.last_slot is not None and slot == state.last_slot:
            return False
        state.last_slot = slot
        return True

    # ---------------------------------------------------------------- batching
    def due(self, now: float | None = None) -> bool:
        """Whether a batch should run now (full, or its oldest face waited max_wait)."""
        if not self._queue:
            return False
        if self._queued_faces >= self.max_batch:
            return True
        head = self._queue[0]
        if head.n_faces == 0:
            return True
        return ((now or time.monotonic()) - head.enqueued) >= self.max_wait_s

    def pump(self, force: bool = False) -> int:
        """Run due batches (all queued work when ``force``); returns the number of events emitted."""
        emitted = 0
        while self._queue and (force or self.due()):
            emitted += self._run_batch()
        return emitted

    def _run_batch(self) -> int:
        take: list[_Work] = []
        faces = 0
        # Take whole frames from the head until the batch is full; faceless frames ride along free.
        while self._queue:
            nxt = self._queue[0]
            if take and faces + nxt.n_faces > self.max_batch and faces > 0:
                break
            take.append(self._queue.popleft())
            faces += nxt.n_faces
        self._queued_faces -= faces
        coeffs = np.zeros((0, NUM_COEFFS), np.float32)
        probs: npt.NDArray[np.float32] | None = None
        crops = [w.crops for w in take if w.crops is not None]
        if crops:
            with self.stages.time("infer"):
                batch = self.contract.normalize(np.concatenate(crops))
                coeffs, model_probs = self.engine.infer_all(batch)
                if self.emotion_head is not None:
                    probs = self.emotion_head.predict_proba(coeffs, model_probs)
            if self.observer is not None:
                self.observer.batch(len(batch))
        emitted = 0
        row = 0
        for work in take:
            n = work.n_faces
            emitted += self._finish(work, coeffs[row : row + n], None if probs is None else probs[row : row + n])
            row += n
        return emitted

    def _finish(
        self, work: _Work, coeffs: npt.NDArray[np.float32], probs: npt.NDArray[np.float32] | None = None
    ) -> int:
        state = work.stream
        if work.end is not None:
            return self._finish_stream(work)
        released = self._release(state, work.pts) + work.after
        if work.replay:
            state.counters.frames_replayed += 1
            if work.pts is not None:
                state.replay_pts.discard(work.pts)
        if work.replay or not work.sampled:
            if released:
                self.done(released)
            return 0
        state.counters.frames_sampled += 1
        emitted, smoothed = self._temporal_frame(work, coeffs, probs) if self.temporal is not None else (0, None)
        faces = self._faces(work, coeffs, smoothed, probs)
        if faces:
            state.counters.frames_with_faces += 1
            state.counters.faces += len(faces)
        event = FrameEvent(
            event_id=frame_event_id(state.stream_id, work.pts, work.frame_seq, self.engine.model_id),
            stream_id=state.stream_id,
            frame_seq=work.frame_seq,
            pts=work.pts,
            time_base=work.time_base,
            pts_time=work.pts_time,
            capture_time=work.capture_time,
            publish_time=time.time(),
            width=work.width,
            height=work.height,
            model_id=self.engine.model_id,
            model_trained=self.contract.trained,
            basis_id=self.contract.basis_id,
            faces=faces,
            source_partition=work.source.partition,
            source_offset=work.source.offset,
        )
        self.emit(event, released)
        return emitted + 1

    def _temporal_frame(
        self, work: _Work, coeffs: npt.NDArray[np.float32], probs: npt.NDArray[np.float32] | None = None
    ) -> tuple[int, npt.NDArray[np.float32] | None]:
        """Track ids into ``work.dets``; emits the aggregates of windows this frame closed; smoothed coefficients."""
        if self.temporal is None:  # pragma: no cover - guarded by the caller
            return 0, None
        state = work.stream
        sid = state.stream_id
        aggs: list[EmotionAggregate] = []
        owner = self._temporal_owner.get(sid)
        if owner is not None and owner is not state:  # the stream restarted: close the previous run's windows
            aggs += self.temporal.on_end(sid)
        self._temporal_owner[sid] = state
        dets = work.dets if work.dets is not None else Detections.empty()
        res = self.temporal.on_frame(
            sid,
            work.pts_time,
            dets,
            coeffs[: len(dets)],
            None if probs is None else probs[: len(dets)],
            track=not work.tracked,
        )
        work.dets = Detections(dets.xyxy, dets.score, res.track_ids)
        aggs += res.aggregates
        for agg in aggs:
            self.emit(agg, [])
        smoothing = self.temporal.settings.smoothing.kind != "none"
        return len(aggs), (res.smoothed if smoothing else None)

    def close_windows(self, partitions: set[int]) -> int:
        """Close and emit the open aggregate windows of streams on ``partitions`` (``closed_by="revoke"``).

        Call on revoke after ``pump(force=True)`` and before the producer flush that precedes the commit.
        """
        if self.temporal is None:
            return 0
        sids = [sid for sid, st in self._temporal_owner.items() if st.partition in partitions]
        for sid in sids:
            del self._temporal_owner[sid]
        aggs = self.temporal.on_revoke(sids)
        for agg in aggs:
            self.emit(agg, [])
        return len(aggs)

    def _finish_stream(self, work: _Work) -> int:
        """Everything of this stream before its end marker is out: emit its summary."""
        state = work.stream
        end = work.end
        if end is None:  # pragma: no cover - guarded by the caller
            return 0
        sources = [s for _, s in state.outstanding] + [work.source, *work.after]
        state.outstanding.clear()
        if self.streams.get(state.stream_id) is state:
            del self.streams[state.stream_id]
        if self.temporal is not None:
            self._temporal_owner.pop(state.stream_id, None)
            for agg in self.temporal.on_end(state.stream_id):
                self.emit(agg, [])
        if work.replay:  # the previous owner published this summary already
            self.done(sources)
            return 0
        c = state.counters
        summary = StreamSummary(
            event_id=f"{state.stream_id}:summary:{end.packets}:{self.engine.model_id}",
            stream_id=state.stream_id,
            packets=c.packets,
            packets_skipped=c.packets_skipped,
            frames_decoded=c.frames_decoded,
            frames_sampled=c.frames_sampled,
            frames_with_faces=c.frames_with_faces,
            faces=c.faces,
            model_id=self.engine.model_id,
            publish_time=time.time(),
        )
        self.emit(summary, sources)
        return 1

    def _release(self, state: StreamState, pts: int | None) -> list[Source]:
        """Sources of packets whose frames are now all out (decoders emit frames in pts order)."""
        if pts is None:
            return []
        keep: list[tuple[float, Source]] = []
        out: list[tuple[float, Source]] = []
        for item in state.outstanding:
            (out if item[0] <= pts else keep).append(item)
        state.outstanding = keep
        return [s for _, s in out]

    def _faces(
        self,
        work: _Work,
        coeffs: npt.NDArray[np.float32],
        smoothed: npt.NDArray[np.float32] | None = None,
        probs: npt.NDArray[np.float32] | None = None,
    ) -> list[Face]:
        dets = work.dets
        if dets is None or len(dets) == 0:
            return []
        c = self.contract
        sq = crop_boxes(dets.xyxy, c.crop_expand, snap_to_pixels=c.crop_snap_to_pixels)
        clipped = (sq[:, 0] < 0) | (sq[:, 1] < 0) | (sq[:, 2] > work.width) | (sq[:, 3] > work.height)
        side = dets.size_wh.min(axis=1)
        faces = []
        for i in range(len(dets)):
            quality = []
            if side[i] < SMALL_FACE_PX:
                quality.append("small_face")
            if clipped[i]:
                quality.append("clipped")
            if dets.score[i] < LOW_SCORE:
                quality.append("low_score")
            if work.predicted:
                quality.append("predicted")
            box = dets.xyxy[i]
            faces.append(
                Face(
                    track_id=int(dets.track_id[i]),
                    box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    score=float(np.clip(dets.score[i], 0.0, 1.0)),
                    coeffs=pack_coeffs(coeffs[i]),
                    coeffs_smoothed=None if smoothed is None or dets.track_id[i] < 0 else pack_coeffs(smoothed[i]),
                    quality=quality,
                    emotions=None
                    if probs is None or self.emotion_head is None
                    else {k: round(float(v), 5) for k, v in zip(self.emotion_head.classes, probs[i], strict=True)},
                )
            )
        return faces

    # ---------------------------------------------------------------- lifecycle
    def drop_partitions(self, partitions: set[int]) -> list[str]:
        """Forget decoders of streams on revoked partitions (after the caller drained the queue)."""
        gone = [sid for sid, st in self.streams.items() if st.partition in partitions]
        for sid in gone:
            del self.streams[sid]
        return gone

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_faces(self) -> int:
        return self._queued_faces

    def queued_by_partition(self) -> dict[int, int]:
        """Queued frames per input partition (for backpressure)."""
        out: dict[int, int] = {}
        for w in self._queue:
            out[w.stream.partition] = out.get(w.stream.partition, 0) + 1
        return out
