"""The emotion timeline of one stream as a PNG: emotion shares, dominant emotion, track lanes, smoothed coefficients.

Input is a list of events (frame events, and emotion aggregates when there are any), read from a topic or from
an ``expnet-stream run`` output file with :func:`load_events`. Panels, top to bottom:

1. stacked emotion shares over time (mean probabilities per window: the stream's tumbling aggregates when the
   events include them, else recomputed from the frame events with :class:`~.windows.WindowAggregator`);
2. a band of the dominant emotion per window, with the window's stability as a line;
3. one lane per face track showing when the track is present (tracks are assigned here, offline, with
   :class:`~expnet_stream.faces.tracker.FaceTracker` when the events carry no track ids);
4. raw vs One-Euro smoothed values of the first few coefficients of the longest track.

Without emotion probabilities in the events (no emotion head loaded) panels 1-2 say so and the title too.
Needs matplotlib (``pip install 'expnet-stream[plot]'``); imported lazily.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, ExpNetError, SchemaError
from ..events.aggregate_schema import STREAM_TRACK, EmotionAggregate
from ..events.schema import SUPPORTED_VERSIONS, FrameEvent, StreamSummary, pack_coeffs
from ..faces.detections import Detections
from ..faces.tracker import FaceTracker
from .settings import SmoothingSettings
from .smoothing import TrackSmoother, jitter
from .windows import WindowAggregator, WindowSpec

log = logging.getLogger(__name__)

TimelineEvent = FrameEvent | EmotionAggregate | StreamSummary

_MODELS: dict[str, type[BaseModel]] = {
    "frame": FrameEvent,
    "emotion_aggregate": EmotionAggregate,
    "stream_summary": StreamSummary,
}

_FACE_VECTORS = ("coeffs", "coeffs_smoothed")  # coefficient vectors of a face (float lists in JSON lines)

EMOTION_COLOURS = {
    "neutral": "#b0b0b0",
    "happy": "#f2c14e",
    "happiness": "#f2c14e",
    "sad": "#4e79a7",
    "sadness": "#4e79a7",
    "surprise": "#59a14f",
    "fear": "#b07aa1",
    "disgust": "#8c6d31",
    "anger": "#e15759",
    "contempt": "#ff9da7",
}


# ------------------------------------------------------------------------- reading
def _coeff_bytes(value: Any) -> Any:
    """Coefficients as written by ``to_jsonable``: a float list (faces) or base64 (other bytes)."""
    if isinstance(value, list):
        return pack_coeffs(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            return value
    return value


def event_from_obj(obj: Any) -> TimelineEvent | None:
    """Validate one decoded map (msgpack, or JSON from ``to_jsonable``); None for kinds the timeline ignores."""
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a map, got {type(obj).__name__}")
    if obj.get("v") not in SUPPORTED_VERSIONS:
        raise SchemaError(f"unknown schema version {obj.get('v')!r}")
    model = _MODELS.get(str(obj.get("type")))
    if model is None:
        return None
    data = dict(obj)
    if model is FrameEvent and isinstance(data.get("faces"), list):
        data["faces"] = [
            {**f, **{k: _coeff_bytes(f[k]) for k in _FACE_VECTORS if k in f}} if isinstance(f, dict) else f
            for f in data["faces"]
        ]
    if model is EmotionAggregate:
        for key in ("coeff_mean", "coeff_std"):
            data[key] = _coeff_bytes(data.get(key))
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise SchemaError(
            f"invalid {obj.get('type')} event: {exc.error_count()} error(s), {loc}: {first['msg']}"
        ) from exc
    if not isinstance(event, FrameEvent | EmotionAggregate | StreamSummary):  # pragma: no cover - by _MODELS
        raise SchemaError(f"unexpected event type {type(event).__name__}")
    return event


def load_events(path: str | Path) -> list[TimelineEvent]:
    """Events from a ``run`` output file: ``.jsonl`` (one JSON event a line) or ``.msgpack`` (concatenated).

    Lines or messages that do not validate raise :class:`SchemaError` naming where; other event kinds are skipped.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such file: {p}")
    out: list[TimelineEvent] = []
    if p.suffix == ".msgpack":
        with p.open("rb") as fh:
            unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=True)
            try:
                for i, obj in enumerate(unpacker):
                    ev = _located(obj, f"{p} message {i}")
                    if ev is not None:
                        out.append(ev)
            except (msgpack.FormatError, msgpack.StackError, ValueError) as exc:
                raise SchemaError(f"{p}: not concatenated msgpack events: {exc}") from exc
        return out
    with p.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{p}:{lineno}: not JSON: {exc}") from exc
            ev = _located(obj, f"{p}:{lineno}")
            if ev is not None:
                out.append(ev)
    return out


