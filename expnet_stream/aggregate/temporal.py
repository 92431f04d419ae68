"""The temporal stage a pipeline calls per processed frame: track faces, smooth coefficients, aggregate windows.

One :class:`StreamTemporal` serves every stream of a worker (a tracker and a smoother per stream, one
window aggregator). Single-threaded; call it in frame order per stream (the pipeline's ``_finish`` order).

>>> import numpy as np
>>> from expnet_stream.aggregate.settings import TemporalSettings
>>> from expnet_stream.faces.detections import Detections
>>> st = StreamTemporal(TemporalSettings(), model_id="m")
>>> dets = Detections(np.array([[0, 0, 50, 50]], np.float32), np.array([0.9], np.float32))
>>> res = st.on_frame("cam", 0.0, dets, np.zeros((1, 29), np.float32))
>>> res.track_ids.tolist(), res.smoothed.shape, res.aggregates
([0], (1, 29), [])
>>> [a.window_kind for a in st.on_end("cam")]
['tumbling', 'tumbling', 'sliding', 'sliding']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ..events.aggregate_schema import EmotionAggregate
from ..events.schema import NUM_COEFFS
from ..faces.detections import Detections
from ..faces.tracker import FaceTracker
from .settings import TemporalSettings
from .smoothing import TrackSmoother
from .windows import WindowAggregator

log = logging.getLogger(__name__)


class TemporalResult(NamedTuple):
    """What :meth:`StreamTemporal.on_frame` returns for one frame."""

    track_ids: npt.NDArray[np.int64]
    """``(N,)`` track id per face (``-1``: untracked)."""
    smoothed: npt.NDArray[np.float32]
    """``(N, 29)`` smoothed coefficients (a copy; the raw input is unchanged)."""
    emotions_smoothed: npt.NDArray[np.float32] | None
    """``(N, C)`` per-track smoothed emotion probabilities (rows sum to 1; untracked faces pass raw), or None without
    emotions or with ``smoothing.emotion_half_life_s`` 0."""
    aggregates: list[EmotionAggregate]
    """Aggregates of windows this frame closed (publish them before the frame's own event or after: both fine)."""


class StreamTemporal:
    """Per-stream trackers and smoothers plus the window aggregator, driven by the pipeline."""

    def __init__(
        self, settings: TemporalSettings, model_id: str, *, emotion_labels: Sequence[str] | None = None
    ) -> None:
        """``emotion_labels`` (e.g. the loaded emotion head's classes) override ``settings.emotion_labels``."""
        self.settings = settings
        self.model_id = model_id
        self.windows = WindowAggregator(
            settings.window_specs(),
            model_id,
            labels=list(emotion_labels) if emotion_labels is not None else settings.emotion_labels,
            per_track=settings.per_track,
            allowed_lateness_s=settings.allowed_lateness_s,
        )
        self._trackers: dict[str, FaceTracker] = {}
        self._smoothers: dict[str, TrackSmoother] = {}
        self._emotion_smoothers: dict[str, TrackSmoother] = {}

    # ---------------------------------------------------------------- per stream state
    def _tracker(self, stream_id: str) -> FaceTracker:
        tr = self._trackers.get(stream_id)
        if tr is None:
            t = self.settings.tracker
            tr = self._trackers[stream_id] = FaceTracker(t.iou_threshold, t.max_misses, t.min_hits)
        return tr

    def _smoother(self, stream_id: str) -> TrackSmoother:
        sm = self._smoothers.get(stream_id)
        if sm is None:
            s = self.settings.smoothing
            sm = self._smoothers[stream_id] = TrackSmoother(
                s.kind,
                min_cutoff_hz=s.min_cutoff_hz,
                beta=s.beta,
                d_cutoff_hz=s.d_cutoff_hz,
                half_life_s=s.half_life_s,
            )
        return sm

    def _smooth_emotions(
        self, stream_id: str, ids: npt.NDArray[np.int64], emotions: npt.ArrayLike | None, pts_time: float
    ) -> npt.NDArray[np.float32] | None:
        half_life = self.settings.smoothing.emotion_half_life_s
        if emotions is None or half_life <= 0:
            return None
        p = np.asarray(emotions, np.float32)
        p = p.reshape(len(ids), -1) if p.size else np.zeros((len(ids), 0), np.float32)
        if p.shape[1] == 0:
            return None
        sm = self._emotion_smoothers.get(stream_id)
        if sm is None or sm.dims != p.shape[1]:
            sm = self._emotion_smoothers[stream_id] = TrackSmoother("ema", half_life_s=half_life, dims=p.shape[1])
        out = sm.update(ids, p, pts_time)
        return np.asarray(out / np.maximum(out.sum(1, keepdims=True), 1e-12), np.float32)

    # ---------------------------------------------------------------- tracking at detection time (optional)
    def track(self, stream_id: str, pts_time: float, dets: Detections, *, anchor: bool = False) -> Detections:
        """Assign track ids to a frame's detections (call at detection time; then ``on_frame(..., track=False)``);
        ``anchor``: see :meth:`FaceTracker.update`."""
        if not self.settings.tracker.enabled:
            return dets
        tracker = self._tracker(stream_id)
        out = tracker.update(dets, pts_time, anchor=anchor)
        if tracker.ended:
            self._smoother(stream_id).drop(tracker.ended)
            if stream_id in self._emotion_smoothers:
                self._emotion_smoothers[stream_id].drop(tracker.ended)
            self.windows.forget_tracks(stream_id, tracker.ended)
        return out

    def predict(self, stream_id: str, pts_time: float) -> Detections:
        """Boxes with ids of the stream's visible tracks extrapolated to ``pts_time``, for frames where detection
        is skipped (``tracker.detect_every_n > 1``): crop these, infer, then ``on_frame(..., track=False)``."""
        tracker = self._trackers.get(stream_id)
        if tracker is None or not self.settings.tracker.enabled:
            return Detections.empty()
        return tracker.predict(pts_time)

    def refine(self, stream_id: str, pts_time: float, measured: Detections) -> None:
        """Boxes measured around the predicted ones between detections correct their tracks
        (:meth:`FaceTracker.refine`)."""
        tracker = self._trackers.get(stream_id)
        if tracker is not None and self.settings.tracker.enabled:
            tracker.refine(measured, pts_time)

    def detect_due(self, frame_index: int) -> bool:
        """Whether the schedule runs the detector on the stream's ``frame_index``-th sampled frame."""
        return frame_index % self.settings.tracker.detect_every_n == 0

    def weak_tracks(self, stream_id: str, pts_time: float, width: int, height: int) -> bool:
        """Whether a visible track needs a detection now: its last score is below ``redetect_below_score``, or its
        predicted box reaches past the frame edge (``redetect_at_edge``: a face leaving, the prediction would drift
        off it)."""
        tracker = self._trackers.get(stream_id)
        if tracker is None:
            return False
        pred = tracker.predict(pts_time)
        if len(pred) == 0:
            return False
        if bool((pred.score < self.settings.tracker.redetect_below_score).any()):
            return True
        if not self.settings.tracker.redetect_at_edge:
            return False
        x = pred.xyxy
        return bool(((x[:, 0] < 0) | (x[:, 1] < 0) | (x[:, 2] > width) | (x[:, 3] > height)).any())

    # ---------------------------------------------------------------- per frame
    def on_frame(
        self,
        stream_id: str,
        pts_time: float,
        dets: Detections,
        coeffs: npt.ArrayLike,
        emotions: npt.ArrayLike | None = None,
        *,
        track: bool = True,
    ) -> TemporalResult:
        """One processed frame (every sampled frame, faceless ones too), in frame order per stream.

        Args:
            dets: the frame's faces; with ``track=True`` the tracker assigns their ids, else their ``track_id``
                is used as given (from :meth:`track` or :meth:`predict`).
            coeffs: ``(N, 29)`` raw coefficients, one row per face of ``dets``.
            emotions: ``(N, len(emotion_labels))`` probabilities, or None without an emotion head.
        """
        raw = np.asarray(coeffs, np.float32).reshape(-1, NUM_COEFFS)
        if raw.shape[0] != len(dets):
            raise ValueError(f"coeffs must have shape ({len(dets)}, {NUM_COEFFS}), got {raw.shape}")
        if not self.settings.enabled:
            return TemporalResult(dets.track_id.copy(), raw.copy(), None, [])
        if track:
            dets = self.track(stream_id, pts_time, dets)
        ids = dets.track_id
        smoothed = self._smoother(stream_id).update(ids, raw, pts_time)
        emotions_smoothed = self._smooth_emotions(stream_id, ids, emotions, pts_time)
        closed = self.windows.on_frame(stream_id, pts_time, ids, raw, emotions) if self.settings.windows else []
        return TemporalResult(ids.copy(), smoothed, emotions_smoothed, closed)

    def mark_resumed(self, stream_id: str) -> None:
        """The stream is picked up mid-way: see :meth:`WindowAggregator.mark_resumed`."""
        self.windows.mark_resumed(stream_id)

    def next_track_id(self, stream_id: str) -> int:
        tracker = self._trackers.get(stream_id)
        return 0 if tracker is None else tracker.next_id

    def rename_tracks(self, stream_id: str, mapping: dict[int, int], next_id: int) -> None:
        """Rename the stream's track ids everywhere (tracker, smoother, open windows); new tracks start at
        ``next_id`` or above. Used by a taker-over to restore the previous owner's ids."""
        tracker = self._trackers.get(stream_id)
        if tracker is not None:
            tracker.rename(mapping, next_id)
        for smoothers in (self._smoothers, self._emotion_smoothers):
            sm = smoothers.get(stream_id)
            if sm is not None:
                sm.rename(mapping)
        self.windows.rename_tracks(stream_id, mapping)

    # ---------------------------------------------------------------- lifecycle
    def on_end(self, stream_id: str) -> list[EmotionAggregate]:
        """End of stream: close its windows (``closed_by="end_of_stream"``) and drop its tracker and smoother."""
        self._drop(stream_id)
        return self.windows.flush(stream_id, "end_of_stream")

    def on_revoke(self, stream_ids: Iterable[str]) -> list[EmotionAggregate]:
        """Partitions revoked: close the streams' windows (``closed_by="revoke"``) and drop their state."""
        out: list[EmotionAggregate] = []
        for sid in stream_ids:
            self._drop(sid)
            out.extend(self.windows.flush(sid, "revoke"))
        return out

    def _drop(self, stream_id: str) -> None:
        self._trackers.pop(stream_id, None)
        self._smoothers.pop(stream_id, None)
        self._emotion_smoothers.pop(stream_id, None)

    @property
    def streams(self) -> list[str]:
        """Streams with state (tracker, smoother or open windows)."""
        return sorted(set(self._trackers) | set(self._smoothers) | set(self.windows.streams))
