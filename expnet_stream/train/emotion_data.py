"""Emotion-labelled faces for multi-task training, choosing and reporting: FER2013 faces with FER+ vote targets.

:func:`load_emotion_data` reads the FER2013 face cache (:mod:`.fer`: worker-framed wide crops, eye roll) and attaches
the targets of the emotion loss, over one class set:

* ``targets="ferplus"`` (default since ``lfw-videos-ferplus-v2``): the FER+ vote distribution over the eight
  :data:`~expnet_stream.models.emotion.EMOTIONS` (contempt included, :mod:`.ferplus`); faces whose votes are mostly
  unknown/not-a-face get weight 0; faces without votes (unmatched) get their FER2013 label one-hot when
  ``keep_unmatched`` (decided on ``val``, :mod:`.choices`), else weight 0. The evaluation label is the FER+ majority.
* ``targets="fer2013"``: FER2013's single labels over its seven classes (the recipe of ``lfw-videos-fer2013-v1``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from ..errors import ExpNetError
from ..models.emotion import EMOTIONS, FER_CLASSES

logger = logging.getLogger(__name__)

__all__ = ["EMOTION_TARGETS", "EmotionData", "class_weights", "emotion_classes", "load_emotion_data"]

EMOTION_TARGETS = ("ferplus", "fer2013")


def emotion_classes(targets: str) -> tuple[str, ...]:
    """The class set of an emotion target kind: FER+ -> the eight EMOTIONS, FER2013 -> its seven classes."""
    if targets not in EMOTION_TARGETS:
        raise ExpNetError(f"emotion targets {targets!r}: expected one of {EMOTION_TARGETS}")
    return EMOTIONS if targets == "ferplus" else FER_CLASSES


@dataclass(frozen=True)
class EmotionData:
    """FER2013 faces (N): wide crops, split, eye roll, soft emotion targets ``(N, C)`` over ``classes`` with their loss
    weight (0: out of the emotion loss), the evaluation label (index into ``classes``, -1: none), coefficient targets
    and their mask. ``has_votes``: the face has FER+ votes (all True for FER2013 targets)."""

    wide: npt.NDArray[np.uint8]
    split: npt.NDArray[np.str_]
    roll: npt.NDArray[np.float32]
    classes: tuple[str, ...]
    dist: npt.NDArray[np.float32]
    weight: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    targets: npt.NDArray[np.float32]
    has_targets: npt.NDArray[np.bool_]
    has_votes: npt.NDArray[np.bool_]


def class_weights(labels: npt.NDArray[np.int64], num_classes: int, power: float) -> npt.NDArray[np.float32]:
    """``(N / (C * count_c)) ** power`` per class (0: none, 1: full inverse-frequency balancing); labels < 0 ignored.

    >>> class_weights(np.array([0, 0, 0, 1]), 2, 1.0).tolist()
    [0.6666666865348816, 2.0]
    """
    counts = np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.float64)
    w: npt.NDArray[np.float32] = ((counts.sum() / (num_classes * np.maximum(counts, 1.0))) ** power).astype(np.float32)
    return w


def load_emotion_data(
    cache_dir: str | os.PathLike[str],
    name: str,
    basis_id: str,
    wide_size: int,
    *,
    targets: str = "ferplus",
    data_dir: str | os.PathLike[str] | None = None,
    keep_unmatched: bool = False,
) -> EmotionData:
    """Read ``<cache_dir>/faces/<name>.npz`` (a FER2013 cache), encode its coefficient targets, attach emotion
    targets (FER+ votes from ``<data_dir>/train/fer2013/ferplus.npz``, or FER2013 labels)."""
    from .basis import load_basis
    from .fer import load_fer_cache

    path = Path(cache_dir) / "faces" / f"{name}.npz"
    if not path.is_file():
        raise ExpNetError(f"emotion cache {path} is missing: run `expnet-stream label --sets {name}` first")
    cache = load_fer_cache(path)
    wide = cache.crops
    if wide.shape[1] != wide_size:
        wide = np.stack([cv2.resize(w, (wide_size, wide_size), interpolation=cv2.INTER_AREA) for w in wide])
    basis = load_basis(basis_id)
    ok = cache.full_found.astype(bool)
    coeffs = np.zeros((len(cache), basis.num_coeffs), np.float32)
    if ok.any():
        coeffs[ok] = basis.encode(cache.full_landmarks[ok], cache.full_blendshapes[ok])
    classes = emotion_classes(targets)
    fer_idx = cache.label_index()
    if targets == "fer2013":
        dist = np.eye(len(classes), dtype=np.float32)[fer_idx]
        weight = np.ones(len(cache), np.float32)
        labels = fer_idx
        matched = np.ones(len(cache), bool)
    else:
        from .evaluate import default_data_dir
        from .ferplus import fer_to_emotion_index, load_ferplus, majority_labels, usable_for_emotions, vote_distribution

        root = Path(data_dir) if data_dir is not None else default_data_dir()
        fp = load_ferplus(root / "train" / "fer2013" / "ferplus.npz", len(cache))
        matched = fp["row"] >= 0
        dist = vote_distribution(fp["votes"])
        weight = (matched & usable_for_emotions(fp["votes"])).astype(np.float32)
        labels = majority_labels(fp["votes"])
        labels[~matched] = -1
        if keep_unmatched:
            onehot = np.eye(len(classes), dtype=np.float32)[fer_to_emotion_index(fer_idx)]
            dist = np.where(matched[:, None], dist, onehot).astype(np.float32)
            weight[~matched] = 1.0
    logger.info(
        "emotion cache name=%s faces=%d targets=%s in emotion loss=%d with coefficient targets=%d",
        name,
        len(cache),
        targets,
        int((weight > 0).sum()),
        int(ok.sum()),
    )
    return EmotionData(wide, cache.split, cache.roll, classes, dist, weight, labels, coeffs, ok, matched)
