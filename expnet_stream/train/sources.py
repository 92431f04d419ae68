"""Face sources for training and evaluation, and the one-off face cache (detect, crop, label) built from them.

A *labelled folder* is a folder with ``labels.csv`` holding at least the columns ``file`` (relative path), ``label``
(emotion) and ``subject`` (identity, for subject-disjoint folds): ``train/lfw_expressions`` and ``eval/jaffe`` in
the shared data. A *video folder* holds ``*.mp4`` clips; each clip is one identity and frames are sampled evenly.

For each image the cache stores the yunet box (the worker's default detector, highest score x area), a *wide* crop
(the paper crop rule with a larger margin, so training can jitter the box and still cut a paper crop from it), and
the labeller's output on the paper crop at full resolution and with the face downscaled to ``small_face_px``.
Caches live under :func:`~expnet_stream.train.labeller.default_cache_dir` (never in the repository).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ..errors import ExpNetError
from ..faces.crop import crop_faces
from ..fileio import atomic_writer
from ..models.contract import PreprocessContract

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_VERSION",
    "LABEL_CROP",
    "WIDE_CROP",
    "WIDE_EXPAND",
    "FaceCache",
    "RuntimeRoll",
    "SourceImage",
    "build_face_cache",
    "downscale_frame",
    "iter_labelled_folder",
    "iter_video_folder",
    "label_contract",
    "load_face_cache",
    "pick_face",
]

CACHE_VERSION = "faces-v2"  # v2: yunet boxes (the worker's default detector), v1: yuface
# The labeller sees the paper crop (1.5x square box) at this size; MediaPipe's landmark network runs at 256.
LABEL_CROP = 256
# The wide crop covers WIDE_CROP / 114 times the paper crop of the s112 variants (138 / 114 = 1.21).
WIDE_CROP = 138
PAPER_CROP = 114
WIDE_EXPAND = (1.5 * WIDE_CROP / PAPER_CROP - 1.0) / 2.0


def label_contract(size: int = LABEL_CROP, expand: float = 0.25) -> PreprocessContract:
    """A contract that only describes a crop (the paper rule at ``size`` px) for :func:`crop_faces`."""
    return PreprocessContract(model_name="crop-only", input_size=size, crop_size=size, crop_expand=expand)


@dataclass(frozen=True)
class SourceImage:
    """One image to put in a cache: BGR pixels plus where it came from."""

    key: str
    subject: str
    label: str
    image_bgr: npt.NDArray[np.uint8]


def iter_labelled_folder(root: str | os.PathLike[str], *, limit: int | None = None) -> Iterator[SourceImage]:
    """Images of a labelled folder (``labels.csv`` with ``file``, ``label``, ``subject``), in file order."""
    root = Path(root)
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise ExpNetError(f"{root} is not a labelled folder: {csv_path} is missing")
    with csv_path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            return
        img = cv2.imread(str(root / row["file"]), cv2.IMREAD_COLOR)
        if img is None:
            logger.warning("unreadable image path=%s", root / row["file"])
            continue
        subject = row.get("subject") or f"anon-{n}"
        yield SourceImage(row["file"], subject, row.get("label", "").strip().lower(), np.asarray(img, np.uint8))


def iter_video_folder(root: str | os.PathLike[str], *, frames_per_video: int = 200) -> Iterator[SourceImage]:
    """Up to ``frames_per_video`` evenly spaced frames of each ``*.mp4``; subject = file stem, label empty."""
    import av

    for path in sorted(Path(root).glob("*.mp4")):
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                total = stream.frames or 0
                step = max(1, total // frames_per_video) if total else 1
                taken = 0
                for i, frame in enumerate(container.decode(stream)):
                    if i % step:
                        continue
                    yield SourceImage(
                        f"{path.name}#{i}", path.stem, "", np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)
                    )
                    taken += 1
                    if taken >= frames_per_video:
                        break
        except av.error.FFmpegError as exc:
            logger.warning("cannot decode video path=%s error=%s", path, exc)


def pick_face(xyxy: npt.NDArray[np.float32], scores: npt.NDArray[np.float32]) -> int | None:
    """Index of the face to use: highest score x box area (one subject per image), None when there is none."""
    if xyxy.shape[0] == 0:
        return None
    area = np.prod(np.maximum(xyxy[:, 2:4] - xyxy[:, 0:2], 0.0), axis=1)
    return int(np.argmax(scores * area))


def downscale_frame(
    frame: npt.NDArray[np.uint8], box: npt.NDArray[np.float32], face_px: float
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Shrink ``frame`` (INTER_AREA) so the box's longer side is ``face_px``; returns the frame and the scaled box.

    Never enlarges: a face already smaller than ``face_px`` is returned as is.
    """
    side = float(max(box[2] - box[0], box[3] - box[1]))
    f = min(1.0, face_px / max(side, 1e-3))
    return scale_frame(frame, box, f)


