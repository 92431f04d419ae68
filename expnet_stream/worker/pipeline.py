"""The broker-free core of a worker: decode, sample, detect, crop, batch across streams, infer, emit.

The Kafka worker and ``expnet-stream run`` both drive a :class:`Pipeline`: they feed it input messages tagged with
their source (partition, offset) and receive, in order per stream, output events plus the sources whose work those
events finish. A source is reported done only after every frame it produced has its event emitted, so callers can
commit offsets safely once the emitted events are acknowledged.

A frame goes through one stage after the other, each its own object around one FIFO queue (:mod:`.work`):

========================  =============================================================================
:mod:`.streams`           stream table: decoders, counters, held sources, capacity
:mod:`.intake`            messages in: decode, sample (:mod:`.schedule`), queue
:mod:`.face_finder`       detection rounds across streams, tracker predictions and refining, crops
:mod:`.batcher`           when a batch is due, which frames it takes, the engine call
:mod:`.finisher`          events, quality flags, emotions, summaries; releases sources; dead-letters failures
:mod:`.tracks`            the temporal stage (track ids, smoothing, windows) as the finisher sees it
:mod:`.track_ids`         track ids across a takeover
========================  =============================================================================

Replay: after a restart a worker re-reads a partition from the last keyframe before its committed position so
decoders can resume without losing frames. Packets handled with ``replay=True`` were already finished by the
previous owner: their frames rebuild decoder, sampler and temporal state but are not emitted again.
"""

from __future__ import annotations

import logging

from ..aggregate.temporal import StreamTemporal
from ..engines.base import Engine
from ..events.schema import StreamEnd, StreamStart, TrackState, VideoPacket
from ..faces.detector import FaceDetector
from ..ops.metrics import PipelineObserver
from ..video.decode import DecodeLimits
from .batcher import Batcher
from .face_finder import FaceFinder, TrackedFaces
from .finisher import Done, Emit, EmotionClassifier, Fail, Finisher
from .intake import Intake
from .schedule import DetectionSchedule, Sampler, tracker_driven
from .stages import StageTimes
from .streams import Source, StreamState, StreamTable
from .track_ids import TrackIdHandoff
from .tracks import TrackStage
from .work import FrameWork, WorkQueue

__all__ = ["Done", "Emit", "EmotionClassifier", "Fail", "Pipeline", "Source"]

log = logging.getLogger(__name__)


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
        decode_limits: DecodeLimits | None = None,
        session_takeover_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.temporal = temporal
        self.stages = stages or StageTimes()
        self.table = StreamTable(decoder_threads=decoder_threads, max_streams=max_streams, limits=decode_limits)
        self.queue = WorkQueue()
        tracks = schedule = tracked = None
        if temporal is not None:
            handoff = TrackIdHandoff(temporal, self.queue)
            tracks = TrackStage(temporal, handoff, worker_id)
            if tracker_driven(temporal):
                schedule = DetectionSchedule(temporal, sample_fps)
                tracked = TrackedFaces(temporal, schedule, handoff)
        self.schedule = schedule
        self.finisher = Finisher(
            engine, self.table, self.queue, emit=emit, done=done, fail=fail, tracks=tracks, emotion_head=emotion_head
        )
        self.intake = Intake(
            self.table,
            self.queue,
            self.finisher,
            sampler=Sampler(sample_fps),
            schedule=schedule,
            tracks=tracks,
            stages=self.stages,
            observer=observer,
            session_takeover_s=session_takeover_s,
        )
        self.finder = FaceFinder(
            detector, engine.contract, self.queue, stages=self.stages, observer=observer, tracked=tracked
        )
        self.batcher = Batcher(
            engine,
            self.queue,
            max_batch=max_batch,
            max_wait_s=max_wait_ms / 1000.0,
            stages=self.stages,
            observer=observer,
            emotion_head=emotion_head,
        )

    # ---------------------------------------------------------------- driving
    def handle(
        self,
        msg: StreamStart | VideoPacket | StreamEnd,
        source: Source,
        *,
        replay: bool = False,
        arrived: float | None = None,
    ) -> None:
        """Process one input message (``arrived``: its Kafka record timestamp, see :meth:`Intake.handle`).

        Raises :class:`~expnet_stream.errors.DecodeError` (with a ``reason``) for a packet that cannot be decoded,
        including packets before a stream's first keyframe; the caller dead-letters it and marks it done.
        """
        self.intake.handle(msg, source, replay, arrived)

    def due(self, now: float | None = None) -> bool:
        """Whether a batch should run now (see :meth:`Batcher.due`)."""
        return self.batcher.due(now)

    def pump(self, force: bool = False) -> int:
        """Run due batches (all queued work when ``force``); returns the number of events emitted."""
        emitted = 0
        while self.queue and (force or self.batcher.due()):
            self.finder.resolve()
            if not force and not self.batcher.due_found():  # faces found; they wait for their batch to fill
                break
            emitted += self._run_batch()
        return emitted

    def _run_batch(self) -> int:
        take = self.batcher.take()
        try:
            coeffs, probs = self.batcher.infer(take)
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
                self.finisher.failed(work, *work.error)
                continue
            mine = None if probs is None else probs[row : row + n]
            emitted += self.finisher.finish(work, coeffs[row : row + n], mine)
            row += n
        return emitted

    def _run_one(self, work: FrameWork) -> int:
        """A frame of a failed batch on its own: a second failure dead-letters it (never retried forever)."""
        if work.error is not None:
            self.finisher.failed(work, *work.error)
            return 0
        try:
            coeffs, probs = self.batcher.infer([work])
        except Exception as exc:
            self.finisher.failed(work, "infer_error", exc)
            return 0
        return self.finisher.finish(work, coeffs, probs)

    # ---------------------------------------------------------------- lifecycle
    def close_windows(self, partitions: set[int]) -> int:
        """Close and emit the open aggregate windows of streams on ``partitions`` (``closed_by="revoke"``).

        Call on revoke after ``pump(force=True)`` and before the producer flush that precedes the commit.
        """
        return self.finisher.close_windows(partitions)

    def drop_partitions(self, partitions: set[int]) -> list[str]:
        """Forget decoders of streams on revoked partitions (after the caller drained the queue)."""
        return self.table.drop_partitions(partitions)

    # ---------------------------------------------------------------- views
    @property
    def streams(self) -> dict[str, StreamState]:
        return self.table.streams

    @property
    def carried(self) -> dict[str, TrackState]:
        """Last track states of streams a takeover replays (from the rewind scan), by stream id."""
        return self.table.carried

    @property
    def partition_time(self) -> dict[int, float]:
        return self.table.partition_time

    @property
    def detect_reasons(self) -> dict[str, int]:
        """Why the detector ran on frames tracked between detections (schedule, keyframe, scene_cut, weak_track)."""
        return self.schedule.reasons if self.schedule is not None else {}

    @property
    def max_wait_s(self) -> float:
        return self.batcher.max_wait_s

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def queued_faces(self) -> int:
        return self.queue.faces

    def queued_by_partition(self) -> dict[int, int]:
        """Queued frames per input partition (for backpressure)."""
        return self.queue.by_partition()