def _located(obj: Any, where: str) -> TimelineEvent | None:
    try:
        return event_from_obj(obj)
    except SchemaError as exc:
        raise SchemaError(f"{where}: {exc}") from exc


# ------------------------------------------------------------------------- data
@dataclass
class TimelineSummary:
    """What the plot shows, as numbers (also for tests and the CLI's one-line report)."""

    stream_id: str
    frames: int
    faces: int
    tracks: list[int]
    tracks_assigned_offline: bool
    has_emotions: bool
    windows: int
    windows_from: str  # "aggregates" or "frames"
    main_track: int | None
    jitter_raw: float | None
    jitter_smoothed: float | None
    duration_s: float
    notes: list[str] = field(default_factory=list)


@dataclass
class _Track:
    times: list[float] = field(default_factory=list)
    coeffs: list[npt.NDArray[np.float32]] = field(default_factory=list)
    published: list[npt.NDArray[np.float32] | None] = field(default_factory=list)  # smoothed by the worker


def _frames_of(events: Iterable[TimelineEvent], stream_id: str) -> list[FrameEvent]:
    seen: set[str] = set()
    frames = []
    for ev in events:
        if isinstance(ev, FrameEvent) and ev.stream_id == stream_id and ev.event_id not in seen:
            seen.add(ev.event_id)
            frames.append(ev)
    frames.sort(key=lambda e: (e.pts_time, e.frame_seq))
    return frames


def _track_ids(frames: Sequence[FrameEvent]) -> tuple[list[npt.NDArray[np.int64]], bool]:
    """Track id per face per frame; assigned offline when the events carry none."""
    given = [np.array([f.track_id for f in ev.faces], np.int64) for ev in frames]
    if any((g >= 0).any() for g in given) or not any(g.size for g in given):
        return given, False
    tracker = FaceTracker()
    out = []
    for ev in frames:
        boxes = np.array([f.box for f in ev.faces], np.float32).reshape(-1, 4)
        scores = np.array([f.score for f in ev.faces], np.float32)
        out.append(tracker.update(Detections(boxes, scores), ev.pts_time).track_id)
    return out, True


def _auto_bin(duration: float) -> float:
    """A window length giving about 40 windows, rounded to 1, 2 or 5 times a power of ten (at least 0.1 s)."""
    target = max(duration / 40.0, 0.1)
    exp = math.floor(math.log10(target))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= target:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))  # pragma: no cover


def _labels_of(frames: Sequence[FrameEvent]) -> list[str]:
    labels: list[str] = []
    for ev in frames:
        for f in ev.faces:
            for k in f.emotions or {}:
                if k not in labels:
                    labels.append(k)
    return labels


def _recompute(
    frames: Sequence[FrameEvent], ids: Sequence[npt.NDArray[np.int64]], labels: list[str], bin_s: float
) -> list[EmotionAggregate]:
    model_id = frames[0].model_id
    agg = WindowAggregator(
        [WindowSpec.tumbling(bin_s)], model_id, labels=labels, per_track=False, allowed_lateness_s=0.0
    )
    sid = frames[0].stream_id
    out: list[EmotionAggregate] = []
    for ev, tid in zip(frames, ids, strict=True):
        coeffs = np.array([f.coefficients for f in ev.faces], np.float32).reshape(-1, 29)
        emo = None
        if labels and ev.faces and all(f.emotions for f in ev.faces):
            emo = np.array([[(f.emotions or {}).get(k, 0.0) for k in labels] for f in ev.faces])
        out += agg.on_frame(sid, ev.pts_time, tid, coeffs, emo)
    return out + agg.flush(sid)