def scale_frame(
    frame: npt.NDArray[np.uint8], box: npt.NDArray[np.float32], factor: float
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Resize ``frame`` by ``factor`` (INTER_AREA when shrinking) and scale ``box`` (pixel-edge coordinates) with it."""
    if factor >= 1.0:
        return frame, box.astype(np.float32)
    h, w = frame.shape[:2]
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    small = np.asarray(cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA), np.uint8)
    sb = box.astype(np.float32) * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
    return small, sb


class RuntimeRoll:
    """The eye-line roll the worker would crop a face with: YuNet (the default detector) on the frame, the roll of the
    detection that overlaps the face's box best (NaN when none overlaps, or the contract does not level the eyes:
    then :func:`~expnet_stream.faces.crop.crop_faces` crops upright). For evaluations that crop cached boxes."""

    def __init__(self, contract: PreprocessContract) -> None:
        self._detector: Any = None
        if contract.crop_level_eyes:
            from ..plugin_registry import create

            self._detector = create("face_detector", "yunet")

    def __call__(self, frame: npt.NDArray[np.uint8], box: npt.ArrayLike) -> npt.NDArray[np.float32]:
        if self._detector is None:
            return np.full(1, np.nan, np.float32)
        from ..faces.tracker import iou_matrix

        dets = self._detector.detect(frame)
        if not len(dets):
            return np.full(1, np.nan, np.float32)
        iou = iou_matrix(dets.xyxy, np.asarray(box, np.float32).reshape(1, 4))[:, 0]
        j = int(iou.argmax())
        return dets.roll_deg[j : j + 1] if iou[j] > 0.3 else np.full(1, np.nan, np.float32)

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    def __enter__(self) -> RuntimeRoll:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class FaceCache:
    """Arrays of a face cache (N faces); see the module docstring. ``meta`` holds counts and settings."""

    keys: npt.NDArray[np.str_]
    subjects: npt.NDArray[np.str_]
    labels: npt.NDArray[np.str_]
    boxes: npt.NDArray[np.float32]
    crops: npt.NDArray[np.uint8]
    full_found: npt.NDArray[np.bool_]
    full_landmarks: npt.NDArray[np.float32]
    full_blendshapes: npt.NDArray[np.float32]
    full_pose: npt.NDArray[np.float32]
    small_found: npt.NDArray[np.bool_]
    small_landmarks: npt.NDArray[np.float32]
    small_blendshapes: npt.NDArray[np.float32]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.keys.shape[0])


def build_face_cache(
    images: Iterator[SourceImage],
    out_path: str | os.PathLike[str],
    *,
    small_face_px: float = 32.0,
    detector_name: str = "yunet",
    progress: bool = True,
    total: int | None = None,
) -> Path:
    """Detect, crop and label every image; write ``out_path`` (npz). Images without a detected face are skipped."""
    from ..plugin_registry import create
    from .labeller import Labeller

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    detector = create("face_detector", detector_name)
    wide_c = label_contract(WIDE_CROP, WIDE_EXPAND)
    label_c = label_contract(LABEL_CROP)
    cols: dict[str, list[Any]] = {k: [] for k in FaceCache.__dataclass_fields__ if k != "meta"}
    small_pose: list[npt.NDArray[np.float32]] = []
    n_seen = n_nodet = 0
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=out_path.stem, unit="img")
    with Labeller() as labeller:
        for item in images:
            n_seen += 1
            if bar is not None:
                bar.update(1)
            det = detector.detect(item.image_bgr)
            idx = pick_face(det.xyxy, det.score)
            if idx is None:
                n_nodet += 1
                continue
            box = det.xyxy[idx].astype(np.float32)
            full_found, full_lm, full_bs, full_pose = labeller.label_one(
                crop_faces(item.image_bgr, box[None], label_c)[0]
            )
            small, sbox = downscale_frame(item.image_bgr, box, small_face_px)
            small_found, small_lm, small_bs, s_pose = labeller.label_one(crop_faces(small, sbox[None], label_c)[0])
            for k, v in (
                ("keys", item.key),
                ("subjects", item.subject),
                ("labels", item.label),
                ("boxes", box),
                ("crops", crop_faces(item.image_bgr, box[None], wide_c)[0]),
                ("full_found", full_found),
                ("full_landmarks", full_lm.astype(np.float32)),
                ("full_blendshapes", full_bs),
                ("full_pose", full_pose),
                ("small_found", small_found),
                ("small_landmarks", small_lm.astype(np.float32)),
                ("small_blendshapes", small_bs),
            ):
                cols[k].append(v)
            small_pose.append(s_pose)
    if bar is not None:
        bar.close()
    detector.close()
    if not cols["keys"]:
        raise ExpNetError(f"no face found in any of the {n_seen} images for {out_path}")
    arrays = {k: np.stack([np.asarray(x) for x in v]) for k, v in cols.items()}
    arrays["meta_version"] = np.asarray(CACHE_VERSION)
    arrays["meta_small_face_px"] = np.asarray(small_face_px)
    arrays["meta_counts"] = np.asarray([n_seen, n_nodet])
    with atomic_writer(out_path) as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    logger.info(
        "face cache written path=%s images=%d no_face=%d labelled_full=%d labelled_small=%d",
        out_path,
        n_seen,
        n_nodet,
        int(arrays["full_found"].sum()),
        int(arrays["small_found"].sum()),
    )
    return out_path


def load_face_cache(path: str | os.PathLike[str], *, mmap: bool = False) -> FaceCache:
    """Read a cache written by :func:`build_face_cache`."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        fields = {k: data[k] for k in FaceCache.__dataclass_fields__ if k != "meta"}
        meta = {
            "version": str(data["meta_version"]),
            "small_face_px": float(data["meta_small_face_px"]),
            "images": int(data["meta_counts"][0]),
            "no_face": int(data["meta_counts"][1]),
        }
    except (OSError, KeyError, ValueError) as exc:
        raise ExpNetError(f"cannot read face cache {path}: {exc}") from exc
    if meta["version"] != CACHE_VERSION:
        raise ExpNetError(f"face cache {path} is {meta['version']!r}, expected {CACHE_VERSION!r}; rebuild it")
    return FaceCache(meta=meta, **fields)
