"""Stage 5: a frame's inference results become its event (faces, quality flags, emotions, smoothing); a stream's end
becomes its summary; and the input sources a finished frame held are released, so the caller may commit them once
the event is acknowledged. A frame that cannot be finished is dead-lettered by pointer and releases what it held."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..engines.base import Engine
from ..events.aggregate_schema import EmotionAggregate
from ..events.schema import Face, FrameEvent, StreamSummary, frame_event_id, pack_coeffs
from ..faces.crop import crop_boxes
from .streams import Source, StreamTable
from .tracks import TrackStage
from .work import FrameWork, WorkQueue

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


Emit = Callable[[FrameEvent | StreamSummary | EmotionAggregate, list[Source]], None]
"""Receives an output event and the input sources that are finished once it is acknowledged."""
Done = Callable[[list[Source]], None]
"""Receives sources finished without an output event (control messages, replayed frames)."""
Fail = Callable[[Source, str, str, str], None]
"""Receives a source whose frame could not be processed: (source, reason code, detail, stream id). The frame gets no
event; the caller dead-letters the source (by pointer) and counts it done."""


class Finisher:
    def __init__(
        self,
        engine: Engine,
        table: StreamTable,
        queue: WorkQueue,
        *,
        emit: Emit,
        done: Done,
        fail: Fail | None = None,
        tracks: TrackStage | None = None,
        emotion_head: EmotionClassifier | None = None,
    ) -> None:
        self.engine = engine
        self.contract = engine.contract
        self.table = table
        self.queue = queue
        self.emit = emit
        self.done = done
        self.fail = fail
        self.tracks = tracks
        self.emotion_head = emotion_head

    def after_control(self, source: Source) -> None:
        """Control messages finish when everything queued before them is emitted: keep FIFO order."""
        if not self.queue.finish_after(source):
            self.done([source])

    def finish(
        self, work: FrameWork, coeffs: npt.NDArray[np.float32], probs: npt.NDArray[np.float32] | None = None
    ) -> int:
        """Emit the frame's event (or the stream's summary); returns the number of events emitted. A failure
        dead-letters the frame instead (never raised)."""
        try:
            return self._finish(work, coeffs, probs)
        except Exception as exc:
            self.failed(work, "finish_error", exc)
            return 0

    def failed(self, work: FrameWork, reason: str, exc: BaseException) -> None:
        """The frame gets no event: dead-letter its packet (by pointer) and release what it held."""
        state = work.stream
        detail = f"{type(exc).__name__}: {exc}"
        log.warning("stream=%s frame pts=%s failed (%s): %s", state.stream_id, work.pts, reason, detail)
        if self.fail is None:
            raise exc
        released = work.released if work.released is not None else state.release(work.pts) + work.after
        if work.end is not None:
            released += [*state.release_all(), work.source]
            self.table.close(state)
        self.fail(work.source, reason, detail, state.stream_id)
        if released:
            self.done(released)

    def _finish(self, work: FrameWork, coeffs: npt.NDArray[np.float32], probs: npt.NDArray[np.float32] | None) -> int:
        state = work.stream
        if work.end is not None:
            return self._finish_stream(work)
        released = work.released = state.release(work.pts) + work.after
        if work.replay:
            state.counters.frames_replayed += 1
            if work.pts is not None:
                state.replay_pts.discard(work.pts)
            if self.tracks is not None and self.tracks.rebuild and work.sampled:
                self.tracks.frame(work, coeffs, probs, publish=False)
        if work.replay or not work.sampled:
            if released:
                self.done(released)
            return 0
        state.counters.frames_sampled += 1
        smoothed = probs_smoothed = None
        emitted = 0
        if self.tracks is not None:
            aggs, smoothed, probs_smoothed = self.tracks.frame(work, coeffs, probs)
            for agg in aggs:
                self.emit(agg, [])
            emitted = len(aggs)
        faces = self.faces(work, coeffs, smoothed, probs, probs_smoothed)
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

    def _finish_stream(self, work: FrameWork) -> int:
        """Everything of this stream before its end marker is out: emit its summary."""
        state, end = work.stream, work.end
        if end is None:  # pragma: no cover - guarded by the caller
            return 0
        sources = [*state.release_all(), work.source, *work.after]
        self.table.close(state)
        if self.tracks is not None:
            for agg in self.tracks.end(state):
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

    def close_windows(self, partitions: set[int]) -> int:
        """Close and emit the open aggregate windows of streams on ``partitions``."""
        if self.tracks is None:
            return 0
        aggs = self.tracks.revoke(partitions)
        for agg in aggs:
            self.emit(agg, [])
        return len(aggs)

    def faces(
        self,
        work: FrameWork,
        coeffs: npt.NDArray[np.float32],
        smoothed: npt.NDArray[np.float32] | None = None,
        probs: npt.NDArray[np.float32] | None = None,
        probs_smoothed: npt.NDArray[np.float32] | None = None,
    ) -> list[Face]:
        """The frame's faces with their quality flags (``small_face``, ``clipped``, ``low_score``, ``predicted`` or
        ``refined``), coefficients and emotions; smoothed values for tracked faces only."""
        dets = work.dets
        if dets is None or len(dets) == 0:
            return []
        c = self.contract
        sq = crop_boxes(dets.xyxy, c.crop_expand, snap_to_pixels=c.crop_snap_to_pixels)
        clipped = (sq[:, 0] < 0) | (sq[:, 1] < 0) | (sq[:, 2] > work.width) | (sq[:, 3] > work.height)
        side = dets.size_wh.min(axis=1)
        classes = self.emotion_head.classes if self.emotion_head is not None else ()

        def named(p: npt.NDArray[np.float32] | None, i: int, tracked_only: bool) -> dict[str, float] | None:
            if p is None or self.emotion_head is None or (tracked_only and dets.track_id[i] < 0):
                return None
            return {k: round(float(v), 5) for k, v in zip(classes, p[i], strict=True)}

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
                    emotions=named(probs, i, tracked_only=False),
                    emotions_smoothed=named(probs_smoothed, i, tracked_only=True),
                )
            )
        return faces
