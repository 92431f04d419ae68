"""The temporal stage as the finisher sees it: track ids, smoothing and window aggregates per frame, the stream's
track-state checkpoint for takeovers, and the windows a stream's end, restart or revoke closes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ..aggregate.temporal import StreamTemporal
from ..events.aggregate_schema import EmotionAggregate
from ..events.schema import TrackState
from ..faces.detections import Detections
from .streams import StreamState
from .track_ids import TrackIdHandoff
from .work import FrameWork


class FrameTracks(NamedTuple):
    aggregates: list[EmotionAggregate]  # windows this frame closed
    smoothed: npt.NDArray[np.float32] | None  # per face: smoothed coefficients (None: smoothing off)
    emotions_smoothed: npt.NDArray[np.float32] | None  # per face: smoothed emotion probabilities


class TrackStage:
    def __init__(self, temporal: StreamTemporal, handoff: TrackIdHandoff, worker_id: str = "") -> None:
        self.temporal = temporal
        self.handoff = handoff
        self.worker_id = worker_id
        # replayed frames rebuild tracks, smoothing and open windows (detect + infer, nothing published)
        self.rebuild = temporal.settings.enabled
        # each stream's temporal state belongs to one StreamState at a time (a restart replaces it)
        self._owner: dict[str, StreamState] = {}

    def resumed(self, stream_id: str) -> None:
        """A stream met mid-way (a takeover): its first windows are partial."""
        self.temporal.mark_resumed(stream_id)

    def frame(
        self,
        work: FrameWork,
        coeffs: npt.NDArray[np.float32],
        probs: npt.NDArray[np.float32] | None = None,
        *,
        publish: bool = True,
    ) -> FrameTracks:
        """Track ids into ``work.dets``; the aggregates of windows this frame closed; smoothed coefficients and
        emotion probabilities. ``publish=False`` (a replayed frame) rebuilds the state only: the previous owner
        published what it closed."""
        state = work.stream
        sid = state.stream_id
        aggs: list[EmotionAggregate] = []
        owner = self._owner.get(sid)
        if owner is not None and owner is not state:  # the stream restarted: close the previous run's windows
            aggs += self.temporal.on_end(sid)
        self._owner[sid] = state
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
            work.dets = self.handoff.restore(state, work.frame_seq, work.dets)
        aggs += res.aggregates
        if not publish:
            return FrameTracks([], None, None)
        if self.temporal.settings.tracker.enabled:
            state.checkpoint = self._checkpoint(work, work.dets)
        smoothing = self.temporal.settings.smoothing.kind != "none"
        return FrameTracks(aggs, res.smoothed if smoothing else None, res.emotions_smoothed)

    def _checkpoint(self, work: FrameWork, dets: Detections) -> TrackState:
        """The stream's track ids at this frame (every published frame; the worker sends one a second). Built
        without validation: our own values."""
        tracked = dets.track_id >= 0
        return TrackState.model_construct(
            stream_id=work.stream.stream_id,
            frame_seq=work.frame_seq,
            pts_time=work.pts_time,
            tracks=[
                (int(i), float(b[0]), float(b[1]), float(b[2]), float(b[3]))
                for i, b in zip(dets.track_id[tracked], dets.xyxy[tracked], strict=True)
            ],
            next_id=self.temporal.next_track_id(work.stream.stream_id),
            worker_id=self.worker_id,
            sent_time=0.0,
        )

    def end(self, state: StreamState) -> list[EmotionAggregate]:
        """The stream ended: close its windows."""
        self._owner.pop(state.stream_id, None)
        return self.temporal.on_end(state.stream_id)

    def revoke(self, partitions: set[int]) -> list[EmotionAggregate]:
        """Close the windows of streams on revoked partitions (``closed_by="revoke"``)."""
        sids = [sid for sid, st in self._owner.items() if st.partition in partitions]
        for sid in sids:
            del self._owner[sid]
        return self.temporal.on_revoke(sids)
