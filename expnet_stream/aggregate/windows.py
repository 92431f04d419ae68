"""Event-time window aggregates of expressions, per stream and per face track.

Time is the frames' ``pts_time`` (stream time), never the wall clock. Window arithmetic is done in integer
microseconds, so boundaries are exact: a window of ``size`` starting at ``k * step`` holds the frames with
``k * step <= pts_time < k * step + size``. Tumbling windows have ``step == size``; sliding windows overlap and
a frame counts in every window that holds it. Windows start no earlier than the stream's first frame less the
allowed lateness (and not before 0 s when that frame is at or after 0 s), rounded down to a step: a stream that
starts at 0 s gets sliding windows [0, 5), [1, 6), ..., not warm-up windows [-4, 1), [-3, 2), ... Since a frame
that is not late is at most the lateness older than the first frame, every such frame lies in at least one
window and every window holds all of its frames that were not late.

Late and out-of-order frames: each stream has a watermark ``max pts_time seen - allowed_lateness_s``. A frame
older than the watermark is *late*: it is counted in the stream's late tally (``late_frames`` of every later
aggregate, cumulative) and added to no window. Frames within the lateness are added normally, in any order. A
window closes (``closed_by="watermark"``) once the watermark reaches its end; since a frame that is not late is
never older than the watermark, no closed window can receive a frame, and no window is emitted twice.
:meth:`WindowAggregator.flush` closes every open window of a stream (``"end_of_stream"`` or ``"revoke"``) and
forgets the stream; frames that arrive after that start a fresh state.

What is counted: a stream window (``track_id == -1``) counts every frame given to :meth:`on_frame` (faceless
frames too) and every face; a track window counts the frames and faces of that track. Coefficient mean and
population std are over the faces counted (zeros when there are none). Emotions: mean probability over faces
with probabilities (``None`` when no face had any); the dominant emotion is the most frequent per-face top
emotion (ties: higher mean probability) and ``dominant_share`` the share of those faces whose top emotion it
is. Stability per track is ``1 - min(1, MSSD / (2 * var))`` over that track's coefficients in the window (MSSD:
mean squared frame-to-frame change, summed over the 29 dimensions, in arrival order; var: summed variance;
a constant track has stability 1, white noise about 0); a stream window averages its tracks weighted by their
frame-to-frame steps; ``None`` with fewer than 3 faces of any track.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError
from ..events.aggregate_schema import STREAM_TRACK, ClosedBy, EmotionAggregate, aggregate_event_id
from ..events.schema import NUM_COEFFS, pack_coeffs

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
_US = 1_000_000


@dataclass(frozen=True)
class WindowSpec:
    """One window definition: ``kind``, ``size_s`` and ``step_s`` (``step_s == size_s`` for tumbling)."""

    kind: Literal["tumbling", "sliding"]
    size_s: float
    step_s: float

    def __post_init__(self) -> None:
        if self.kind not in ("tumbling", "sliding"):
            raise ConfigError(f"window kind must be 'tumbling' or 'sliding', got {self.kind!r}")
        if not (self.size_s > 0 and self.step_s > 0 and math.isfinite(self.size_s)):
            raise ConfigError(f"window size_s and step_s must be > 0, got {self.size_s}, {self.step_s}")
        if self.kind == "tumbling" and abs(self.step_s - self.size_s) > 1e-9:
            raise ConfigError(f"a tumbling window has step_s == size_s, got {self.size_s}, {self.step_s}")
        if self.step_s > self.size_s + 1e-9:
            raise ConfigError(f"a sliding window needs step_s <= size_s, got {self.size_s}, {self.step_s}")
        if round(self.size_s * _US) < 1 or round(self.step_s * _US) < 1:
            raise ConfigError("window size_s and step_s must be at least one microsecond")

    @classmethod
    def tumbling(cls, size_s: float) -> WindowSpec:
        return cls("tumbling", size_s, size_s)

    @classmethod
    def sliding(cls, size_s: float, step_s: float) -> WindowSpec:
        return cls("sliding", size_s, step_s)

    @property
    def size_us(self) -> int:
        return round(self.size_s * _US)

    @property
    def step_us(self) -> int:
        return round(self.step_s * _US)

    def indices(self, t_us: int) -> range:
        """Indices ``k`` of the windows holding time ``t_us``: ``k * step <= t < k * step + size``."""
        kmax = t_us // self.step_us
        kmin = (t_us - self.size_us) // self.step_us + 1
        return range(kmin, kmax + 1)


class _TrackStat:
    """Per-track moments and frame-to-frame steps inside one window (for stability)."""

    __slots__ = ("n", "nd", "s", "sq", "ssd")

    def __init__(self) -> None:
        self.n = 0
        self.nd = 0
        self.s = np.zeros(NUM_COEFFS)
        self.sq = np.zeros(NUM_COEFFS)
        self.ssd = 0.0

    def stability(self) -> float | None:
        if self.n < 3 or self.nd == 0:
            return None
        mean = self.s / self.n
        var = float(np.clip(self.sq / self.n - mean * mean, 0.0, None).sum())
        mssd = self.ssd / self.nd
        if var <= 1e-12:
            return 1.0 if mssd <= 1e-12 else 0.0
        return float(np.clip(1.0 - mssd / (2.0 * var), 0.0, 1.0))


@dataclass
class _Window:
    spec_index: int
    track_id: int
    k: int
    first_us: int
    last_us: int
    frames: int = 0
    faces: int = 0
    s: F64 = field(default_factory=lambda: np.zeros(NUM_COEFFS))
    sq: F64 = field(default_factory=lambda: np.zeros(NUM_COEFFS))
    emo_sum: F64 | None = None
    emo_n: int = 0
    top: npt.NDArray[np.int64] | None = None
    tracks: dict[int, _TrackStat] = field(default_factory=dict)


@dataclass
class _Stream:
    max_us: int | None = None
    late: int = 0
    open: dict[tuple[int, int, int], _Window] = field(default_factory=dict)
    next_close_us: float = math.inf
    last: dict[int, F64] = field(default_factory=dict)  # track -> its latest coefficients (arrival order)
    origin_us: int = 0  # no window starts before it (rounded down to a step); see the module docstring
    resumed: bool = False  # taken over mid-stream: windows starting before the first frame seen are partial
    first_us: int | None = None


class WindowAggregator:
    """Tumbling and sliding event-time windows for many streams. Single-threaded.

    Args:
        specs: the windows to compute.
        model_id: copied into every aggregate (and its id).
        labels: emotion labels, in the column order of the ``emotions`` arrays given to :meth:`on_frame`.
        per_track: also aggregate each face track (besides the whole stream).
        allowed_lateness_s: how far behind the newest frame a frame may be and still count.
        clock: unix time source for ``publish_time``.
    """

    def __init__(
        self,
        specs: Sequence[WindowSpec],
        model_id: str,
        *,
        labels: Sequence[str] = (),
        per_track: bool = True,
        allowed_lateness_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= allowed_lateness_s < 1e9:
            raise ConfigError(f"allowed_lateness_s must be >= 0 and finite, got {allowed_lateness_s}")
        self.specs = list(specs)
        self.model_id = model_id
        self.labels = list(labels)
        self.per_track = per_track
        self.lateness_us = round(allowed_lateness_s * _US)
        self.clock = clock
        self._streams: dict[str, _Stream] = {}

    # ---------------------------------------------------------------- queries
    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    def open_windows(self, stream_id: str) -> int:
        st = self._streams.get(stream_id)
        return 0 if st is None else len(st.open)

    def late_frames(self, stream_id: str) -> int:
        st = self._streams.get(stream_id)
        return 0 if st is None else st.late

    def forget_tracks(self, stream_id: str, track_ids: Iterable[int]) -> None:
        """Drop the per-track memory (last coefficients) of ended tracks; their open windows still close."""
        st = self._streams.get(stream_id)
        if st is not None:
            for tid in track_ids:
                st.last.pop(int(tid), None)

    def mark_resumed(self, stream_id: str) -> None:
        """The stream is picked up mid-way (a takeover, or a stream whose start never arrived): windows that began
        before its first frame seen here are published with ``partial=True`` and their ``coverage``."""
        st = self._streams.get(stream_id)
        if st is None:
            st = self._streams[stream_id] = _Stream()
        if st.max_us is None:
            st.resumed = True

    def rename_tracks(self, stream_id: str, mapping: dict[int, int]) -> None:
        """Rename track ids (``old -> new``) in the stream's open windows and track memory."""
        st = self._streams.get(stream_id)
        if st is None or not mapping:
            return
        st.last = {mapping.get(t, t): v for t, v in st.last.items()}
        opened: dict[tuple[int, int, int], _Window] = {}
        for (si, tid, k), w in st.open.items():
            new = mapping.get(tid, tid) if tid != STREAM_TRACK else tid
            w.track_id = new
            w.tracks = {mapping.get(t, t): ts for t, ts in w.tracks.items()}
            opened[(si, new, k)] = w
        if len(opened) != len(st.open):
            raise ValueError(f"renaming {mapping} merges track windows")
        st.open = opened

    def watermark(self, stream_id: str) -> float | None:
        """The stream's watermark in seconds (None before its first frame)."""
        st = self._streams.get(stream_id)
        if st is None or st.max_us is None:
            return None
        return (st.max_us - self.lateness_us) / _US

    # ---------------------------------------------------------------- input
    def on_frame(
        self,
        stream_id: str,
        pts_time: float,
        track_ids: npt.ArrayLike,
        coeffs: npt.ArrayLike,
        emotions: npt.ArrayLike | None = None,
    ) -> list[EmotionAggregate]:
        """Count one processed frame with its faces; returns the aggregates of windows it closed.

        Args:
            track_ids: ``(N,)`` track id per face (``-1``: counted in stream windows only).
            coeffs: ``(N, 29)`` coefficients (raw, not smoothed: a window mean is already a smoother).
            emotions: ``(N, len(labels))`` probabilities, or None when the frame has none.
        """
        if not math.isfinite(pts_time):
            raise ValueError(f"pts_time must be finite, got {pts_time}")
        c = np.asarray(coeffs, np.float64).reshape(-1, NUM_COEFFS)
        ids = np.asarray(track_ids, np.int64).reshape(-1)
        if ids.shape[0] != c.shape[0]:
            raise ValueError(f"track_ids must have shape ({c.shape[0]},), got {ids.shape}")
        emo: F64 | None = None
        if emotions is not None and c.shape[0] > 0:
            emo = np.asarray(emotions, np.float64).reshape(c.shape[0], -1)
            if emo.shape[1] != len(self.labels):
                raise ValueError(f"emotions must have shape ({c.shape[0]}, {len(self.labels)}), got {emo.shape}")
        st = self._streams.get(stream_id)
        if st is None:
            st = self._streams[stream_id] = _Stream()
        t_us = round(pts_time * _US)
        if st.max_us is not None and t_us < st.max_us - self.lateness_us:
            st.late += 1
            log.debug("stream=%s late frame t=%.3f watermark=%.3f", stream_id, pts_time, self.watermark(stream_id))
            return []
        if st.max_us is None:
            st.origin_us = t_us - self.lateness_us if t_us < 0 else max(0, t_us - self.lateness_us)
            if st.resumed:  # every window holding the first frame exists; those begun earlier are partial
                st.origin_us = -(2**62)
            st.first_us = t_us
        st.max_us = t_us if st.max_us is None else max(st.max_us, t_us)
        self._add(st, t_us, ids, c, emo)
        return self._close_due(stream_id, st)

    def _window(self, st: _Stream, spec_index: int, track_id: int, k: int, t_us: int) -> _Window:
        key = (spec_index, track_id, k)
        w = st.open.get(key)
        if w is None:
            w = st.open[key] = _Window(spec_index, track_id, k, t_us, t_us)
            spec = self.specs[spec_index]
            st.next_close_us = min(st.next_close_us, k * spec.step_us + spec.size_us)
        return w

    def _add(self, st: _Stream, t_us: int, ids: npt.NDArray[np.int64], c: F64, emo: F64 | None) -> None:
        n = c.shape[0]
        sq = c * c
        top = np.argmax(emo, axis=1) if emo is not None else None
        # frame-to-frame steps per tracked face, against the track's previous face (arrival order)
        tracked = [(int(ids[j]), int(j)) for j in np.nonzero(ids >= 0)[0]]
        steps: dict[int, float] = {}
        for tid, i in tracked:
            prev = st.last.get(tid)
            if prev is not None:
                steps[tid] = float(((c[i] - prev) ** 2).sum())
            st.last[tid] = c[i].copy()
        frame_s, frame_sq = c.sum(axis=0), sq.sum(axis=0)
        for si, spec in enumerate(self.specs):
            ks = spec.indices(t_us)
            first_k = min(st.origin_us // spec.step_us, ks[-1])  # (a frame before a clamped origin: its own window)
            for k in ks:
                if k < first_k:
                    continue
                w = self._window(st, si, STREAM_TRACK, k, t_us)
                self._count(w, t_us, n, frame_s, frame_sq, emo, top)
                for tid, i in tracked:
                    _track_stat(w, tid, c[i], sq[i], steps.get(tid))
                if not self.per_track:
                    continue
                for tid, i in tracked:
                    tw = self._window(st, si, tid, k, t_us)
                    e1 = emo[i : i + 1] if emo is not None else None
                    t1 = top[i : i + 1] if top is not None else None
                    self._count(tw, t_us, 1, c[i], sq[i], e1, t1)
                    _track_stat(tw, tid, c[i], sq[i], steps.get(tid))

    def _count(
        self,
        w: _Window,
        t_us: int,
        faces: int,
        s: F64,
        sq: F64,
        emo: F64 | None,
        top: npt.NDArray[np.intp] | None,
    ) -> None:
        w.frames += 1
        w.faces += faces
        w.first_us = min(w.first_us, t_us)
        w.last_us = max(w.last_us, t_us)
        if faces:
            w.s += s
            w.sq += sq
        if emo is not None and top is not None and emo.shape[0]:
            if w.emo_sum is None or w.top is None:
                w.emo_sum = np.zeros(len(self.labels))
                w.top = np.zeros(len(self.labels), np.int64)
            w.emo_sum += emo.sum(axis=0)
            w.emo_n += emo.shape[0]
            w.top += np.bincount(top, minlength=len(self.labels))

    # ---------------------------------------------------------------- closing
    def _close_due(self, stream_id: str, st: _Stream) -> list[EmotionAggregate]:
        if st.max_us is None:
            return []
        wm = st.max_us - self.lateness_us
        if wm < st.next_close_us:
            return []
        due = [key for key, w in st.open.items() if self._end_us(w) <= wm]
        out = [self._emit(stream_id, st, st.open.pop(key), "watermark") for key in due]
        st.next_close_us = min((self._end_us(w) for w in st.open.values()), default=math.inf)
        return _ordered(out)

    def _end_us(self, w: _Window) -> int:
        spec = self.specs[w.spec_index]
        return w.k * spec.step_us + spec.size_us

    def flush(self, stream_id: str, reason: ClosedBy = "end_of_stream") -> list[EmotionAggregate]:
        """Close every open window of ``stream_id`` and forget the stream (end of stream, revoke)."""
        st = self._streams.pop(stream_id, None)
        if st is None:
            return []
        out = [self._emit(stream_id, st, w, reason) for w in st.open.values()]
        log.debug("stream=%s flushed windows=%d reason=%s", stream_id, len(out), reason)
        return _ordered(out)

    def flush_all(self, reason: ClosedBy = "revoke") -> list[EmotionAggregate]:
        """Close every open window of every stream."""
        return self.flush_streams(list(self._streams), reason)

    def flush_streams(self, stream_ids: Iterable[str], reason: ClosedBy = "revoke") -> list[EmotionAggregate]:
        out: list[EmotionAggregate] = []
        for sid in stream_ids:
            out.extend(self.flush(sid, reason))
        return out

    def _emit(self, stream_id: str, st: _Stream, w: _Window, reason: ClosedBy) -> EmotionAggregate:
        spec = self.specs[w.spec_index]
        start = w.k * spec.step_us / _US
        end = (w.k * spec.step_us + spec.size_us) / _US
        first = w.first_us / _US
        partial, coverage = False, 1.0
        start_us = w.k * spec.step_us
        if st.resumed and st.first_us is not None and start_us < st.first_us - self.lateness_us:
            partial = True
            coverage = min(1.0, max(0.0, (start_us + spec.size_us - st.first_us) / spec.size_us))
        if w.faces:
            mean = w.s / w.faces
            std = np.sqrt(np.clip(w.sq / w.faces - mean * mean, 0.0, None))
        else:
            mean = std = np.zeros(NUM_COEFFS)
        emotions: dict[str, float] | None = None
        dominant: str | None = None
        share: float | None = None
        if w.emo_sum is not None and w.top is not None and w.emo_n:
            probs = w.emo_sum / w.emo_n
            emotions = {label: float(p) for label, p in zip(self.labels, probs, strict=True)}
            best = np.lexsort((-probs, -w.top))[0]  # most frequent top emotion, then higher mean probability
            dominant = self.labels[int(best)]
            share = float(w.top[best] / w.emo_n)
        return EmotionAggregate(
            event_id=aggregate_event_id(
                stream_id, w.track_id, spec.kind, spec.size_s, spec.step_s, start, first, self.model_id
            ),
            stream_id=stream_id,
            track_id=w.track_id,
            window_kind=spec.kind,
            window_start=start,
            window_end=end,
            window_step=spec.step_s,
            first_time=first,
            last_time=w.last_us / _US,
            frames=w.frames,
            faces=w.faces,
            coeff_mean=pack_coeffs(mean),
            coeff_std=pack_coeffs(std),
            emotions=emotions,
            dominant_emotion=dominant,
            dominant_share=share,
            stability=_stability(w),
            late_frames=st.late,
            model_id=self.model_id,
            publish_time=self.clock(),
            closed_by=reason,
            partial=partial,
            coverage=round(coverage, 6),
        )


def _track_stat(w: _Window, tid: int, c: F64, sq: F64, step: float | None) -> None:
    ts = w.tracks.get(tid)
    if ts is None:
        ts = w.tracks[tid] = _TrackStat()
    elif step is not None:  # only steps between two faces of this window
        ts.ssd += step
        ts.nd += 1
    ts.n += 1
    ts.s += c
    ts.sq += sq


def _stability(w: _Window) -> float | None:
    num = 0.0
    den = 0
    for ts in w.tracks.values():
        s = ts.stability()
        if s is not None:
            num += s * ts.nd
            den += ts.nd
    return num / den if den else None


def _ordered(aggs: list[EmotionAggregate]) -> list[EmotionAggregate]:
    return sorted(aggs, key=lambda a: (a.window_end, a.window_start, a.window_kind, a.window_step, a.track_id))
