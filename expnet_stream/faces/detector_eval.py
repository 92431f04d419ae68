"""Measure face detector plugins on the data at hand: recall, false positives, speed.

Run ``python -m expnet_stream.faces.detector_eval [--data ../shared/data] [--detectors yuface,haar]``;
it prints a Markdown table (the one in ``plugins/detectors/README.md``). Each data folder that is
absent is skipped with a message; the speed rows need no data. Pin it to one core for the timing
(``taskset -c 0``); the script also sets ``cv2.setNumThreads(1)`` and ``OMP_NUM_THREADS=1``.

Sets and metrics (a "hit" is one detection matched to the one known face; "extra" counts every
other detection, i.e. false positives wherever the image shows one face):

* ``expnet_samples``: 15 movie frames 720x576 with a ground-truth (GT) face box each. One GT box
  (``fear/Fear_120_1.jpg``, 20x387 px) is corrupt and left out: 14 faces. The GT boxes are tall
  (forehead to neck, height about 2x width), so a tight square face box reaches IoU 0.45-0.55; a
  hit is IoU >= 0.4. Some frames show other, unlabelled faces, which count as extra.
* ``small@N``: the same 14 frames shrunk so that the GT face is N px wide, pasted on a black
  640x360 canvas; hit = IoU >= 0.4 with the shrunk GT box. Plus ``lfw@N``: LFW crops (the face
  fills the image) shrunk to N px on a black 640x360 canvas; hit = a box centred in the pasted
  crop with a side between 0.5 N and 2 N.
* ``jaffe``, ``lfw``: one face per image (JAFFE 256x256 posed, LFW 160x160 tight crops); hit =
  a box centred in the middle half of the image, at least 30% of its width.
* ``videos``: every Nth frame of each clip in ``videos/unlabeled`` (one face per clip, no GT);
  rate = frames with at least one detection.
* ``negatives``: scikit-image photos without a human face (cat, coffee, rocket, textures...),
  resized to 640 px; extra detections per image.
* ``ms``: median wall time of ``detect`` over repeats, one thread, on a 1080p video frame and its
  640x360 resize: ``ms 360p``, ``ms 1080p`` (default ``max_side=640``), ``ms 1080p full``
  (``max_side=None``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ..errors import DetectorError
from .detections import Detections
from .detector import BGRImage, FaceDetector

log = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

#: Configurations compared by default: label -> (plugin name, options).
DEFAULT_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "yuface": ("yuface", {}),
    "yunet": ("yunet", {}),  # the default: YuNet-n at min_score 0.8
    "yunet@0.5": ("yunet", {"min_score": 0.5}),
    "yunet-s@0.5": ("yunet", {"model": "s", "min_score": 0.5}),
    "yunet@0.9": ("yunet", {"min_score": 0.9}),
    "haar": ("haar", {}),
    "haar-alt2": ("haar", {"cascade": "frontalface_alt2", "min_neighbors": 3}),
    "mediapipe": ("mediapipe", {}),
}

SMALL_SIZES = (24, 32, 48)
CANVAS_WH = (640, 360)
IOU_HIT = 0.4


@dataclass
class Tally:
    """Hits, images and extra detections of one detector on one set."""

    images: int = 0
    hits: int = 0
    extra: int = 0

    def add(self, hit: bool, n_dets: int) -> None:
        self.images += 1
        self.hits += int(hit)
        self.extra += n_dets - int(hit)

    @property
    def rate(self) -> float:
        return self.hits / self.images if self.images else float("nan")

    @property
    def extra_per_image(self) -> float:
        return self.extra / self.images if self.images else float("nan")


@dataclass
class Limits:
    """How much of each set to use (the defaults take about a minute per detector on one core)."""

    lfw_images: int = 300
    lfw_small_images: int = 100
    video_frames_per_clip: int = 12
    timing_repeats: int = 15
    seed: int = 0


@dataclass
class Result:
    label: str
    tallies: dict[str, Tally] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def iou(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """IoU of every box in ``a`` ``(N, 4)`` with the one box ``b`` ``(4,)`` (xyxy).

    >>> iou([[0, 0, 10, 10], [5, 0, 15, 10]], [0, 0, 10, 10]).tolist()
    [1.0, 0.3333333333333333]
    """
    aa = np.asarray(a, np.float64).reshape(-1, 4)
    bb = np.asarray(b, np.float64).reshape(4)
    iw = np.clip(np.minimum(aa[:, 2], bb[2]) - np.maximum(aa[:, 0], bb[0]), 0, None)
    ih = np.clip(np.minimum(aa[:, 3], bb[3]) - np.maximum(aa[:, 1], bb[1]), 0, None)
    inter = iw * ih
    union = (aa[:, 2] - aa[:, 0]) * (aa[:, 3] - aa[:, 1]) + (bb[2] - bb[0]) * (bb[3] - bb[1]) - inter
    out: npt.NDArray[np.float64] = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    return out


def hit_iou(dets: Detections, gt_xyxy: npt.ArrayLike, thr: float = IOU_HIT) -> bool:
    return len(dets) > 0 and bool(iou(dets.xyxy, gt_xyxy).max() >= thr)


def hit_centred(dets: Detections, region_xyxy: Sequence[float], min_side: float, max_side: float) -> bool:
    """A box centred inside ``region_xyxy`` whose width is in ``[min_side, max_side]``."""
    if not len(dets):
        return False
    c = (dets.xyxy[:, :2] + dets.xyxy[:, 2:]) / 2
    w = dets.size_wh[:, 0]
    x1, y1, x2, y2 = region_xyxy
    ok = (c[:, 0] >= x1) & (c[:, 0] <= x2) & (c[:, 1] >= y1) & (c[:, 1] <= y2) & (w >= min_side) & (w <= max_side)
    return bool(ok.any())


def paste(image: BGRImage, width: int, rng: random.Random) -> tuple[BGRImage, tuple[float, float, float]]:
    """Resize ``image`` to ``width`` px wide, paste it on a black canvas; return canvas, (dx, dy, scale)."""
    h, w = image.shape[:2]
    s = width / w
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    cw, ch = CANVAS_WH
    sh, sw = small.shape[:2]
    if sw > cw or sh > ch:
        f = min(cw / sw, ch / sh)
        small = cv2.resize(small, (int(sw * f), int(sh * f)), interpolation=cv2.INTER_AREA)
        s *= f
        sh, sw = small.shape[:2]
    dx, dy = rng.randint(0, cw - sw), rng.randint(0, ch - sh)
    canvas = np.zeros((ch, cw, 3), np.uint8)
    canvas[dy : dy + sh, dx : dx + sw] = small
    return canvas, (dx, dy, s)


def _read(path: Path) -> BGRImage | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        log.warning("unreadable image path=%s", path)
        return None
    return _u8(img)


def _u8(img: npt.NDArray[Any]) -> BGRImage:
    return np.ascontiguousarray(img, dtype=np.uint8)


def expnet_samples(root: Path) -> list[tuple[BGRImage, npt.NDArray[np.float32]]]:
    """Frames and GT boxes (xyxy) of ``eval/expnet_samples``, without the corrupt box."""
    folder = root / "eval" / "expnet_samples"
    out = []
    with open(folder / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            x, y, w, h = (float(row[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
            if w <= 0 or h <= 0 or h / w > 4:  # Fear_120_1: 20x387 px, not a face box
                continue
            img = _read(folder / row["file"])
            if img is not None:
                out.append((img, np.array([x, y, x + w, y + h], np.float32)))
    return out


def single_face_images(root: Path, sub: str, limit: int | None, seed: int) -> list[BGRImage]:
    folder = root / sub
    with open(folder / "labels.csv", newline="") as fh:
        files = sorted(row["file"] for row in csv.DictReader(fh))
    if limit is not None and len(files) > limit:
        files = sorted(random.Random(seed).sample(files, limit))
    return [img for f in files if (img := _read(folder / f)) is not None]


def video_frames(root: Path, per_clip: int) -> Iterator[tuple[str, BGRImage]]:
    """``per_clip`` frames spread evenly over each clip of ``videos/unlabeled``."""
    import av

    for path in sorted((root / "videos" / "unlabeled").glob("*.mp4")):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            n = stream.frames or 0
            step = max(1, n // per_clip) if n else 10
            taken = 0
            for i, frame in enumerate(container.decode(stream)):
                if i % step == 0 and taken < per_clip:
                    taken += 1
                    yield path.name, _u8(frame.to_ndarray(format="bgr24"))


def negative_images() -> list[BGRImage]:
    """scikit-image sample photos with no human face, 640 px on the longer side."""
    from skimage import data

    names = ["chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel"]
    names += ["coins", "page", "horse", "moon", "text", "clock", "checkerboard"]
    out = []
    for n in names:
        loader: Callable[[], npt.NDArray[Any]] | None = getattr(data, n, None)
        if loader is None:
            continue
        img = np.asarray(loader())
        if img.dtype != np.uint8:
            img = (np.clip(img.astype(np.float64), 0, 1) * 255).astype(np.uint8)
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2BGR)
        f = 640 / max(img.shape[:2])
        out.append(_u8(cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)))))
    return out


def timing_frame(root: Path) -> tuple[BGRImage, str]:
    """A 1080p frame: the first frame of a 1080p clip when the data is there, else the astronaut."""
    clip = root / "videos" / "unlabeled" / "smirk_skarsgard.mp4"
    if clip.is_file():
        import av

        with av.open(str(clip)) as container:
            for frame in container.decode(video=0):
                img = _u8(frame.to_ndarray(format="bgr24"))
                if img.shape[:2] == (1080, 1920):
                    return img, clip.name
                break
    from skimage import data

    astro = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    canvas = np.full((1080, 1920, 3), 128, np.uint8)
    canvas[:, 420:1500] = cv2.resize(astro, (1080, 1080))
    return _u8(canvas), "skimage astronaut on a 1920x1080 canvas"


def median_ms(detector: FaceDetector, frame: BGRImage, repeats: int) -> float:
    detector.detect(frame)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detector.detect(frame)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


class _Sets:
    """The evaluation sets, loaded once and shared by every detector."""

    def __init__(self, root: Path, limits: Limits, say: Callable[[str], None]) -> None:
        self.expnet: list[tuple[BGRImage, npt.NDArray[np.float32]]] = []
        self.jaffe: list[BGRImage] = []
        self.lfw: list[BGRImage] = []
        self.videos: list[tuple[str, BGRImage]] = []
        self.negatives: list[BGRImage] = []
        if (root / "eval" / "expnet_samples" / "labels.csv").is_file():
            self.expnet = expnet_samples(root)
        else:
            say(f"skipped expnet_samples and small@N: {root / 'eval' / 'expnet_samples'} is absent")
        if (root / "eval" / "jaffe" / "labels.csv").is_file():
            self.jaffe = single_face_images(root, "eval/jaffe", None, limits.seed)
        else:
            say(f"skipped jaffe: {root / 'eval' / 'jaffe'} is absent")
        if (root / "train" / "lfw_expressions" / "labels.csv").is_file():
            n = max(limits.lfw_images, limits.lfw_small_images)
            self.lfw = single_face_images(root, "train/lfw_expressions", n, limits.seed)
        else:
            say(f"skipped lfw and lfw@N: {root / 'train' / 'lfw_expressions'} is absent")
        if (root / "videos" / "unlabeled").is_dir():
            self.videos = list(video_frames(root, limits.video_frames_per_clip))
        else:
            say(f"skipped videos: {root / 'videos' / 'unlabeled'} is absent")
        try:
            self.negatives = negative_images()
        except ImportError:
            say("skipped negatives: scikit-image is not installed")
        self.timing, self.timing_source = timing_frame(root)


def evaluate_detector(detector: FaceDetector, sets: _Sets, limits: Limits) -> tuple[dict[str, Tally], dict[str, float]]:
    """Run one detector over every set; return tallies per set and timings."""
    tallies: dict[str, Tally] = {}

    def tally(name: str) -> Tally:
        return tallies.setdefault(name, Tally())

    for img, gt in sets.expnet:
        d = detector.detect(img)
        tally("expnet").add(hit_iou(d, gt), len(d))
    rng = random.Random(limits.seed)
    for size in SMALL_SIZES:
        for img, gt in sets.expnet:
            canvas, (dx, dy, s) = paste(img, round(img.shape[1] * size / float(gt[2] - gt[0])), rng)
            d = detector.detect(canvas)
            tally(f"small@{size}").add(hit_iou(d, gt * s + np.array([dx, dy, dx, dy], np.float32)), len(d))
        for img in sets.lfw[: limits.lfw_small_images]:
            canvas, (dx, dy, s) = paste(img, size, rng)
            pw, ph = img.shape[1] * s, img.shape[0] * s
            d = detector.detect(canvas)
            tally(f"lfw@{size}").add(hit_centred(d, (dx, dy, dx + pw, dy + ph), 0.5 * size, 2 * size), len(d))
    for name, images in (("jaffe", sets.jaffe), ("lfw", sets.lfw[: limits.lfw_images])):
        for img in images:
            h, w = img.shape[:2]
            d = detector.detect(img)
            tally(name).add(hit_centred(d, (w / 4, h / 4, 3 * w / 4, 3 * h / 4), 0.3 * w, 2 * w), len(d))
    for _, img in sets.videos:
        d = detector.detect(img)
        tally("videos").add(len(d) > 0, len(d))
    for img in sets.negatives:
        tally("negatives").add(False, len(detector.detect(img)))

    frame = sets.timing
    small = _u8(cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA))
    ms = {"ms 360p": median_ms(detector, small, limits.timing_repeats)}
    ms["ms 1080p"] = median_ms(detector, frame, limits.timing_repeats)
    return tallies, ms


def evaluate(
    data_root: Path = DEFAULT_DATA,
    configs: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
    limits: Limits | None = None,
    say: Callable[[str], None] = lambda msg: log.info("%s", msg),
) -> list[Result]:
    """Evaluate each detector configuration (label -> (plugin name, options)) on the data at ``data_root``.

    A configuration whose plugin cannot be created (missing optional package) gets a
    :class:`Result` with ``error`` set instead of numbers.
    """
    from ..plugin_registry import create

    limits = limits or Limits()
    configs = DEFAULT_CONFIGS if configs is None else configs
    sets = _Sets(Path(data_root), limits, say)
    say(f"timing frame: {sets.timing_source}")
    results = []
    for label, (plugin, options) in configs.items():
        try:
            detector = create("face_detector", plugin, **dict(options))
        except DetectorError as exc:
            say(f"skipped {label}: {exc}")
            results.append(Result(label, error=str(exc)))
            continue
        try:
            t0 = time.perf_counter()
            tallies, ms = evaluate_detector(detector, sets, limits)
            full = create("face_detector", plugin, **{**dict(options), "max_side": None})
            try:
                ms["ms 1080p full"] = median_ms(full, sets.timing, max(3, limits.timing_repeats // 3))
            finally:
                full.close()
            say(f"{label}: done in {time.perf_counter() - t0:.1f} s")
        finally:
            detector.close()
        results.append(Result(label, tallies, ms))
    return results


def format_table(results: Sequence[Result]) -> str:
    """Markdown table: rows are sets (rate, then extra detections per image in brackets), columns detectors."""
    ok = [r for r in results if r.error is None]
    if not ok:
        return "(no detector could be evaluated)"
    lines = ["| set (images) | " + " | ".join(r.label for r in ok) + " |", "|---" * (len(ok) + 1) + "|"]
    sets = list(dict.fromkeys(k for r in ok for k in r.tallies))
    for s in sets:
        n = ok[0].tallies[s].images
        cells = []
        for r in ok:
            t = r.tallies[s]
            cells.append(f"{t.extra_per_image:.2f}" if s == "negatives" else f"{t.rate:.3f} ({t.extra_per_image:.2f})")
        lines.append(f"| {s} ({n}) | " + " | ".join(cells) + " |")
    for key in dict.fromkeys(k for r in ok for k in r.ms):
        lines.append(f"| {key} | " + " | ".join(f"{r.ms.get(key, float('nan')):.1f}" for r in ok) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m expnet_stream.faces.detector_eval", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default: %(default)s)")
    parser.add_argument("--detectors", default=",".join(DEFAULT_CONFIGS), help="comma-separated config labels")
    parser.add_argument("--lfw", type=int, default=Limits.lfw_images, help="LFW images sampled (default: %(default)s)")
    parser.add_argument("--frames-per-clip", type=int, default=Limits.video_frames_per_clip)
    parser.add_argument("--repeats", type=int, default=Limits.timing_repeats, help="timing repeats")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV/OpenMP threads (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before a native detector library starts OpenMP
    cv2.setNumThreads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    labels = [s.strip() for s in args.detectors.split(",") if s.strip()]
    unknown = [s for s in labels if s not in DEFAULT_CONFIGS]
    if unknown:
        parser.error(f"unknown detector config(s) {unknown}; known: {list(DEFAULT_CONFIGS)}")
    limits = Limits(lfw_images=args.lfw, video_frames_per_clip=args.frames_per_clip, timing_repeats=args.repeats)

    def say(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    results = evaluate(args.data, {k: DEFAULT_CONFIGS[k] for k in labels}, limits, say)
    sys.stdout.write(format_table(results) + "\n")
    for r in results:
        if r.error:
            sys.stdout.write(f"\n{r.label}: not evaluated: {r.error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
