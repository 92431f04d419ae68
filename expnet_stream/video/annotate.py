"""An annotated copy of a video: each face's box, track id, dominant emotion and emotion bars (and optionally its 3D
expression mesh), drawn from the stream's :class:`~expnet_stream.events.schema.FrameEvent` s.

Frame events are matched to the decoded frames by ``pts`` (by ``frame_seq`` when the events carry no pts). A frame
the worker sampled out (``sampling.fps``) shows the faces of the most recent processed frame for up to ``hold_s``
seconds of stream time (boxes drawn thinner), then none. Every decoded frame is written, annotated or not, re-encoded
with libx264 (yuv420p) at the input's time base and pts; frames with nothing to draw are passed to the encoder as
decoded. Audio is not copied.

>>> import numpy as np
>>> from expnet_stream.events.schema import Face, pack_coeffs
>>> face = Face(track_id=3, box=(40, 30, 120, 130), score=0.9, coeffs=pack_coeffs(np.zeros(29)),
...             emotions={"happiness": 0.82, "neutral": 0.18})
>>> image = np.zeros((360, 640, 3), np.uint8)
>>> face_label(face)
'#3 happiness 0.82'
>>> int(draw_faces(image, [face]).any())
1
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, DecodeError, ModelError
from ..events.schema import Face, FrameEvent
from ..fileio import staged_path
from .decode import to_bgr

if TYPE_CHECKING:
    from ..models.expression_basis import ExpressionBasis

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HOLD_S",
    "AnnotateStats",
    "MeshRenderer",
    "VideoInfo",
    "annotate_video",
    "check_output",
    "draw_faces",
    "face_label",
    "probe_video",
    "progress_bar",
]

DEFAULT_HOLD_S = 0.5
"""How long (stream seconds) a sampled-out frame shows the faces of the last processed frame."""

Image = npt.NDArray[np.uint8]
Colour = tuple[int, int, int]

# BGR colour per emotion class; any other class gets a colour from its name
EMOTION_BGR: dict[str, Colour] = {
    "anger": (40, 40, 220),
    "contempt": (140, 140, 0),
    "disgust": (40, 150, 40),
    "fear": (170, 60, 170),
    "happiness": (0, 210, 255),
    "neutral": (190, 190, 190),
    "sadness": (210, 120, 30),
    "surprise": (0, 130, 255),
}
NO_EMOTION_BGR: Colour = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


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


# ---------------------------------------------------------------------------------------------------------- drawing
def emotion_colour(name: str | None) -> Colour:
    if name is None:
        return NO_EMOTION_BGR
    if name in EMOTION_BGR:
        return EMOTION_BGR[name]
    h = zlib.crc32(name.encode())
    return (64 + h % 192, 64 + (h >> 8) % 192, 64 + (h >> 16) % 192)


def dominant(face: Face) -> tuple[str, float] | None:
    """``(class, probability)`` of the face's most probable emotion; None without emotions."""
    if not face.emotions:
        return None
    emotions = face.emotions
    name = max(emotions, key=lambda k: emotions[k])
    return name, float(emotions[name])


def face_label(face: Face) -> str:
    """``"#3 happiness 0.82"``; ``"face"`` for an untracked face; ``"(no emotions)"`` without an emotion output."""
    who = f"#{face.track_id}" if face.track_id >= 0 else "face"
    top = dominant(face)
    return f"{who} {top[0]} {top[1]:.2f}" if top else f"{who} (no emotions)"


def _short_names(classes: Sequence[str]) -> list[str]:
    short = [c[:3] for c in classes]
    return short if len(set(short)) == len(short) else list(classes)


def _scale(image: Image) -> float:
    """Drawing scale: 1.0 at 360 px on the short side (640x360), proportional above and below."""
    return max(0.5, min(int(image.shape[0]), int(image.shape[1])) / 360.0)


def _darken(image: Image, x0: int, y0: int, x1: int, y1: int, keep: float = 0.35) -> None:
    roi = image[y0:y1, x0:x1]
    roi[:] = (roi.astype(np.float32) * keep).astype(np.uint8)


def _text(image: Image, text: str, org: tuple[int, int], scale: float, colour: Colour, thick: int) -> None:
    cv2.putText(image, text, org, _FONT, scale, colour, thick, cv2.LINE_AA)


def _label(image: Image, text: str, box: tuple[int, int, int, int], colour: Colour, s: float) -> None:
    """The label in a filled tag above the box (inside its top edge when there is no room above)."""
    h, w = image.shape[:2]
    fs, thick = 0.5 * s, max(1, round(1.2 * s))
    (tw, th), base = cv2.getTextSize(text, _FONT, fs, thick)
    pad = max(2, round(3 * s))
    x0 = min(max(0, box[0]), max(0, w - tw - 2 * pad))
    y1 = box[1] if box[1] - th - base - 2 * pad >= 0 else box[1] + th + base + 2 * pad
    y1 = min(y1, h)
    y0 = max(0, y1 - th - base - 2 * pad)
    cv2.rectangle(image, (x0, y0), (x0 + tw + 2 * pad, y1), colour, -1)
    ink: Colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    _text(image, text, (x0 + pad, y1 - pad - base), fs, ink, thick)


@dataclass(frozen=True)
class _BarLayout:
    names: list[str]
    font: float
    row: int
    pad: int
    bar_w: int
    name_w: int

    @classmethod
    def of(cls, classes: Sequence[str], s: float) -> _BarLayout:
        names = _short_names(classes)
        font = 0.42 * s
        name_w = max(cv2.getTextSize(n, _FONT, font, 1)[0][0] for n in names)
        return cls(names, font, round(12 * s), max(2, round(4 * s)), round(60 * s), name_w)

    @property
    def size(self) -> tuple[int, int]:
        return 3 * self.pad + self.name_w + self.bar_w, 2 * self.pad + self.row * len(self.names)


