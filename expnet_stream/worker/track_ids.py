"""Track ids across a takeover: the tracks a replay rebuilds are renamed to the previous owner's ids at the frame of
its last track state (``StreamState.carry``, read from the worker-state topic by the rewind scan)."""

from __future__ import annotations

import logging

import numpy as np

from ..aggregate.temporal import StreamTemporal
from ..faces.detections import Detections
from ..faces.tracker import iou_matrix
from .streams import StreamState
from .work import WorkQueue

log = logging.getLogger(__name__)


class TrackIdHandoff:
    def __init__(self, temporal: StreamTemporal, queue: WorkQueue) -> None:
        self.temporal = temporal
        self.queue = queue

    def restore(self, state: StreamState, frame_seq: int, dets: Detections) -> Detections:
        """At the frame of the previous owner's last track state (met in replay), rename the rebuilt tracks to its
        ids, so the tracks it published keep their ids and new tracks continue its numbering. Other frames pass."""
        carry = state.carry
        if carry is None or frame_seq < carry.frame_seq:
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

        for queued in self.queue:  # frames tracked at detection time, not finished yet
            if queued.stream is state and queued.dets is not None and queued.tracked:
                queued.dets = remap(queued.dets)
        return remap(dets)
