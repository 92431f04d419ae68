"""A small IoU face tracker with a constant-velocity alpha-beta box predictor. One tracker per stream.

Each track keeps its box as centre and size ``(cx, cy, w, h)`` with a velocity per component, updated with an
alpha-beta filter in stream time (``pts_time``), so motion is predicted across uneven frame gaps. On
:meth:`FaceTracker.update` the tracks are predicted to the frame time, matched to the detections by an exact
maximum-IoU assignment (Hungarian algorithm, small N, pure numpy/python), and pairs below ``iou_threshold``
are rejected. Unmatched tracks coast on their predicted box for up to ``max_misses`` updates, so a face that
is occluded or missed by the detector for a few frames keeps its id; unmatched detections start new tracks.

Detect every N frames: a pipeline that runs the detector only on some frames calls :meth:`FaceTracker.update`
on those and :meth:`FaceTracker.predict` on the frames in between. ``predict`` returns the visible tracks'
boxes extrapolated to that frame time with their ids and last scores, without changing any track (it counts
no miss and needs no detection), so the pipeline can crop those boxes and run the expression model on them.

>>> import numpy as np
>>> from expnet_stream.faces.detections import Detections
>>> t = FaceTracker()
>>> d = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32))
>>> t.update(d, 0.0).track_id.tolist(), t.update(d, 0.04).track_id.tolist()
([0], [0])
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError
from .detections import Detections

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

_INFEASIBLE = 1e6


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> F64:
    """``(len(a), len(b))`` intersection over union of ``x1, y1, x2, y2`` boxes.

    >>> iou_matrix([[0, 0, 2, 2]], [[1, 0, 3, 2], [5, 5, 6, 6]]).round(3).tolist()
    [[0.333, 0.0]]
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    out: F64 = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out


