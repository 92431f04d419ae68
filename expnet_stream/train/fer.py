"""FER2013 as emotion training data, framed the way the worker frames video faces.

FER2013 (Goodfellow et al., ICONIP 2013) images are tight 48 px grey crops: chin and forehead touch the edges. The
worker never sees such a crop: it sees a detector box on a frame and cuts the paper crop (square box, 1.5x, cubic). So
each image is edge-padded (the 1.5x crop reaches past the 48 px border; replicated edges give it texture, as a frame
would, instead of a black frame no video has; mirrored padding would add mirrored faces the detector picks), the
worker's detector runs on it (upscaled 3x: detectors want faces of tens of pixels), and the wide crop of that
box is cached like the other face caches (:mod:`.sources`). The detector is the worker's default (``yunet``, at its
default score), and its five landmarks are kept: the roll of the eye line (:func:`eye_roll_deg`) lets training and
evaluation level the eyes before the crop (:func:`~expnet_stream.train.dataset.level_crops`). Images where the detector
finds no face get the median box of ``train`` faces where it does (taken from ``train`` only, so no statistic of
``val`` or ``test`` frames a face) and roll 0, so no image of any split is dropped (the test split is reported on all
of its 3,589 faces).

Optionally the labeller (MediaPipe) labels each paper crop at full resolution, so FER2013 faces also carry expression
coefficients for the student.

Splits are the data set's own: ``train`` (fit), ``val`` (PublicTest: choose), ``test`` (PrivateTest: report only).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ..errors import ExpNetError
from ..faces.crop import crop_faces
from ..faces.detections import eye_roll_deg
from ..fileio import atomic_writer
from ..models.emotion import FER_CLASSES
from .sources import LABEL_CROP, WIDE_CROP, WIDE_EXPAND, label_contract, pick_face

logger = logging.getLogger(__name__)

__all__ = [
    "FER_CACHE_VERSION",
    "FerCache",
    "build_fer_cache",
    "eye_roll_deg",
    "fer_frame",
    "landmark_roll_deg",
    "load_fer_cache",
    "load_fer_npz",
]

FER_CACHE_VERSION = "fer2013-faces-v2"
FRAME_PAD = 32  # reflect padding around the 48 px image: the 1.5x wide crop of a 50 px box needs ~23 px
DETECT_UP = 3  # the detector runs on the padded frame upscaled 3x (yuface: 93% found on 300 train images vs 87% at 2x)


@dataclass(frozen=True)
class FerCache:
    """FER2013 faces (N): ids, split, label, box and five landmarks in the padded frame, detector hit, roll of the eye
    line (degrees, 0 where nothing was detected), wide crops, labeller output."""

    ids: npt.NDArray[np.str_]
    split: npt.NDArray[np.str_]
    labels: npt.NDArray[np.str_]
    boxes: npt.NDArray[np.float32]
    landmarks: npt.NDArray[np.float32]
    roll: npt.NDArray[np.float32]
    detected: npt.NDArray[np.bool_]
    crops: npt.NDArray[np.uint8]
    full_found: npt.NDArray[np.bool_]
    full_landmarks: npt.NDArray[np.float32]
    full_blendshapes: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def label_index(self) -> npt.NDArray[np.int64]:
        """Labels as indices into :data:`~expnet_stream.models.emotion.FER_CLASSES`."""
        lookup = {k: i for i, k in enumerate(FER_CLASSES)}
        return np.array([lookup[str(k)] for k in self.labels], np.int64)


def load_fer_npz(path: str | os.PathLike[str]) -> dict[str, npt.NDArray[Any]]:
    """``fer2013.npz`` of the shared data: images (N, 48, 48) uint8, label, split, id; checked."""
    try:
        with np.load(path, allow_pickle=False) as d:
            data = {k: d[k] for k in ("images", "label", "split", "id")}
    except (OSError, KeyError, ValueError) as exc:
        raise ExpNetError(f"cannot read FER2013 {path}: {exc}") from exc
    n = data["images"].shape[0]
    if (
        data["images"].ndim != 3
        or data["images"].dtype != np.uint8
        or any(data[k].shape != (n,) for k in data if k != "images")
    ):
        raise ExpNetError(f"{path}: expected images (N, H, W) uint8 and label/split/id (N,)")
    unknown = sorted(set(np.unique(data["label"]).tolist()) - set(FER_CLASSES))
    if unknown:
        raise ExpNetError(f"{path}: labels {unknown} are not FER2013 classes {FER_CLASSES}")
    return data


def fer_frame(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A 48 px grey FER2013 image as a BGR frame, reflect-padded by :data:`FRAME_PAD` on every side."""
    padded = cv2.copyMakeBorder(image, FRAME_PAD, FRAME_PAD, FRAME_PAD, FRAME_PAD, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(cv2.cvtColor(padded, cv2.COLOR_GRAY2BGR))


#: MediaPipe FaceLandmarker (478-point topology) eye corners: outer and inner corner of the eye on the image's left,
#: then of the other eye; their midpoints stand in for YuNet's eye points.
MP_EYE_CORNERS = ((33, 133), (362, 263))


def landmark_roll_deg(landmarks: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Roll of the eye line in degrees, ``(N,)``, from the labeller's 478 landmarks ``(N, 478, 2+)`` (any square-crop
    coordinates): the same angle as :func:`eye_roll_deg` measures on YuNet's points, for faces labelled by MediaPipe
    (the LFW and video caches)."""
    lm = np.asarray(landmarks, np.float64)
    if lm.shape[0] == 0:
        return np.zeros(0, np.float32)
    (a, b), (c, d) = MP_EYE_CORNERS
    five = np.zeros((lm.shape[0], 5, 2))
    five[:, 0] = (lm[:, a, :2] + lm[:, b, :2]) / 2
    five[:, 1] = (lm[:, c, :2] + lm[:, d, :2]) / 2
    return eye_roll_deg(five)


def _detect_boxes(
    images: npt.NDArray[np.uint8], split: npt.NDArray[np.str_], detector_name: str, progress: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Boxes ``(N, 4)`` and landmarks ``(N, 5, 2)`` in the padded frame, and the detector hit ``(N,)``."""
    from ..plugin_registry import create

    detector = create("face_detector", detector_name)
    boxes = np.zeros((images.shape[0], 4), np.float32)
    landmarks = np.zeros((images.shape[0], 5, 2), np.float32)
    found = np.zeros(images.shape[0], bool)
    it: Any = range(images.shape[0])
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="fer2013 detect", unit="img", mininterval=2.0)
    try:
        for i in it:
            frame = fer_frame(images[i])
            big = np.ascontiguousarray(
                cv2.resize(frame, None, fx=DETECT_UP, fy=DETECT_UP, interpolation=cv2.INTER_CUBIC)
            )
            if hasattr(detector, "detect_landmarks"):
                xyxy, score, kps = detector.detect_landmarks(big)
            else:  # a detector without landmarks: boxes only, roll 0
                det = detector.detect(big)
                xyxy, score, kps = det.xyxy, det.score, np.zeros((len(det), 5, 2), np.float32)
            j = pick_face(xyxy, score)
            if j is not None:
                boxes[i] = xyxy[j] / DETECT_UP
                landmarks[i] = kps[j] / DETECT_UP
                found[i] = True
    finally:
        detector.close()
    in_train = found & (split == "train")
    if not in_train.any():
        raise ExpNetError("the detector found no face in any FER2013 train image")
    boxes[~found] = np.median(boxes[in_train], axis=0)
    return boxes, landmarks, found


