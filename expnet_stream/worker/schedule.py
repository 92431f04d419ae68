"""Stage 2: which decoded frames are processed (sampling) and, when the tracker drives detection, which of them the
detector sees (the schedule, keyframes, scene cuts, weak tracks). Both depend only on stream time and the stream's
own frames, so a replay after a takeover picks the same frames."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from ..aggregate.temporal import StreamTemporal
from ..video.decode import DecodedFrame
from .streams import StreamState
from .work import FrameWork


class Sampler:
    """Keeps the first frame of each ``1/fps`` slot of stream time (a grid, so replays sample the same frames);
    ``fps=None`` keeps every frame."""

    def __init__(self, fps: float | None) -> None:
        self.fps = fps

    def sample(self, state: StreamState, frame: DecodedFrame) -> bool:
        if self.fps is None:
            return True
        slot = math.floor(frame.pts_time * self.fps + 1e-6)
        if state.last_slot is not None and slot == state.last_slot:
            return False
        state.last_slot = slot
        return True


def scene_cut(state: StreamState, image: npt.NDArray[np.uint8], threshold: float) -> bool:
    """Whether this sampled frame differs from the stream's previous one by more than ``threshold`` (mean absolute
    difference of 64x36 grey thumbnails, 0-255)."""
    if threshold <= 0:
        return False
    thumb = np.asarray(
        cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (64, 36), interpolation=cv2.INTER_AREA), np.uint8
    )
    prev, state.thumb = state.thumb, thumb
    return prev is not None and float(cv2.absdiff(prev, thumb).mean()) > threshold


def tracker_driven(temporal: StreamTemporal | None) -> bool:
    """Whether the tracker predicts boxes between detections (``detect_every_n > 1``)."""
    return temporal is not None and temporal.settings.tracker.enabled and temporal.settings.tracker.detect_every_n > 1


class DetectionSchedule:
    """Why the detector runs on a frame between scheduled detections, or that it does not (the tracks' predicted
    boxes stand in). Only built when the tracker drives detection."""

    def __init__(self, temporal: StreamTemporal, sample_fps: float | None) -> None:
        self.temporal = temporal
        self.settings = temporal.settings.tracker
        self.sample_fps = sample_fps
        #: why the detector ran (schedule, keyframe, scene_cut, weak_track): counts
        self.reasons: dict[str, int] = {}

    def note(self, state: StreamState, image: npt.NDArray[np.uint8], work: FrameWork) -> None:
        """What the schedule needs from the decode order, taken when the frame is queued."""
        # the sampling slot (or frame index) picks the detection frames, so a replay picks the same ones; the
        # triggers depend on this GOP only (a replay starts at a keyframe, where one fires anyway)
        work.index = state.last_slot if self.sample_fps is not None and state.last_slot is not None else work.frame_seq
        # the first sampled frame from a keyframe on: detect and re-anchor the tracks there (a replay starts there)
        work.keyframe, state.keyframe_pending = state.keyframe_pending, False
        work.cut = scene_cut(state, image, self.settings.scene_cut_threshold)

    def reason(self, work: FrameWork) -> str | None:
        """Why the detector runs on this frame, or None: the tracks' predicted boxes. Called in each stream's frame
        order, after the stream's earlier frames were tracked."""
        t = self.temporal
        if t.detect_due(work.index):
            return "schedule"
        if self.settings.redetect_on_keyframe and work.keyframe:
            return "keyframe"
        if work.cut:
            return "scene_cut"
        if t.weak_tracks(work.stream.stream_id, work.frame_time, work.width, work.height):
            return "weak_track"
        return None

    def count(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
