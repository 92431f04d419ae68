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

import cv2
import numpy as np
import numpy.typing as npt

from ..aggregate.temporal import StreamTemporal
from ..engines.base import Engine
from ..errors import DecodeError
from ..events.aggregate_schema import EmotionAggregate
from ..events.schema import (
    IDLE,
    NUM_COEFFS,
    Face,
    FrameEvent,
    StreamEnd,
    StreamStart,
    StreamSummary,
    TrackState,
    VideoPacket,
    frame_event_id,
    pack_coeffs,
)
from ..faces.crop import crop_boxes, crop_faces
from ..faces.detections import Detections
from ..faces.detector import FaceDetector
from ..faces.tracker import iou_matrix
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


@dataclass
class _Square:
    """A square cut around a predicted box for refining it, and how to map its boxes back to the frame."""

    image: npt.NDArray[np.uint8]
    x0: float
    y0: float
    scale: float


@dataclass
class _Work:
    """One queue entry, completed in FIFO order. Holds its decoded image only until its faces are found (then the
    crops)."""

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
    # faces not found yet: detection runs batched across the queued frames of all streams (see Pipeline._resolve)
    image: npt.NDArray[np.uint8] | None = None
    pending: bool = False
    frame_time: float = 0.0  # the decoded frame's pts_time
    index: int = 0  # sampling slot or frame index: picks the scheduled detection frames
    keyframe: bool = False  # the first sampled frame from a keyframe on
    cut: bool = False  # a scene cut before this frame
    error: tuple[str, BaseException] | None = None  # finding its faces failed: dead-lettered in FIFO order
    refined: npt.NDArray[np.bool_] | None = None  # per face of a predicted frame: box found around the prediction
    after: list[Source] = field(default_factory=list)  # control sources finished together with this entry
    released: list[Source] | None = None  # sources _finish took from the stream's outstanding list
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
Fail = Callable[[Source, str, str, str], None]
"""Receives a source whose frame could not be processed: (source, reason code, detail, stream id). The frame gets no
event; the caller dead-letters the source (by pointer) and counts it done."""


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
        fail: Fail | None = None,
        max_streams: int | None = None,
        worker_id: str = "",
    ) -> None:
        self.detector = detector
        self.fail = fail
        self.max_streams = max_streams
        self.worker_id = worker_id
        #: last track states of streams a takeover replays (from the rewind scan), by stream id
        self.carried: dict[str, TrackState] = {}
        #: newest packet capture_time per input partition ("stream time" for idle detection)
        self.partition_time: dict[int, float] = {}
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
        # replayed frames rebuild tracks, smoothing and open windows (detect + infer, nothing published)
        self.rebuild = temporal is not None and temporal.settings.enabled
        self._temporal_owner: dict[str, StreamState] = {}
        #: why the detector ran on frames tracked between detections (schedule, keyframe, scene_cut, weak_track)
        self.detect_reasons: dict[str, int] = {}
        self._queued_faces = 0
        self._pending = 0  # queued frames whose faces are not found yet

    # ---------------------------------------------------------------- input
    def handle(self, msg: StreamStart | VideoPacket | StreamEnd, source: Source, *, replay: bool = False) -> None:
        """Process one input message.

        Raises :class:`DecodeError` (with a ``reason``) for a packet that cannot be decoded, including
        packets before a stream's first keyframe; the caller dead-letters it and marks it done.
        """
        if isinstance(msg, StreamStart):
            old = self.streams.get(msg.stream_id)
            held: list[Source] = []
            if old is not None:
                log.info("stream=%s restarted; closing the previous decoder", msg.stream_id)
                self._enqueue_frames(old, old.decoder.flush(), msg.sent_time, source, replay)
                held = [s for _, s in old.outstanding]  # packets that gave no frame: finished with this start
                old.outstanding.clear()
            else:
                self._check_capacity(msg.stream_id)
            self.streams[msg.stream_id] = self._new_state(msg.stream_id, source.partition)
            self.carried.pop(msg.stream_id, None)
            for src in held:
                self._after_control(src)
            self._after_control(source)
        elif isinstance(msg, VideoPacket):
            self._handle_packet(msg, source, replay)
        else:
            self._handle_end(msg, source, replay)

    def _new_state(self, stream_id: str, partition: int) -> StreamState:
        return StreamState(stream_id, partition, StreamDecoder(stream_id, threads=self.decoder_threads))

    def _check_capacity(self, stream_id: str) -> None:
        if self.max_streams is not None and len(self.streams) >= self.max_streams:
            raise DecodeError(
                f"stream {stream_id}: {len(self.streams)} streams are open (max_streams); it waits until one ends or "
                "idles out",
                "too_many_streams",
            )

    def _state(self, stream_id: str, partition: int, seq: int | None = None) -> StreamState:
        """The stream's state; a stream met mid-way (no stream_start: a takeover) is marked resumed."""
        state = self.streams.get(stream_id)
        if state is None:
            self._check_capacity(stream_id)
            state = self.streams[stream_id] = self._new_state(stream_id, partition)
            state.carry = self.carried.pop(stream_id, None)
            if self.temporal is not None and seq != 0:
                self.temporal.mark_resumed(stream_id)
        return state

    def _after_control(self, source: Source) -> None:
        # Control messages finish when everything queued before them is emitted: keep FIFO order.
        if self._queue:
            self._queue[-1].after.append(source)
        else:
            self.done([source])

    def _handle_packet(self, pkt: VideoPacket, source: Source, replay: bool) -> None:
        state = self._state(pkt.stream_id, source.partition, pkt.seq)
        state.counters.packets += 1
        state.last_seen = time.monotonic()
        # capture_time is the producer's clock: one from the future (a skewed or hostile producer) must not make
        # every other stream of the partition look silent, so it counts as at most a minute ahead of ours
        capture = min(pkt.capture_time, time.time() + 60.0)
        state.last_capture = max(state.last_capture, capture)
        self.partition_time[source.partition] = max(self.partition_time.get(source.partition, 0.0), capture)
        state.last_seq = max(state.last_seq, pkt.seq)
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
        if end.reason == IDLE:  # written by a worker that found the stream silent
            live = self.streams.get(end.stream_id)
            if live is None or live.last_seq >= end.packets:  # gone already, or revived since: ignore
                if live is not None:
                    live.idle_marker_sent = False
                self._after_control(source)
                return
            log.info("stream=%s idle after packet seq=%d: closing it", end.stream_id, end.packets - 1)
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
            state.keyframe_pending |= frame.keyframe
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
            if sampled and (not replayed or self.rebuild):
                self._defer(state, frame, work)
            self._queue.append(work)

    # ---------------------------------------------------------------- faces, batched across streams
    @property
    def _tracker_driven(self) -> bool:
        t = self.temporal
        return t is not None and t.settings.tracker.enabled and t.settings.tracker.detect_every_n > 1

    def _defer(self, state: StreamState, frame: DecodedFrame, work: _Work) -> None:
        """Queue a sampled frame whose faces are found later (:meth:`_resolve`), with what the detection schedule
        needs from its decode order."""
        work.image, work.pending, work.frame_time = frame.image, True, float(frame.pts_time)
        self._pending += 1
        if not self._tracker_driven:
            return
        assert self.temporal is not None
        # the sampling slot (or frame index) picks the detection frames, so a replay picks the same ones; the
        # triggers depend on this GOP only (a replay starts at a keyframe, where one fires anyway)
        work.index = state.last_slot if self.sample_fps is not None and state.last_slot is not None else work.frame_seq
        # the first sampled frame from a keyframe on: detect and re-anchor the tracks there (a replay starts there)
        work.keyframe, state.keyframe_pending = state.keyframe_pending, False
        work.cut = self._scene_cut(state, frame.image, self.temporal.settings.tracker.scene_cut_threshold)

    def _detect_reason(self, work: _Work) -> str | None:
        """Why the detector runs on this frame ("" = every frame is detected), or None: the tracks' predicted boxes.
        Called in each stream's frame order, after the stream's earlier frames were tracked."""
        t = self.temporal
        if t is None or not self._tracker_driven:
            return ""
        ts = t.settings.tracker
        if t.detect_due(work.index):
            return "schedule"
        if ts.redetect_on_keyframe and work.keyframe:
            return "keyframe"
        if work.cut:
            return "scene_cut"
        if t.weak_tracks(work.stream.stream_id, work.frame_time, work.width, work.height):
            return "weak_track"
        return None

    def _resolve(self) -> None:
        """Find the faces of every queued frame that waits for them: the detector runs once per round on one frame of
        each stream that needs a detection (``detect_batch``: one engine call per frame size, on the accelerator
        when the detector has one), the frames between detections get the tracks' predicted boxes (quality flag
        ``predicted``). Each stream's frames are tracked in their order: a stream's next frame waits for the
        previous detection's tracks."""
        while self._pending:
            batch: list[tuple[_Work, str]] = []
            refine: list[tuple[_Work, Detections]] = []  # predicted frames whose boxes are refined this round
            waiting: set[str] = set()  # streams with a frame in this round's detector call
            pending = [w for w in self._queue if w.pending]
            if not pending:  # pragma: no cover - the count and the queue agree
                self._pending = 0
                break
            for work in pending:
                if not work.pending or work.stream.stream_id in waiting:
                    continue
                try:
                    reason = self._detect_reason(work)
                    if reason is None:
                        predicted = self._predict(work)
                        if self._refining and len(predicted):
                            refine.append((work, predicted))
                            waiting.add(work.stream.stream_id)
                        else:
                            self._found(work, predicted)
                        continue
                except Exception as exc:
                    self._found(work, None, ("detect_error", exc))
                    continue
                batch.append((work, reason))
                waiting.add(work.stream.stream_id)
            if not batch and not refine:
                continue
            squares: list[list[_Square]] = []
            if refine:
                with self.stages.time("detect"):
                    for work, pred in refine:
                        try:
                            squares.append(self._squares(work, pred))
                        except Exception as exc:  # refining is best effort: the predictions stay
                            log.debug("stream=%s: no refining squares: %s", work.stream.stream_id, exc)
                            squares.append([])
            images = [w.image for w, _ in batch] + [sq.image for per in squares for sq in per]
            found = self._detect_frames([i for i in images if i is not None])
            found, around = found[: len(batch)], found[len(batch) :]
            for (work, pred), per in zip(refine, squares, strict=True):
                mine, around = around[: len(per)], around[len(per) :]
                try:
                    refined = self._refine(work, pred, per, mine) if per else pred
                except Exception as exc:
                    log.debug("stream=%s: refining failed: %s", work.stream.stream_id, exc)
                    refined = pred
                self._found(work, refined)
            for (work, reason), dets in zip(batch, found, strict=True):
                if isinstance(dets, BaseException):
                    self._found(work, None, ("detect_error", dets))
                    continue
                try:
                    self._found(work, self._track(work, reason, dets))
                except Exception as exc:
                    self._found(work, None, ("detect_error", exc))

    @property
    def _refining(self) -> bool:
        return self._tracker_driven and self.temporal is not None and self.temporal.settings.tracker.refine_predicted

    def _squares(self, work: _Work, pred: Detections) -> list[_Square]:
        """The square around each predicted box (``refine_margin`` box sizes per side), scaled to
        ``refine_size``; the frame's border is black."""
        assert self.temporal is not None and work.image is not None
        ts = self.temporal.settings.tracker
        h, w = work.image.shape[:2]
        # the scale the detector sees the whole frame at, so a face measures as on a detection frame
        max_side = getattr(self.detector, "max_side", None)
        frame_scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
        out = []
        for x1, y1, x2, y2 in pred.xyxy.astype(np.float64):
            side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + 2.0 * ts.refine_margin)
            x0, y0 = (x1 + x2 - side) / 2.0, (y1 + y2 - side) / 2.0
            n = max(32, min(ts.refine_size, math.ceil(side * frame_scale / 32.0) * 32))
            scale = n / side
            m = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
            image = cv2.warpAffine(work.image, m, (n, n), flags=cv2.INTER_LINEAR)
            out.append(_Square(np.asarray(image, np.uint8), x0, y0, scale))
        return out

    def _refine(
        self, work: _Work, pred: Detections, squares: list[_Square], found: list[Detections | BaseException]
    ) -> Detections:
        """Each predicted box replaced by the face found in its square that overlaps it most (at least the tracker's
        ``iou_threshold``); the tracks are corrected by them. Where none is found the prediction stays."""
        assert self.temporal is not None
        xyxy, score = pred.xyxy.copy(), pred.score.copy()
        refined = np.zeros(len(pred), bool)
        for i, (sq, dets) in enumerate(zip(squares, found, strict=True)):
            if isinstance(dets, BaseException) or not len(dets):
                continue  # refining is best effort: the predicted box stays
            boxes = dets.xyxy / sq.scale + np.array([sq.x0, sq.y0, sq.x0, sq.y0], np.float32)
            iou = iou_matrix(boxes, pred.xyxy[i : i + 1])[:, 0]
            best = int(np.argmax(iou))
            if iou[best] >= self.temporal.settings.tracker.iou_threshold:
                xyxy[i], score[i], refined[i] = boxes[best], dets.score[best], True
        if refined.any():
            measured = Detections(xyxy[refined], score[refined], pred.track_id[refined], pred.roll_deg[refined])
            self.temporal.refine(work.stream.stream_id, work.frame_time, measured)
        work.refined = refined
        return Detections(xyxy, score, pred.track_id, pred.roll_deg)

    def _detect_frames(self, images: list[npt.NDArray[np.uint8]]) -> list[Detections | BaseException]:
        """The detector on several frames in one call; when that fails, frame by frame (a frame that fails again
        gets its exception, so only it is dead-lettered)."""
        with self.stages.time("detect"):
            try:
                found: list[Detections | BaseException] = list(self.detector.detect_batch(images))
                if len(found) != len(images):
                    raise ValueError(f"detect_batch returned {len(found)} results for {len(images)} frames")
                return found
            except Exception as exc:
                if len(images) > 1:
                    log.warning("detection of %d frames failed (%s); frame by frame", len(images), exc)
                found = []
                for image in images:
                    try:
                        found.append(self.detector.detect(image))
                    except Exception as one:
                        found.append(one)
                return found

    def _track(self, work: _Work, reason: str, dets: Detections) -> Detections:
        if not reason:  # every frame detected: tracks are assigned with the temporal stage
            return dets
        t = self.temporal
        assert t is not None
        self.detect_reasons[reason] = self.detect_reasons.get(reason, 0) + 1
        work.tracked = True
        anchor = work.keyframe and t.settings.tracker.redetect_on_keyframe
        dets = t.track(work.stream.stream_id, work.frame_time, dets, anchor=anchor)
        return self._maybe_restore_ids(work.stream, work.frame_seq, dets)

    def _predict(self, work: _Work) -> Detections:
        assert self.temporal is not None
        work.tracked = work.predicted = True
        dets = self.temporal.predict(work.stream.stream_id, work.frame_time)
        return self._maybe_restore_ids(work.stream, work.frame_seq, dets)

    def _found(self, work: _Work, dets: Detections | None, error: tuple[str, BaseException] | None = None) -> None:
        """A frame's faces are known: crop them (the decoded image is dropped here)."""
        image, work.image, work.pending = work.image, None, False
        self._pending -= 1
        if error is None and dets is not None and len(dets) and image is not None:
            try:
                with self.stages.time("crop"):
                    work.crops = crop_faces(image, dets.xyxy, self.contract, dets.roll_deg)
            except Exception as exc:
                error = ("crop_error", exc)
        if error is not None:
            work.error, work.dets, work.crops = error, None, None
            return
        work.dets = dets
        if dets is not None and len(dets):
            self._queued_faces += len(dets)
            if self.observer is not None:
                self.observer.faces(len(dets))

    @staticmethod
    def _scene_cut(state: StreamState, image: npt.NDArray[np.uint8], threshold: float) -> bool:
        """Whether this sampled frame differs from the stream's previous one by more than ``threshold`` (mean
        absolute difference of 64x36 grey thumbnails, 0-255)."""
        if threshold <= 0:
            return False
        thumb = np.asarray(
            cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (64, 36), interpolation=cv2.INTER_AREA), np.uint8
        )
        prev, state.thumb = state.thumb, thumb
        return prev is not None and float(cv2.absdiff(prev, thumb).mean()) > threshold

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
        """Whether a batch should run now: full (faces, or frames waiting for detection), or its oldest frame
        waited max_wait."""
        if not self._queue:
            return False
        if self._pending >= self.max_batch:
            return True
        return self._due_found(now)

    def _due_found(self, now: float | None = None) -> bool:
        if self._queued_faces >= self.max_batch:
            return True
        head = self._queue[0]
        if head.n_faces == 0 and not head.pending:
            return True
        return ((now or time.monotonic()) - head.enqueued) >= self.max_wait_s

    def pump(self, force: bool = False) -> int:
        """Run due batches (all queued work when ``force``); returns the number of events emitted."""
        emitted = 0
        while self._queue and (force or self.due()):
            self._resolve()
            if not force and not self._due_found():  # faces found; they wait for their batch to fill
                break
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
        try:
            coeffs, probs = self._infer(take)
        except Exception as exc:  # isolate the frame that fails; never stop the worker
            log.warning(
                "batch of %d frames failed (%s: %s); retrying frame by frame", len(take), type(exc).__name__, exc
            )
            return sum(self._run_one(work) for work in take)
        emitted = 0
        row = 0
        for work in take:
            n = work.n_faces
            if work.error is not None:
                self._failed(work, work.error[0], work.error[1])
                continue
            emitted += self._finish_guarded(
                work, coeffs[row : row + n], None if probs is None else probs[row : row + n]
            )
            row += n
        return emitted

    def _infer(self, take: list[_Work]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        coeffs = np.zeros((0, NUM_COEFFS), np.float32)
        probs: npt.NDArray[np.float32] | None = None
        crops = [w.crops for w in take if w.crops is not None]
        if crops:
            with self.stages.time("infer"):
                batch = self.contract.normalize(np.concatenate(crops))
                coeffs, model_probs = self.engine.infer_all(batch)
                if self.emotion_head is not None:
                    probs = self.emotion_head.predict_proba(coeffs, model_probs)
            if coeffs.shape != (len(batch), NUM_COEFFS):
                raise ValueError(f"engine returned shape {coeffs.shape} for a batch of {len(batch)}")
            if self.observer is not None:
                self.observer.batch(len(batch))
        return coeffs, probs

    def _run_one(self, work: _Work) -> int:
        """A frame of a failed batch on its own: a second failure dead-letters it (never retried forever)."""
        if work.error is not None:
            self._failed(work, work.error[0], work.error[1])
            return 0
        try:
            coeffs, probs = self._infer([work])
        except Exception as exc:
            self._failed(work, "infer_error", exc)
            return 0
        return self._finish_guarded(work, coeffs, probs)

    def _finish_guarded(
        self, work: _Work, coeffs: npt.NDArray[np.float32], probs: npt.NDArray[np.float32] | None
    ) -> int:
        try:
            return self._finish(work, coeffs, probs)
        except Exception as exc:
            self._failed(work, "finish_error", exc)
            return 0

    def _failed(self, work: _Work, reason: str, exc: BaseException) -> None:
        """The frame gets no event: dead-letter its packet (by pointer) and release what it held."""
        state = work.stream
        detail = f"{type(exc).__name__}: {exc}"
        log.warning("stream=%s frame pts=%s failed (%s): %s", state.stream_id, work.pts, reason, detail)
        if self.fail is None:
            raise exc
        released = work.released if work.released is not None else self._release(state, work.pts) + work.after
        if work.end is not None:
            released += [s for _, s in state.outstanding] + [work.source]
            state.outstanding.clear()
            if self.streams.get(state.stream_id) is state:
                del self.streams[state.stream_id]
        self.fail(work.source, reason, detail, state.stream_id)
        if released:
            self.done(released)

    def _finish(
        self, work: _Work, coeffs: npt.NDArray[np.float32], probs: npt.NDArray[np.float32] | None = None
    ) -> int:
        state = work.stream
        if work.end is not None:
            return self._finish_stream(work)
        released = work.released = self._release(state, work.pts) + work.after
        if work.replay:
            state.counters.frames_replayed += 1
            if work.pts is not None:
                state.replay_pts.discard(work.pts)
            if self.rebuild and work.sampled:
                self._temporal_frame(work, coeffs, probs, publish=False)
        if work.replay or not work.sampled:
            if released:
                self.done(released)
            return 0
        state.counters.frames_sampled += 1
        emitted, smoothed, probs_smoothed = (
            self._temporal_frame(work, coeffs, probs) if self.temporal is not None else (0, None, None)
        )
        faces = self._faces(work, coeffs, smoothed, probs, probs_smoothed)
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
        self,
        work: _Work,
        coeffs: npt.NDArray[np.float32],
        probs: npt.NDArray[np.float32] | None = None,
        *,
        publish: bool = True,
    ) -> tuple[int, npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None]:
        """Track ids into ``work.dets``; emits the aggregates of windows this frame closed; smoothed coefficients and
        emotion probabilities.

        ``publish=False`` (a replayed frame) rebuilds the state only: the previous owner published what it closed.
        """
        if self.temporal is None:  # pragma: no cover - guarded by the caller
            return 0, None, None
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
        work.dets = Detections(dets.xyxy, dets.score, res.track_ids, dets.roll_deg)
        if not work.tracked:
            work.dets = self._maybe_restore_ids(state, work.frame_seq, work.dets)
        aggs += res.aggregates
        if not publish:
            return 0, None, None
        for agg in aggs:
            self.emit(agg, [])
        if self.temporal.settings.tracker.enabled:
            tracked = work.dets.track_id >= 0
            # every published frame: built without validation (our own values); the worker sends one a second
            state.checkpoint = TrackState.model_construct(
                stream_id=sid,
                frame_seq=work.frame_seq,
                pts_time=work.pts_time,
                tracks=[
                    (int(i), float(b[0]), float(b[1]), float(b[2]), float(b[3]))
                    for i, b in zip(work.dets.track_id[tracked], work.dets.xyxy[tracked], strict=True)
                ],
                next_id=self.temporal.next_track_id(sid),
                worker_id=self.worker_id,
                sent_time=0.0,
            )
        smoothing = self.temporal.settings.smoothing.kind != "none"
        return len(aggs), (res.smoothed if smoothing else None), res.emotions_smoothed

    def _maybe_restore_ids(self, state: StreamState, frame_seq: int, dets: Detections) -> Detections:
        """At the frame of the previous owner's last track state (met in replay), rename the rebuilt tracks to
        its ids, so the tracks it published keep their ids and new tracks continue its numbering."""
        carry = state.carry
        if carry is None or self.temporal is None or frame_seq < carry.frame_seq:
            return dets
        state.carry = None
        sid = state.stream_id
        if frame_seq > carry.frame_seq:
            log.warning("stream=%s: replay missed the frame of the last track state; track ids restart", sid)
            return dets
        fresh_ids = [int(i) for i in dets.track_id]
        mapping: dict[int, int] = {}
        if carry.tracks and len(dets):
            carried = np.array([t[1:] for t in carry.tracks], np.float64)
            iou = iou_matrix(dets.xyxy, carried)
            for i, fid in enumerate(fresh_ids):
                j = int(np.argmax(iou[i]))
                if fid >= 0 and iou[i, j] >= 0.5 and carry.tracks[j][0] not in mapping.values():
                    mapping[fid] = int(carry.tracks[j][0])
        # Rebuilt tracks the previous owner did not report at that frame (ended, or coasting): both trackers number
        # tracks in the same confirmation order, so the replay's newest ids line up with the owner's newest ones.
        fresh_next = self.temporal.next_track_id(sid)
        shift = carry.next_id - fresh_next
        used = set(mapping.values())
        next_id = carry.next_id
        for fid in range(fresh_next):
            if fid in mapping:
                continue
            new = fid + shift
            if new < 0 or new in used:
                new = max(next_id, max(used, default=-1) + 1)
                next_id = new + 1
            mapping[fid] = new
            used.add(new)
        self.temporal.rename_tracks(sid, mapping, next_id)
        log.info("stream=%s: restored %d track id(s) of the previous owner", sid, len(carry.tracks))

        def remap(d: Detections) -> Detections:
            ids = np.array([mapping.get(int(i), int(i)) if i >= 0 else -1 for i in d.track_id], np.int64)
            return Detections(d.xyxy, d.score, ids, d.roll_deg)

        for queued in self._queue:  # frames tracked at detection time, not finished yet
            if queued.stream is state and queued.dets is not None and queued.tracked:
                queued.dets = remap(queued.dets)
        return remap(dets)

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
            end_reason=end.reason,
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
        probs_smoothed: npt.NDArray[np.float32] | None = None,
    ) -> list[Face]:
        dets = work.dets
        if dets is None or len(dets) == 0:
            return []
        c = self.contract
        sq = crop_boxes(dets.xyxy, c.crop_expand, snap_to_pixels=c.crop_snap_to_pixels)
        clipped = (sq[:, 0] < 0) | (sq[:, 1] < 0) | (sq[:, 2] > work.width) | (sq[:, 3] > work.height)
        side = dets.size_wh.min(axis=1)
        classes = self.emotion_head.classes if self.emotion_head is not None else ()
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
                quality.append("refined" if work.refined is not None and work.refined[i] else "predicted")
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
                    else {k: round(float(v), 5) for k, v in zip(classes, probs[i], strict=True)},
                    emotions_smoothed=None
                    if probs_smoothed is None or self.emotion_head is None or dets.track_id[i] < 0
                    else {k: round(float(v), 5) for k, v in zip(classes, probs_smoothed[i], strict=True)},
                )
            )
        return faces

    # ---------------------------------------------------------------- lifecycle
    def drop_partitions(self, partitions: set[int]) -> list[str]:
        """Forget decoders of streams on revoked partitions (after the caller drained the queue)."""
        gone = [sid for sid, st in self.streams.items() if st.partition in partitions]
        for sid in gone:
            del self.streams[sid]
        for p in partitions:
            self.partition_time.pop(p, None)
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
