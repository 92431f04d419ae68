"""Stage 3: the faces of every queued frame that waits for them, in detection rounds across streams; then the crops.

The detector runs once per round on one frame of each stream that needs a detection (``detect_batch``: one engine
call per frame size, on the accelerator when the detector has one). When the tracker drives detection, the frames
between detections get the tracks' predicted boxes (quality flag ``predicted``), optionally refined by the detector
on a small square around each box (``refined``). Each stream's frames are tracked in their order: a stream's next
frame waits for the previous detection's tracks. A frame whose faces cannot be found gets an error and is
dead-lettered in FIFO order; the detector failing on a round falls back to frame by frame.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ..aggregate.temporal import StreamTemporal
from ..faces.crop import crop_faces
from ..faces.detections import Detections
from ..faces.detector import FaceDetector
from ..faces.tracker import iou_matrix
from ..models.contract import PreprocessContract
from ..ops.metrics import PipelineObserver
from .schedule import DetectionSchedule
from .stages import StageTimes
from .track_ids import TrackIdHandoff
from .work import FrameWork, WorkQueue

log = logging.getLogger(__name__)


@dataclass
class Square:
    """A square cut around a predicted box for refining it, and how to map its boxes back to the frame."""

    image: npt.NDArray[np.uint8]
    x0: float
    y0: float
    scale: float


class TrackedFaces:
    """Faces from the tracker between detections: its schedule, predicted boxes, refining squares, track ids."""

    def __init__(self, temporal: StreamTemporal, schedule: DetectionSchedule, handoff: TrackIdHandoff) -> None:
        self.temporal = temporal
        self.schedule = schedule
        self.handoff = handoff
        self.settings = temporal.settings.tracker

    @property
    def refining(self) -> bool:
        return self.settings.refine_predicted

    def track(self, work: FrameWork, reason: str, dets: Detections) -> Detections:
        """Track ids for a detected frame."""
        self.schedule.count(reason)
        work.tracked = True
        anchor = work.keyframe and self.settings.redetect_on_keyframe
        dets = self.temporal.track(work.stream.stream_id, work.frame_time, dets, anchor=anchor)
        return self.handoff.restore(work.stream, work.frame_seq, dets)

    def predict(self, work: FrameWork) -> Detections:
        work.tracked = work.predicted = True
        dets = self.temporal.predict(work.stream.stream_id, work.frame_time)
        return self.handoff.restore(work.stream, work.frame_seq, dets)

    def squares(self, work: FrameWork, pred: Detections, max_side: int | None) -> list[Square]:
        """The square around each predicted box (``refine_margin`` box sizes per side), scaled to ``refine_size``;
        the frame's border is black. ``max_side``: the size the detector scales whole frames to, so a face measures
        as on a detection frame."""
        if work.image is None:
            return []
        ts = self.settings
        h, w = work.image.shape[:2]
        frame_scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
        out = []
        for x1, y1, x2, y2 in pred.xyxy.astype(np.float64):
            side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + 2.0 * ts.refine_margin)
            x0, y0 = (x1 + x2 - side) / 2.0, (y1 + y2 - side) / 2.0
            n = max(32, min(ts.refine_size, math.ceil(side * frame_scale / 32.0) * 32))
            scale = n / side
            m = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
            image = cv2.warpAffine(work.image, m, (n, n), flags=cv2.INTER_LINEAR)
            out.append(Square(np.asarray(image, np.uint8), x0, y0, scale))
        return out

    def refine(
        self, work: FrameWork, pred: Detections, squares: list[Square], found: list[Detections | BaseException]
    ) -> Detections:
        """Each predicted box replaced by the face found in its square that overlaps it most (at least the tracker's
        ``iou_threshold``); the tracks are corrected by them. Where none is found the prediction stays."""
        xyxy, score = pred.xyxy.copy(), pred.score.copy()
        refined = np.zeros(len(pred), bool)
        for i, (sq, dets) in enumerate(zip(squares, found, strict=True)):
            if isinstance(dets, BaseException) or not len(dets):
                continue  # refining is best effort: the predicted box stays
            boxes = dets.xyxy / sq.scale + np.array([sq.x0, sq.y0, sq.x0, sq.y0], np.float32)
            iou = iou_matrix(boxes, pred.xyxy[i : i + 1])[:, 0]
            best = int(np.argmax(iou))
            if iou[best] >= self.settings.iou_threshold:
                xyxy[i], score[i], refined[i] = boxes[best], dets.score[best], True
        if refined.any():
            measured = Detections(xyxy[refined], score[refined], pred.track_id[refined], pred.roll_deg[refined])
            self.temporal.refine(work.stream.stream_id, work.frame_time, measured)
        work.refined = refined
        return Detections(xyxy, score, pred.track_id, pred.roll_deg)


class FaceFinder:
    def __init__(
        self,
        detector: FaceDetector,
        contract: PreprocessContract,
        queue: WorkQueue,
        *,
        stages: StageTimes,
        observer: PipelineObserver | None = None,
        tracked: TrackedFaces | None = None,
    ) -> None:
        self.detector = detector
        self.contract = contract
        self.queue = queue
        self.stages = stages
        self.observer = observer
        self.tracked = tracked

    def resolve(self) -> None:
        """Find the faces of every queued frame that waits for them (rounds until none waits)."""
        while self.queue.pending:
            waiting = self.queue.waiting()
            if not waiting:  # pragma: no cover - the count and the queue agree
                self.queue.pending = 0
                break
            self._round(waiting)

    def _round(self, waiting: list[FrameWork]) -> None:
        batch: list[tuple[FrameWork, str]] = []
        refine: list[tuple[FrameWork, Detections]] = []  # predicted frames whose boxes are refined this round
        busy: set[str] = set()  # streams with a frame in this round's detector call
        tracked = self.tracked
        for work in waiting:
            if not work.pending or work.stream.stream_id in busy:
                continue
            try:
                reason = tracked.schedule.reason(work) if tracked is not None else ""
                if reason is None and tracked is not None:
                    predicted = tracked.predict(work)
                    if tracked.refining and len(predicted):
                        refine.append((work, predicted))
                        busy.add(work.stream.stream_id)
                    else:
                        self._found(work, predicted)
                    continue
            except Exception as exc:
                self._found(work, None, ("detect_error", exc))
                continue
            batch.append((work, reason or ""))
            busy.add(work.stream.stream_id)
        if not batch and not refine:
            return
        squares: list[list[Square]] = []
        if refine and tracked is not None:
            max_side = getattr(self.detector, "max_side", None)
            with self.stages.time("detect"):
                for work, pred in refine:
                    try:
                        squares.append(tracked.squares(work, pred, max_side))
                    except Exception as exc:  # refining is best effort: the predictions stay
                        log.debug("stream=%s: no refining squares: %s", work.stream.stream_id, exc)
                        squares.append([])
        images = [w.image for w, _ in batch] + [sq.image for per in squares for sq in per]
        found = self._detect_frames([i for i in images if i is not None])
        found, around = found[: len(batch)], found[len(batch) :]
        for (work, pred), per in zip(refine, squares, strict=True):
            mine, around = around[: len(per)], around[len(per) :]
            try:
                refined = tracked.refine(work, pred, per, mine) if per and tracked is not None else pred
            except Exception as exc:
                log.debug("stream=%s: refining failed: %s", work.stream.stream_id, exc)
                refined = pred
            self._found(work, refined)
        for (work, reason), dets in zip(batch, found, strict=True):
            if isinstance(dets, BaseException):
                self._found(work, None, ("detect_error", dets))
                continue
            try:
                # every frame detected (no reason): track ids are assigned with the temporal stage
                self._found(work, tracked.track(work, reason, dets) if reason and tracked is not None else dets)
            except Exception as exc:
                self._found(work, None, ("detect_error", exc))

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

    def _found(self, work: FrameWork, dets: Detections | None, error: tuple[str, BaseException] | None = None) -> None:
        """A frame's faces are known: crop them (the decoded image is dropped here)."""
        image = self.queue.found(work)
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
            self.queue.faces += len(dets)
            if self.observer is not None:
                self.observer.faces(len(dets))