def _bars(image: Image, emotions: dict[str, float], x0: int, y0: int, lay: _BarLayout) -> None:
    """A horizontal bar per class (the model's class order, 3-letter names) over a darkened panel; the dominant
    class's bar is outlined."""
    pw, ph = lay.size
    _darken(image, x0, y0, x0 + pw, y0 + ph)
    top = max(emotions, key=lambda k: emotions[k])
    bx = x0 + 2 * lay.pad + lay.name_w
    for i, (cls, name) in enumerate(zip(emotions, lay.names, strict=True)):
        y = y0 + lay.pad + i * lay.row
        _text(image, name, (x0 + lay.pad, y + lay.row - max(2, lay.pad - 1)), lay.font, (255, 255, 255), 1)
        p = min(1.0, max(0.0, float(emotions[cls])))
        cv2.rectangle(image, (bx, y + 2), (bx + lay.bar_w, y + lay.row - 2), (90, 90, 90), 1)
        if p > 0:
            cv2.rectangle(
                image, (bx, y + 2), (bx + max(1, round(p * lay.bar_w)), y + lay.row - 2), emotion_colour(cls), -1
            )
        if cls == top:
            cv2.rectangle(image, (bx - 1, y + 1), (bx + lay.bar_w + 1, y + lay.row - 1), (255, 255, 255), 1)


def _paste_mesh(image: Image, mesh: Image, x0: int, y0: int) -> None:
    """The mesh's pixels (not its white background) over a darkened square."""
    m = mesh.shape[0]
    _darken(image, x0, y0, x0 + m, y0 + m)
    mask = mesh.min(axis=2) < 250
    roi = image[y0 : y0 + m, x0 : x0 + m]
    roi[mask] = mesh[mask]


def draw_faces(
    image_bgr: Image,
    faces: Sequence[Face],
    *,
    held: bool = False,
    meshes: Sequence[Image | None] | None = None,
) -> Image:
    """Draw each face's box, label (:func:`face_label`) and emotion bars (and its mesh) onto ``image_bgr``.

    Draws in place and returns the image. Sizes scale with the frame (legible at 640x360). The bars and the mesh
    sit in a column beside the box (right, else left, clamped to the frame). ``held`` draws thinner boxes (faces
    carried over from an earlier processed frame). ``meshes`` holds one square BGR image (white background) or None
    per face. A face without emotions gets its box and label only.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"image_bgr must be (H, W, 3) uint8, got {image_bgr.shape} {image_bgr.dtype}")
    if meshes is not None and len(meshes) != len(faces):
        raise ValueError(f"meshes must hold one entry per face ({len(faces)}), got {len(meshes)}")
    h, w = image_bgr.shape[:2]
    s = _scale(image_bgr)
    gap = max(2, round(4 * s))
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = (round(v) for v in face.box)
        x1, x2 = min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)
        y1, y2 = min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)
        top = dominant(face)
        colour = emotion_colour(top[0] if top else None)
        thick = max(1, round((1.0 if held else 2.0) * s))
        cv2.rectangle(image_bgr, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        mesh = meshes[i] if meshes is not None else None
        lay = _BarLayout.of(list(face.emotions), s) if face.emotions else None
        pw, ph = lay.size if lay is not None else (0, 0)
        m = 0 if mesh is None else mesh.shape[0]
        col_w, col_h = max(pw, m), ph + m + (gap if pw and m else 0)
        if col_w and col_w <= w and col_h <= h:
            cx = x2 + gap if x2 + gap + col_w <= w else x1 - gap - col_w
            cx = min(max(cx, 0), w - col_w)
            cy = min(max(y1, 0), h - col_h)
            if face.emotions and lay is not None:
                _bars(image_bgr, face.emotions, cx, cy, lay)
            if mesh is not None:
                _paste_mesh(image_bgr, mesh, cx, cy + ph + (gap if ph else 0))
        _label(image_bgr, face_label(face), (x1, y1, x2, y2), colour, s)
    return image_bgr


# ---------------------------------------------------------------------------------------------------------- meshes
class MeshRenderer:
    """Renders a face's coefficients (smoothed ones when the event has them) as a small mesh image.

    Reuses :func:`expnet_stream.models.mesh.mesh_from_coeffs` and :func:`~expnet_stream.models.mesh.render_mesh_image`
    (a software renderer, about 7-9 ms per image here); the last image of each track is reused while its
    coefficients do not change (held frames).
    """

    def __init__(self, basis_id: str, size: int) -> None:
        from ..models.mesh import load_expression_basis

        self.basis: ExpressionBasis = load_expression_basis(basis_id)
        self.size = size
        self.rendered = 0
        self._last: dict[int, tuple[bytes, Image]] = {}

    def render(self, face: Face) -> Image:
        from ..models.mesh import mesh_from_coeffs, render_mesh_image

        raw = face.coeffs_smoothed if face.coeffs_smoothed is not None else face.coeffs
        cached = self._last.get(face.track_id)
        if cached is not None and cached[0] == raw and face.track_id >= 0:
            return cached[1]
        smoothed = face.smoothed_coefficients
        coeffs = smoothed if smoothed is not None else face.coefficients
        vertices, triangles = mesh_from_coeffs(coeffs, self.basis)
        image = render_mesh_image(vertices, triangles, size=self.size)
        self.rendered += 1
        self._last[face.track_id] = (raw, image)
        return image


def mesh_size(width: int, height: int) -> int:
    """Side of the mesh image: 96 px at 360 px on the short side, 64 to 128 px."""
    return int(min(128, max(64, round(96 * min(width, height) / 360))))


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
