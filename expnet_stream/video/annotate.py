"""An annotated copy of a video: each face's box, track id, dominant emotion and emotion bars (and optionally its 3D
expression mesh), drawn (:mod:`.draw`) from the stream's :class:`~expnet_stream.events.schema.FrameEvent` s.

Frame events are matched to the decoded frames by ``pts`` (by ``frame_seq`` when the events carry no pts). A frame
the worker sampled out (``sampling.fps``) shows the faces of the most recent processed frame for up to ``hold_s``
seconds of stream time (boxes drawn thinner), then none. Every decoded frame is written, annotated or not, re-encoded
with libx264 (yuv420p) at the input's time base and pts; frames with nothing to draw are passed to the encoder as
decoded. Audio is not copied.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from ..errors import ConfigError, DecodeError, ModelError
from ..events.schema import FrameEvent
from ..fileio import staged_path
from .decode import to_bgr
from .draw import MeshRenderer, draw_faces, mesh_size

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HOLD_S",
    "AnnotateStats",
    "VideoInfo",
    "annotate_video",
    "check_output",
    "probe_video",
    "progress_bar",
]

DEFAULT_HOLD_S = 0.5
"""How long (stream seconds) a sampled-out frame shows the faces of the last processed frame."""


@dataclass(frozen=True)
class VideoInfo:
    """The first video stream of a file."""

    width: int
    height: int
    frames: int | None  # from the container's index; None when it does not say
    time_base: Fraction
    rate: Fraction


@dataclass(frozen=True)
class AnnotateStats:
    """What :func:`annotate_video` wrote."""

    out_path: Path
    frames_written: int
    frames_with_events: int  # decoded frames matched to a frame event
    frames_held: int  # sampled-out frames drawn with the faces of the previous processed frame
    frames_with_faces: int  # frames with at least one face drawn
    faces_drawn: int
    meshes_rendered: int
    events: int
    events_unmatched: int  # events whose pts is no decoded frame's
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.frames_written / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------------------- video
def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame count, time base and rate of the first video stream; :class:`ExpNetError` subclasses when the
    file is missing or no video PyAV can open."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"input video {p} does not exist (or is not a file)")
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise DecodeError(f"{p} has no video stream")
            vs = container.streams.video[0]
            rate = vs.average_rate or vs.guessed_rate or Fraction(25)
            tb = vs.time_base or Fraction(1, 90000)
            return VideoInfo(vs.codec_context.width, vs.codec_context.height, vs.frames or None, tb, Fraction(rate))
    except (av.error.FFmpegError, OSError) as exc:
        raise DecodeError(f"cannot read video {p}: {exc}") from exc


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Any]:
    """A transient rich progress bar on stderr; yields ``advance(n=1)`` (a no-op when not ``enabled``)."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.update(task, advance=n)


class _EventIndex:
    """Frame events by pts (or frame_seq when they carry none), with the hold rule for sampled-out frames."""

    def __init__(self, events: Iterable[FrameEvent], hold_s: float) -> None:
        self.by_pts: dict[int, FrameEvent] = {}
        self.by_seq: dict[int, FrameEvent] = {}
        streams: set[str] = set()
        for ev in events:
            if not isinstance(ev, FrameEvent):
                continue
            streams.add(ev.stream_id)
            if ev.pts is not None:
                self.by_pts[ev.pts] = ev  # a later event for the same frame (reprocessed) wins
            self.by_seq[ev.frame_seq] = ev
        if len(streams) > 1:
            raise ConfigError(f"the events are of several streams {sorted(streams)}: give those of one stream")
        self.count = len(self.by_seq)
        self.hold_s = hold_s
        self.matched: set[int] = set()
        self._last: FrameEvent | None = None

    def lookup(self, pts: int | None, index: int, pts_time: float) -> tuple[FrameEvent | None, bool]:
        """``(event, held)`` for the decoded frame ``index`` of ``pts``: its own event, else the last processed
        frame's within ``hold_s`` (``held`` True), else None."""
        ev = self.by_pts.get(pts) if pts is not None and self.by_pts else self.by_seq.get(index)
        if ev is not None:
            self.matched.add(ev.frame_seq)
            self._last = ev
            return ev, False
        last = self._last
        if last is not None and 0.0 <= pts_time - last.pts_time <= self.hold_s + 1e-6:
            return last, True
        return None, False


def check_output(out_path: str | Path) -> Path:
    """Create ``out_path``'s folder and check that FFmpeg can write a container of its suffix there (so a bad
    ``--out`` fails before the pipeline runs); :class:`ConfigError` otherwise."""
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder of --out {out}: {exc}") from exc
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"cannot write --out {out}: its folder is not writable")
    try:
        av.open(str(out), "w").close()  # guesses the container from the suffix; writes nothing yet
    except (ValueError, av.error.FFmpegError) as exc:
        raise ConfigError(
            f"--out {out}: FFmpeg has no container for {out.suffix!r} ({exc}); use .mp4, .mkv or .mov"
        ) from exc
    return out


def _even(n: int) -> int:
    return n - n % 2