def build_fer_cache(
    npz_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    label: bool = True,
    detector_name: str = "yunet",
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Detect, crop (and label) every FER2013 image; write ``out_path`` (npz). ``limit`` keeps the first N."""
    data = load_fer_npz(npz_path)
    images = data["images"][:limit]
    n = images.shape[0]
    boxes, landmarks, found = _detect_boxes(images, data["split"][:limit], detector_name, progress)
    has_eyes = found & np.any(landmarks != 0, axis=(1, 2))
    roll = np.where(has_eyes, eye_roll_deg(landmarks), 0.0).astype(np.float32)
    wide_c = label_contract(WIDE_CROP, WIDE_EXPAND)
    crops = np.empty((n, WIDE_CROP, WIDE_CROP, 3), np.uint8)
    lab_found = np.zeros(n, bool)
    lms = np.zeros((n, 478, 3), np.float32)
    bss = np.zeros((n, 52), np.float32)
    labeller: Any = None
    if label:
        from .labeller import Labeller

        labeller = Labeller()
    it: Any = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="fer2013 crop+label" if label else "fer2013 crop", unit="img", mininterval=2.0)
    try:
        label_c = label_contract(LABEL_CROP)
        for i in it:
            frame = fer_frame(images[i])
            crops[i] = crop_faces(frame, boxes[i][None], wide_c)[0]
            if labeller is not None:
                ok, lm, bs, _pose = labeller.label_one(crop_faces(frame, boxes[i][None], label_c)[0])
                lab_found[i], lms[i], bss[i] = ok, lm, bs
    finally:
        if labeller is not None:
            labeller.close()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out_path) as fh:
        np.savez(
            fh,
            ids=data["id"][:limit],
            split=data["split"][:limit],
            labels=data["label"][:limit],
            boxes=boxes,
            landmarks=landmarks,
            roll=roll,
            detected=found,
            crops=crops,
            full_found=lab_found,
            full_landmarks=lms,
            full_blendshapes=bss,
            meta_version=np.asarray(FER_CACHE_VERSION),
        )
    logger.info(
        "fer2013 cache written path=%s faces=%d detected=%d labelled=%d",
        out_path,
        n,
        int(found.sum()),
        int(lab_found.sum()),
    )
    return out_path


def load_fer_cache(path: str | os.PathLike[str]) -> FerCache:
    """Read a cache written by :func:`build_fer_cache`."""
    try:
        with np.load(path, allow_pickle=False) as d:
            if str(d["meta_version"]) != FER_CACHE_VERSION:
                raise ExpNetError(
                    f"FER2013 cache {path} is {d['meta_version']}, expected {FER_CACHE_VERSION}: rebuild it"
                )
            fields = {k: d[k] for k in FerCache.__dataclass_fields__}
    except (OSError, KeyError, ValueError) as exc:
        raise ExpNetError(f"cannot read FER2013 cache {path}: {exc}") from exc
    return FerCache(**fields)