# ------------------------------------------------------------------------- plot
def plot_timeline(
    events: Sequence[TimelineEvent],
    stream_id: str | None,
    out: str | Path,
    *,
    bin_s: float | None = None,
    n_coeffs: int = 3,
    smoothing: SmoothingSettings | None = None,
    dpi: int = 110,
) -> TimelineSummary:
    """Write the timeline PNG of ``stream_id`` (None: the only stream in ``events``) to ``out``."""
    try:
        from matplotlib.colors import to_rgba
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ExpNetError("the timeline plot needs matplotlib: pip install 'expnet-stream[plot]'") from exc

    streams = sorted({e.stream_id for e in events})
    if stream_id is None:
        if len(streams) != 1:
            raise ConfigError(f"pick a stream with --stream; the events hold {streams or 'none'}")
        stream_id = streams[0]
    frames = _frames_of(events, stream_id)
    if not frames:
        raise ConfigError(f"no frame events for stream {stream_id!r}; streams in the events: {streams}")
    ids, offline = _track_ids(frames)
    labels = _labels_of(frames)
    has_emotions = bool(labels)
    t = np.array([e.pts_time for e in frames])
    t0, t1 = float(t[0]), float(t[-1])
    duration = max(t1 - t0, 1e-3)
    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.04
    notes: list[str] = []

    # windows: the stream's tumbling aggregates (smallest size) if present, else recomputed from the frames
    aggs = [
        e
        for e in events
        if isinstance(e, EmotionAggregate)
        and e.stream_id == stream_id
        and e.track_id == STREAM_TRACK
        and e.window_kind == "tumbling"
    ]
    if aggs and bin_s is None:
        size = min(a.window_end - a.window_start for a in aggs)
        uniq = {a.window_start: a for a in aggs if abs((a.window_end - a.window_start) - size) < 1e-9}
        windows = [uniq[k] for k in sorted(uniq)]
        windows_from = "aggregates"
        has_emotions = has_emotions or any(a.emotions for a in windows)
        if not labels:
            labels = [k for a in windows for k in (a.emotions or {})]
            labels = list(dict.fromkeys(labels))
    else:
        size = bin_s or _auto_bin(duration)
        windows = _recompute(frames, ids, labels, size)
        windows_from = "frames"

    # tracks
    tracks: dict[int, _Track] = {}
    for ev, tid in zip(frames, ids, strict=True):
        for f, k in zip(ev.faces, tid, strict=True):
            tr = tracks.setdefault(int(k), _Track())
            tr.times.append(ev.pts_time)
            tr.coeffs.append(f.coefficients)
            tr.published.append(getattr(f, "smoothed_coefficients", None))  # Face.coeffs_smoothed, when published
    track_ids = sorted(k for k in tracks if k >= 0)
    main = max(track_ids, key=lambda k: len(tracks[k].times)) if track_ids else None
    jit_raw = jit_smooth = None
    raw = smooth = np.zeros((0, 29), np.float32)
    mt = np.zeros(0)
    smooth_label = (smoothing or SmoothingSettings()).kind + " smoothed (here)"
    if main is not None:
        mt = np.array(tracks[main].times)
        raw = np.array(tracks[main].coeffs, np.float32)
        published = tracks[main].published
        if smoothing is None and all(p is not None for p in published):
            smooth = np.array(published, np.float32)
            smooth_label = "smoothed (as published)"
        else:
            s = smoothing or SmoothingSettings()
            sm = TrackSmoother(
                s.kind,
                min_cutoff_hz=s.min_cutoff_hz,
                beta=s.beta,
                d_cutoff_hz=s.d_cutoff_hz,
                half_life_s=s.half_life_s,
            )
            smooth = np.array([sm.update(np.array([main]), c[None, :], tt)[0] for tt, c in zip(mt, raw, strict=True)])
        jit_raw, jit_smooth = jitter(raw), jitter(smooth)

    # ---- figure
    fig = Figure(figsize=(12, 9), dpi=dpi, layout="constrained")
    share_h = 3.0 if has_emotions else 0.8
    axes = fig.subplots(4, 1, sharex=True, height_ratios=[share_h, 0.8, max(0.7, 0.35 * len(tracks)), 2.5])
    ax_share, ax_dom, ax_lanes, ax_coef = axes
    palette = [EMOTION_COLOURS.get(k, f"C{i % 10}") for i, k in enumerate(labels)]
    starts = np.array([w.window_start for w in windows])
    ends = np.array([w.window_end for w in windows])

    if has_emotions and labels:
        shares = np.array([[(w.emotions or {}).get(k, np.nan) for k in labels] for w in windows])
        edges = np.repeat(np.column_stack([starts, ends]).ravel()[None, :], 1, axis=0)[0]
        stacked = np.repeat(np.nan_to_num(shares), 2, axis=0)
        ax_share.stackplot(edges, stacked.T, labels=labels, colors=palette, alpha=0.9)
        ax_share.set_ylim(0, 1)
        ax_share.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        for w in windows:
            if w.dominant_emotion is not None:
                colour = EMOTION_COLOURS.get(w.dominant_emotion, palette[labels.index(w.dominant_emotion)])
                ax_dom.axvspan(w.window_start, w.window_end, ymin=0, ymax=1, color=colour, alpha=0.9, lw=0)
    else:
        ax_share.text(
            0.5,
            0.5,
            "no emotion probabilities in these events (no emotion head loaded)",
            ha="center",
            va="center",
            transform=ax_share.transAxes,
            color="0.35",
        )
        ax_dom.text(0.01, 0.9, "no dominant emotion", ha="left", va="top", transform=ax_dom.transAxes, fontsize=8)
        ax_share.set_ylim(0, 1)
        notes.append("no emotions in the events")
    ax_share.set_ylabel("emotion share")
    ax_share.set_title(f"emotion shares per {size:g} s window (from {windows_from})", fontsize=9, loc="left")
    stab = np.array([np.nan if w.stability is None else w.stability for w in windows])
    if np.isfinite(stab).any():
        mids = (starts + ends) / 2
        ax_dom.plot(mids, stab, color="black", lw=1, marker=".", ms=3, label="stability")
        ax_dom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax_dom.set_ylim(0, 1.05)
    ax_dom.set_yticks([0, 1])
    ax_dom.set_ylabel("dominant\n/ stability", fontsize=8)

    # lanes
    lane_keys = sorted(tracks)
    for row, k in enumerate(lane_keys):
        times = np.array(tracks[k].times)
        breaks = np.nonzero(np.diff(times) > 1.5 * step)[0]
        seg_starts = np.concatenate([[0], breaks + 1])
        seg_ends = np.concatenate([breaks, [len(times) - 1]])
        colour = "0.6" if k < 0 else f"C{k % 10}"
        spans = [(times[a], max(times[b] - times[a], 0) + step) for a, b in zip(seg_starts, seg_ends, strict=True)]
        ax_lanes.broken_barh(spans, (row - 0.4, 0.8), facecolors=to_rgba(colour, 0.8))
    ax_lanes.set_yticks(range(len(lane_keys)), [("untracked" if k < 0 else f"track {k}") for k in lane_keys])
    ax_lanes.set_ylim(-0.6, max(len(lane_keys), 1) - 0.4)
    ax_lanes.invert_yaxis()
    ax_lanes.set_title(
        "face presence per track" + (" (tracks assigned offline: events carry no track ids)" if offline else ""),
        fontsize=9,
        loc="left",
    )
    if not tracks:
        ax_lanes.text(0.5, 0.5, "no faces", ha="center", va="center", transform=ax_lanes.transAxes)

    # coefficients
    if main is not None:
        for i in range(min(n_coeffs, raw.shape[1])):
            ax_coef.plot(mt, raw[:, i], color=f"C{i}", alpha=0.35, lw=1)
            ax_coef.plot(mt, smooth[:, i], color=f"C{i}", lw=1.6, label=f"c{i}")
        handles = [*ax_coef.get_legend_handles_labels()[0], Patch(color="0.6", alpha=0.35, label="raw (faint)")]
        ax_coef.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        ax_coef.set_title(
            f"track {main}: raw vs {smooth_label} coefficients; "
            f"jitter (mean |frame-to-frame change|, all 29) raw {jit_raw:.4f} -> smoothed {jit_smooth:.4f}",
            fontsize=9,
            loc="left",
        )
    else:
        ax_coef.text(0.5, 0.5, "no tracked faces", ha="center", va="center", transform=ax_coef.transAxes)
    ax_coef.set_ylabel("coefficient")
    ax_coef.set_xlabel("stream time (s)")
    ax_coef.set_xlim(t0, t1 + step)

    model_id = frames[0].model_id
    trained = all(e.model_trained for e in frames)
    title = f"{stream_id}: {len(frames)} frames, {sum(len(e.faces) for e in frames)} faces, {len(track_ids)} tracks"
    sub = [f"model {model_id}"]
    if not trained:
        sub.append("UNTRAINED weights: coefficients are meaningless")
        notes.append("untrained model")
    if not has_emotions:
        sub.append("no emotions in the events: the emotion head is not loaded")
    fig.suptitle("\n".join([title, *sub]), fontsize=11)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    log.info("timeline stream=%s frames=%d windows=%d out=%s", stream_id, len(frames), len(windows), out_path)
    return TimelineSummary(
        stream_id=stream_id,
        frames=len(frames),
        faces=sum(len(e.faces) for e in frames),
        tracks=track_ids,
        tracks_assigned_offline=offline,
        has_emotions=has_emotions,
        windows=len(windows),
        windows_from=windows_from,
        main_track=main,
        jitter_raw=jit_raw,
        jitter_smoothed=jit_smooth,
        duration_s=duration,
        notes=notes,
    )
