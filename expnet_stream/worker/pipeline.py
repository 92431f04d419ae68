"""The broker-free core of a worker: decode, sample, detect, crop, batch across streams, infer, emit.

The Kafka worker and ``expnet-stream run`` both drive a :class:`Pipeline`: they feed it input
messages tagged with their source (partition, offset) and receive, in order per stream,
output events plus the sources whose work those events finish. A source is reported done only
after every frame it produced has its event emitted, so callers can commit offsets safely once
the emitted events are acknowledged.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ..engines.base import Engine
from ..errors import DecodeError
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
from ..video.decode import DecodedFrame, StreamDecoder
from .stages import StageTimes

log = logging.getLogger(__name__)

SMALL_FACE_PX = 48
LOW_SCORE = 0.5


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
    frames_with_faces: int = 0
    faces: int = 0


@dataclass
class StreamState:
    stream_id: str
    partition: int
    decoder: StreamDecoder
    counters: StreamCounters = field(default_factory=StreamCounters)
    next_sample_t: float | None = None
    frame_seq: int = 0
    # (pts, source) of decoded packets whose frame has not been emitted yet, in decode order
    outstanding: list[tuple[float, Source]] = field(default_factory=list)


@dataclass
class _Work:
    """One queue entry, completed in FIFO order."""

    stream: StreamState
    frame: DecodedFrame | None = None  # None: a control entry (end of stream)
    sampled: bool = True
    capture_time: float = 0.0
    source: Source = NO_SOURCE
    dets: Detections | None = None
    crops: npt.NDArray[np.uint8] | None = None
    frame_seq: int = 0
    end: StreamEnd | None = None
    after: list[Source] = field(default_factory=list)  # control sources finished together with this entry
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def n_faces(self) -> int:
        return 0 if self.dets is None else len(self.dets)


Emit = Callable[[FrameEvent | StreamSummary, list[Source]], None]
"""Receives an output event and the input sources that are finished once it is acknowledged."""
Done = Callable[[list[Source]], None]
"""Receives sources finished without an output event (control messages, skipped packets)."""


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
    ) -> None:
        self.detector = detector
        self.engine = engine
        self.contract = engine.contract
        self.emit = emit
        self.done = done
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.sample_fps = sample_fps
        self.decoder_threads = decoder_threads
        self.stages = stages or StageTimes()
        self.streams: dict[str, StreamState] = {}
        self._queue: deque[_Work] = deque()
        self._queued_faces = 0

    # ---------------------------------------------------------------- input
    def handle(self, msg: StreamStart | VideoPacket | StreamEnd, source: Source) -> None:
        """Process one input message. Raises :class:`DecodeError` for a packet that fails to decode
        after a keyframe (the caller dead-letters it; it counts as done once dead-lettered)."""
        if isinstance(msg, StreamStart):
            old = self.streams.get(msg.stream_id)
            if old is not None:
                log.info("stream=%s restarted; closing the previous decoder", msg.stream_id)
                self._enqueue_frames(old, old.decoder.flush(), msg.sent_time)
            self.streams[msg.stream_id] = self._new_state(msg.stream_id, source.partition)
            self._after_control(source)
        elif isinstance(msg, VideoPacket):
            self._handle_packet(msg, source)
        else:
            self._handle_end(msg, source)

    def _new_state(self, stream_id: str, partition: int) -> StreamState:
        return StreamState(stream_id, partition, StreamDecoder(stream_id, threads=self.decoder_threads))

    def _after_control(self, source: Source) -> None:
        # Control messages finish when everything queued before them is emitted: keep FIFO order.
        if self._queue:
            self._queue[-1].after.append(source)
        else:
            self.done([source])

    def _handle_packet(self, pkt: VideoPacket, source: Source) -> None:
        state = self.streams.get(pkt.stream_id)
        if state is None:
            state = self.streams[pkt.stream_id] = self._new_state(pkt.stream_id, source.partition)
        state.counters.packets += 1
        try:
            with self.stages.time("decode"):
                frames = state.decoder.decode(pkt)
        except DecodeError:
            if state.decoder.waiting_for_keyframe:
                state.counters.packets_skipped += 1
                log.debug("stream=%s seq=%d skipped: waiting for a keyframe", pkt.stream_id, pkt.seq)
                self._after_control(source)
                return
            raise
        state.outstanding.append((-math.inf if pkt.pts is None else float(pkt.pts), source))
        self._enqueue_frames(state, frames, pkt.capture_time, source)

    def _handle_end(self, end: StreamEnd, source: Source) -> None:
        state = self.streams.get(end.stream_id)
        if state is None:
            state = self.streams[end.stream_id] = self._new_state(end.stream_id, source.partition)
        with self.stages.time("decode"):
            frames = state.decoder.flush()
        self._enqueue_frames(state, frames, end.sent_time, source)
        self._queue.append(_Work(stream=state, end=end, source=source))

    # ---------------------------------------------------------------- per frame
    def _enqueue_frames(
        self, state: StreamState, frames: list[DecodedFrame], capture_time: float, source: Source = NO_SOURCE
    ) -> None:
        for frame in frames:
            state.counters.frames_decoded += 1
            seq = state.frame_seq
            state.frame_seq += 1
            sampled = self._sample(state, frame)
            work = _Work(
                stream=state, frame=frame, sampled=sampled, capture_time=capture_time, source=source, frame_seq=seq
            )
            if sampled:
                with self.stages.time("detect"):
                    dets = self.detector.detect(frame.image)
                with self.stages.time("crop"):
                    crops = crop_faces(frame.image, dets.xyxy, self.contract) if len(dets) else None
                work.dets, work.crops = dets, crops
                self._queued_faces += len(dets)
            self._queue.append(work)

    def _sample(self, state: StreamState, frame: DecodedFrame) -> bool:
        if self.sample_fps is None:
            return True
        t = frame.pts_time
        if state.next_sample_t is None or t >= state.next_sample_t - 1e-6:
            period = 1.0 / self.sample_fps
            base = t if state.next_sample_t is None else state.next_sample_t
            state.next_sample_t = base + period * max(1, math.floor((t - base) / period) + 1)
            return True
        return False

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
        crops = [w.crops for w in take if w.crops is not None]
        if crops:
            with self.stages.time("infer"):
                batch = self.contract.normalize(np.concatenate(crops))
                coeffs = self.engine.infer(batch)
        emitted = 0
        row = 0
        for work in take:
            n = work.n_faces
            emitted += self._finish(work, coeffs[row : row + n])
            row += n
        return emitted

    def _finish(self, work: _Work, coeffs: npt.NDArray[np.float32]) -> int:
        state = work.stream
        if work.end is not None:
            # everything of this stream before the marker is out: emit its summary
            sources = [s for _, s in state.outstanding] + [work.source, *work.after]
            state.outstanding.clear()
            c = state.counters
            summary = StreamSummary(
                event_id=f"{state.stream_id}:summary:{work.end.packets}:{self.engine.model_id}",
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
            if self.streams.get(state.stream_id) is state:
                del self.streams[state.stream_id]
            self.emit(summary, sources)
            return 1
        frame = work.frame
        if frame is None:  # pragma: no cover - defensive
            return 0
        released = self._release(state, frame.pts) + work.after
        if not work.sampled:
            if released:
                self.done(released)
            return 0
        state.counters.frames_sampled += 1
        faces = self._faces(work, frame, coeffs)
        if faces:
            state.counters.frames_with_faces += 1
            state.counters.faces += len(faces)
        tb = frame.time_base
        event = FrameEvent(
            event_id=frame_event_id(state.stream_id, frame.pts, work.frame_seq, self.engine.model_id),
            stream_id=state.stream_id,
            frame_seq=work.frame_seq,
            pts=frame.pts,
            time_base=tb,
            pts_time=frame.pts_time,
            capture_time=work.capture_time,
            publish_time=time.time(),
            width=int(frame.image.shape[1]),
            height=int(frame.image.shape[0]),
            model_id=self.engine.model_id,
            model_trained=self.contract.trained,
            basis_id=self.contract.basis_id,
            faces=faces,
            source_partition=work.source.partition,
            source_offset=work.source.offset,
        )
        self.emit(event, released)
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

    def _faces(self, work: _Work, frame: DecodedFrame, coeffs: npt.NDArray[np.float32]) -> list[Face]:
        dets = work.dets
        if dets is None or len(dets) == 0:
            return []
        h, w = frame.image.shape[:2]
        c = self.contract
        sq = crop_boxes(dets.xyxy, c.crop_expand, snap_to_pixels=c.crop_snap_to_pixels)
        clipped = (sq[:, 0] < 0) | (sq[:, 1] < 0) | (sq[:, 2] > w) | (sq[:, 3] > h)
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
            box = dets.xyxy[i]
            faces.append(
                Face(
                    track_id=int(dets.track_id[i]),
                    box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    score=float(np.clip(dets.score[i], 0.0, 1.0)),
                    coeffs=pack_coeffs(coeffs[i]),
                    quality=quality,
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