def linear_assignment(cost: npt.ArrayLike) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Minimum-cost assignment of a rectangular cost matrix (Hungarian algorithm, O(n^2 m)).

    Returns ``(rows, cols)``, one pair per row when rows <= cols (else one per column), sorted by row.
    Meant for the few faces of one frame.

    >>> rows, cols = linear_assignment([[4, 1, 3], [2, 0, 5], [3, 2, 2]])
    >>> rows.tolist(), cols.tolist()
    ([0, 1, 2], [1, 0, 2])
    """
    c = np.asarray(cost, np.float64)
    if c.ndim != 2:
        raise ValueError(f"cost must have shape (n, m), got {c.shape}")
    if c.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    transposed = c.shape[0] > c.shape[1]
    if transposed:
        c = c.T
    n, m = c.shape
    # e-maxx formulation with potentials u (rows) and v (columns); column 0 is a virtual start.
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, np.intp)  # p[j]: row (1-based) assigned to column j
    way = np.zeros(m + 1, np.intp)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used[1:]
            cur = c[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    cols = np.nonzero(p[1:])[0]
    rows = p[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows, kind="stable")
    return rows[order].astype(np.intp), cols[order].astype(np.intp)


def _to_cxcywh(xyxy: npt.NDArray[np.floating]) -> F64:
    x = np.asarray(xyxy, np.float64).reshape(-1, 4)
    wh = x[:, 2:] - x[:, :2]
    return np.concatenate([x[:, :2] + wh / 2, wh], axis=1)


def _to_xyxy(cxcywh: F64) -> npt.NDArray[np.float32]:
    half = np.clip(cxcywh[:, 2:], 1.0, None) / 2
    return np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1).astype(np.float32)


class FaceTracker:
    """IoU tracker over one stream's frames, in stream time.

    Args:
        iou_threshold: least IoU between a track's predicted box and a detection for them to match.
        max_misses: updates a track may go unmatched (coasting on its prediction) before it ends.
        min_hits: matched detections before a track gets an id; until then its faces get ``-1``.
        alpha: weight of the measured box against the predicted one (position and size), in ``(0, 1]``.
        beta: weight of the measured velocity change, in ``[0, 1)``; 0 disables motion prediction.
        max_velocity_gap_s: frame gaps longer than this do not update the velocity (it would be meaningless).

    Track ids are ``0, 1, 2, ...`` per tracker (per stream) in order of confirmation and are never reused.
    Ids of tracks that ended in the last :meth:`update` are in :attr:`ended`, so per-track state elsewhere
    (smoothing) can be dropped.
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_misses: int = 5,
        min_hits: int = 1,
        *,
        alpha: float = 0.7,
        beta: float = 0.3,
        max_velocity_gap_s: float = 1.0,
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_misses < 0 or min_hits < 1:
            raise ConfigError(f"need max_misses >= 0 and min_hits >= 1, got {max_misses}, {min_hits}")
        if not (0.0 < alpha <= 1.0 and 0.0 <= beta < 1.0):
            raise ConfigError(f"need 0 < alpha <= 1 and 0 <= beta < 1, got {alpha}, {beta}")
        self.iou_threshold = iou_threshold
        self.max_misses = max_misses
        self.min_hits = min_hits
        self.alpha = alpha
        self.beta = beta
        self.max_velocity_gap_s = max_velocity_gap_s
        self.ended: list[int] = []
        self._next_id = 0
        self._x = np.zeros((0, 4))  # cx, cy, w, h at _t
        self._v = np.zeros((0, 4))  # per second
        self._t = np.zeros(0)
        self._hits = np.zeros(0, np.int64)
        self._misses = np.zeros(0, np.int64)
        self._ids = np.zeros(0, np.int64)  # -1 while tentative
        self._score = np.zeros(0, np.float32)
        self._roll = np.zeros(0, np.float32)  # the eye-line roll of the last detection with one (NaN: unknown)

    def __len__(self) -> int:
        """Live tracks (confirmed or tentative, visible or coasting)."""
        return int(self._ids.shape[0])

    @property
    def track_ids(self) -> list[int]:
        """Ids of the confirmed live tracks."""
        return [int(i) for i in self._ids if i >= 0]

    @property
    def next_id(self) -> int:
        """The id the next confirmed track gets."""
        return self._next_id

    def rename(self, mapping: dict[int, int], next_id: int) -> None:
        """Give live tracks new ids (``old -> new``) and continue numbering at ``next_id`` or above.

        A worker taking a stream over rebuilds the tracks by replay and then renames them to the ids the
        previous owner published, so ids survive the takeover."""
        self._ids = np.array([mapping.get(int(i), int(i)) if i >= 0 else -1 for i in self._ids], np.int64)
        live = [int(i) for i in self._ids if i >= 0]
        if len(set(live)) != len(live):
            raise ValueError(f"renaming {mapping} merges tracks")
        self._next_id = max(next_id, max(live, default=-1) + 1)

    def _predicted(self, pts_time: float) -> F64:
        dt = np.clip(pts_time - self._t, 0.0, None)[:, None]
        pred: F64 = self._x + self._v * dt
        return pred

    def predict(self, pts_time: float) -> Detections:
        """Boxes of the confirmed tracks seen in the last update, extrapolated to ``pts_time``.

        For frames where detection is skipped; changes no track state.
        """
        keep = (self._ids >= 0) & (self._misses == 0)
        pred = self._predicted(pts_time)[keep]
        return Detections(_to_xyxy(pred), self._score[keep].copy(), self._ids[keep].copy(), self._roll[keep].copy())

    def update(self, dets: Detections, pts_time: float, *, anchor: bool = False) -> Detections:
        """Match ``dets`` (one frame's detections) to the tracks; returns them with ``track_id`` set.

        Faces of tentative tracks (``min_hits > 1``) get ``-1``. Boxes, scores and rolls are returned unchanged; a
        track keeps the roll of its last detection that had one (for the boxes :meth:`predict` carries).
        ``anchor`` re-anchors matched tracks on their detection (box = detection, velocity 0), so the motion state
        no longer depends on earlier frames: a pipeline anchors at keyframes, where a replay after a takeover
        starts, so both predict the same boxes from there on.
        """
        self.ended = []
        n_tracks, n_dets = len(self), len(dets)
        pred = self._predicted(pts_time)
        det_ids = np.full(n_dets, -1, np.int64)
        matched_t = np.zeros(0, np.intp)
        matched_d = np.zeros(0, np.intp)
        if n_tracks and n_dets:
            iou = iou_matrix(_to_xyxy(pred), dets.xyxy)
            cost = np.where(iou >= self.iou_threshold, 1.0 - iou, _INFEASIBLE)
            rows, cols = linear_assignment(cost)
            ok = cost[rows, cols] < _INFEASIBLE
            matched_t, matched_d = rows[ok], cols[ok]
        if matched_t.size:
            z = _to_cxcywh(dets.xyxy[matched_d])
            p = pred[matched_t]
            r = z - p
            dt = pts_time - self._t[matched_t]
            fresh = (dt > 1e-6) & (dt <= self.max_velocity_gap_s)
            if anchor:
                self._x[matched_t] = z
                self._v[matched_t] = 0.0
            else:
                self._x[matched_t] = p + self.alpha * r
                vel_gain = np.where(fresh, self.beta / np.where(fresh, dt, 1.0), 0.0)[:, None]
                self._v[matched_t] += vel_gain * r
            self._t[matched_t] = np.maximum(self._t[matched_t], pts_time)
            self._hits[matched_t] += 1
            self._misses[matched_t] = 0
            self._score[matched_t] = dets.score[matched_d]
            roll = dets.roll_deg[matched_d]
            self._roll[matched_t] = np.where(np.isfinite(roll), roll, self._roll[matched_t])
            confirm = matched_t[(self._ids[matched_t] < 0) & (self._hits[matched_t] >= self.min_hits)]
            for t in confirm:
                self._ids[t] = self._next_id
                self._next_id += 1
            det_ids[matched_d] = self._ids[matched_t]
        # unmatched tracks: coast (or end)
        unmatched = np.ones(n_tracks, bool)
        unmatched[matched_t] = False
        self._misses[unmatched] += 1
        # tentative tracks end at their first miss; confirmed ones after max_misses
        dead = unmatched & ((self._misses > self.max_misses) | (self._ids < 0))
        if dead.any():
            self.ended = [int(i) for i in self._ids[dead] if i >= 0]
            keep = ~dead
            self._x, self._v, self._t = self._x[keep], self._v[keep], self._t[keep]
            self._hits, self._misses = self._hits[keep], self._misses[keep]
            self._ids, self._score, self._roll = self._ids[keep], self._score[keep], self._roll[keep]
            if self.ended:
                log.debug("tracks ended ids=%s t=%.3f", self.ended, pts_time)
        # unmatched detections: new tracks
        new = np.ones(n_dets, bool)
        new[matched_d] = False
        if new.any():
            k = int(new.sum())
            ids = np.full(k, -1, np.int64)
            if self.min_hits <= 1:
                ids = np.arange(self._next_id, self._next_id + k, dtype=np.int64)
                self._next_id += k
            det_ids[new] = ids
            self._x = np.concatenate([self._x, _to_cxcywh(dets.xyxy[new])])
            self._v = np.concatenate([self._v, np.zeros((k, 4))])
            self._t = np.concatenate([self._t, np.full(k, pts_time)])
            self._hits = np.concatenate([self._hits, np.ones(k, np.int64)])
            self._misses = np.concatenate([self._misses, np.zeros(k, np.int64)])
            self._ids = np.concatenate([self._ids, ids])
            self._score = np.concatenate([self._score, dets.score[new]])
            self._roll = np.concatenate([self._roll, dets.roll_deg[new]])
        return Detections(dets.xyxy, dets.score, det_ids, dets.roll_deg)

    def refine(self, measured: Detections, pts_time: float) -> None:
        """Correct confirmed tracks with boxes measured between detections (``measured.track_id`` names each one's
        track), as a matched detection would (position, size, velocity, score). Other tracks are untouched: no
        misses counted, no tracks started or ended."""
        self.ended = []
        rows = [int(np.flatnonzero(self._ids == tid)[0]) for tid in measured.track_id if tid >= 0 and tid in self._ids]
        if not rows:
            return
        keep = np.array([tid >= 0 and tid in self._ids for tid in measured.track_id])
        idx = np.array(rows, np.intp)
        z = _to_cxcywh(measured.xyxy[keep])
        p = self._predicted(pts_time)[idx]
        r = z - p
        dt = pts_time - self._t[idx]
        fresh = (dt > 1e-6) & (dt <= self.max_velocity_gap_s)
        self._x[idx] = p + self.alpha * r
        self._v[idx] += np.where(fresh, self.beta / np.where(fresh, dt, 1.0), 0.0)[:, None] * r
        self._t[idx] = np.maximum(self._t[idx], pts_time)
        self._score[idx] = measured.score[keep]

    def end_all(self) -> list[int]:
        """End every track (end of stream); returns the confirmed ids that ended. Ids are not reused."""
        self.ended = self.track_ids
        keep = np.zeros(len(self), bool)
        self._x, self._v, self._t = self._x[keep], self._v[keep], self._t[keep]
        self._hits, self._misses = self._hits[keep], self._misses[keep]
        self._ids, self._score, self._roll = self._ids[keep], self._score[keep], self._roll[keep]
        return self.ended