def annotate_video(
    video_path: str | Path,
    events: Iterable[FrameEvent],
    out_path: str | Path,
    *,
    mesh: bool = False,
    progress: bool = True,
    hold_s: float = DEFAULT_HOLD_S,
    crf: int = 20,
    preset: str = "veryfast",
) -> AnnotateStats:
    """Write ``out_path``: every decoded frame of ``video_path``, with the faces of its frame event drawn
    (:func:`draw_faces`), encoded with libx264 yuv420p at the input's time base and pts.

    ``events`` are one stream's frame events (other event types are ignored); a frame without its own event shows the
    last processed frame's faces for ``hold_s`` stream seconds. ``mesh`` also draws each face's expression mesh
    (needs a trained model's basis; :class:`ModelError` otherwise). The file is written next to ``out_path`` and
    renamed when complete. Raises :class:`ConfigError` when the events do not fit the video (another size, no pts in
    common) and :class:`DecodeError` when the video cannot be read.
    """
    t0 = time.perf_counter()
    src, out = Path(video_path), Path(out_path)
    info = probe_video(src)
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the input video; choose another file")
    index = _EventIndex(events, hold_s)
    some = next(iter(index.by_seq.values()), None)
    if some is not None and (some.width, some.height) != (info.width, info.height):
        raise ConfigError(
            f"the events are of a {some.width}x{some.height} video but {src} is {info.width}x{info.height}: "
            "is it the video the stream was ingested from?"
        )
    renderer: MeshRenderer | None = None
    if mesh and some is not None:
        try:
            renderer = MeshRenderer(some.basis_id, mesh_size(info.width, info.height))
        except ModelError as exc:
            raise ModelError(f"--mesh: model {some.model_id}: {exc}") from exc
    w, h = _even(info.width), _even(info.height)
    if (w, h) != (info.width, info.height):
        log.warning("video=%s is %dx%d: yuv420p needs even sides, writing %dx%d", src, info.width, info.height, w, h)
    check_output(out)
    n = held = with_events = with_faces = faces_drawn = 0
    try:
        # written beside `out` and renamed over it when complete: no partial file on any error or Ctrl-C
        with staged_path(out, suffix=f".part{out.suffix or '.mp4'}") as part:
            with (
                av.open(str(src)) as container,
                av.open(str(part), "w") as sink,
                progress_bar(f"annotating {src.name}", info.frames, enabled=progress) as advance,
            ):
                vs = container.streams.video[0]
                vs.thread_type = "AUTO"
                ost = sink.add_stream("libx264", rate=info.rate)
                ost.width, ost.height, ost.pix_fmt = w, h, "yuv420p"
                ost.time_base = info.time_base
                ost.codec_context.time_base = info.time_base
                ost.codec_context.options = {"preset": preset, "crf": str(crf)}
                step = max(1, round(1 / (info.rate * info.time_base))) if info.rate else 1
                last_pts: int | None = None
                for frame in container.decode(vs):
                    pts_time = float(frame.pts * info.time_base) if frame.pts is not None else n / float(info.rate)
                    ev, is_held = index.lookup(frame.pts, n, pts_time)
                    faces = ev.faces if ev is not None else []
                    with_events += ev is not None and not is_held
                    if faces:
                        image = to_bgr(frame)[:h, :w]
                        image = np.ascontiguousarray(image)
                        meshes = [renderer.render(f) for f in faces] if renderer is not None else None
                        draw_faces(image, faces, held=is_held, meshes=meshes)
                        planes = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), np.uint8)
                        out_frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
                        held += is_held
                        with_faces += 1
                        faces_drawn += len(faces)
                    else:
                        out_frame = frame if (frame.width, frame.height) == (w, h) else frame.reformat(w, h)
                        out_frame.pict_type = av.video.frame.PictureType.NONE  # let x264 choose frame types
                    pts = frame.pts if frame.pts is not None else n * step
                    if last_pts is not None and pts <= last_pts:
                        pts = last_pts + 1  # the muxer needs increasing timestamps
                    out_frame.pts, out_frame.time_base, last_pts = pts, info.time_base, pts
                    for pkt in ost.encode(out_frame):
                        sink.mux(pkt)
                    n += 1
                    advance()
                for pkt in ost.encode(None):
                    sink.mux(pkt)
            if index.count and not index.matched:
                raise ConfigError(
                    f"none of the {index.count} frame events matches a frame of {src} by pts: is it the video the "
                    "stream was ingested from?"
                )
    except (av.error.FFmpegError, OSError) as exc:
        raise DecodeError(f"annotating {src} into {out} failed: {exc}") from exc
    stats = AnnotateStats(
        out_path=out,
        frames_written=n,
        frames_with_events=with_events,
        frames_held=held,
        frames_with_faces=with_faces,
        faces_drawn=faces_drawn,
        meshes_rendered=renderer.rendered if renderer is not None else 0,
        events=index.count,
        events_unmatched=index.count - len(index.matched),
        seconds=time.perf_counter() - t0,
    )
    log.info("annotated video=%s out=%s frames=%d faces=%d seconds=%.2f", src, out, n, faces_drawn, stats.seconds)
    return stats
