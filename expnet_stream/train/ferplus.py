"""FER+ crowd votes (Barsoum et al., ICMI 2016, arXiv 1608.01041) as emotion targets for the FER2013 faces.

``ferplus.npz`` of the shared data holds, row by row aligned with ``fer2013.npz``, the 10 taggers' votes over
``neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF`` (not a face); faces without a
unique match have ``row = -1`` and no votes (see its SOURCE.md). From them:

* :func:`vote_distribution`: the distribution of the emotion votes over the product's eight :data:`EMOTIONS`
  (contempt included), the target of the cross-entropy (the paper's "probabilistic label drawing"/cross-entropy
  variant, which beats majority voting in its table 2);
* :func:`usable_for_emotions`: faces whose votes are mostly ``unknown`` or ``NF`` stay out of the emotion loss (and
  out of the majority-label evaluation);
* :func:`majority_labels`: the majority emotion per face, the label of the FER+ accuracy (ties go to the first in the
  FER+ column order, as the counts of the data's SOURCE.md do).

>>> votes = np.array([[6, 0, 0, 0, 2, 0, 0, 2, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 7, 3]], np.uint8)
>>> [round(float(p), 2) for p in vote_distribution(votes)[0]]  # anger, contempt, disgust, fear, happiness, ...
[0.2, 0.2, 0.0, 0.0, 0.0, 0.6, 0.0, 0.0]
>>> usable_for_emotions(votes).tolist(), majority_labels(votes).tolist()
([True, False], [5, -1])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ExpNetError
from ..models.emotion import EMOTIONS, FER_CLASSES

__all__ = [
    "FERPLUS_COLUMNS",
    "fer_to_emotion_index",
    "load_ferplus",
    "majority_labels",
    "usable_for_emotions",
    "vote_distribution",
]

#: Column order of the votes in ``ferplus.npz`` (and FER+'s ``fer2013new.csv``).
FERPLUS_COLUMNS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
_EMOTION_COLS = np.array([FERPLUS_COLUMNS.index(k) for k in EMOTIONS])  # FER+ column of each of EMOTIONS


def load_ferplus(path: str | os.PathLike[str], num_faces: int | None = None) -> dict[str, npt.NDArray[Any]]:
    """``votes (N, 10)`` uint8 and ``row (N,)`` (-1: unmatched) of ``ferplus.npz``, checked against the expected
    column order and, when given, the number of FER2013 faces."""
    try:
        with np.load(path, allow_pickle=False) as d:
            votes, row, columns = d["votes"], d["row"], tuple(str(c) for c in d["columns"])
    except (OSError, KeyError, ValueError) as exc:
        raise ExpNetError(f"cannot read FER+ votes {path}: {exc}") from exc
    if columns != FERPLUS_COLUMNS:
        raise ExpNetError(f"{path}: vote columns {columns}, expected {FERPLUS_COLUMNS}")
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_COLUMNS) or row.shape != (votes.shape[0],):
        raise ExpNetError(f"{path}: expected votes (N, {len(FERPLUS_COLUMNS)}) and row (N,), got {votes.shape}")
    if num_faces is not None and votes.shape[0] != num_faces:
        raise ExpNetError(f"{path}: {votes.shape[0]} rows of votes for {num_faces} FER2013 faces")
    return {"votes": votes.astype(np.int64), "row": row.astype(np.int64)}


def vote_distribution(votes: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``(N, 8)`` share of each of :data:`EMOTIONS` among a face's emotion votes (all zero without any)."""
    v = np.asarray(votes, np.float64).reshape(-1, len(FERPLUS_COLUMNS))[:, _EMOTION_COLS]
    total = v.sum(1, keepdims=True)
    return np.where(total > 0, v / np.maximum(total, 1.0), 0.0).astype(np.float32)


def usable_for_emotions(votes: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True where more than half of a face's votes name an emotion (not ``unknown`` or ``NF``)."""
    v = np.asarray(votes, np.int64).reshape(-1, len(FERPLUS_COLUMNS))
    emotion = v[:, _EMOTION_COLS].sum(1)
    return np.asarray(emotion * 2 > v.sum(1), bool)


def majority_labels(votes: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Index into :data:`EMOTIONS` of each face's most voted emotion; -1 where the face is not
    :func:`usable_for_emotions`. Ties go to the emotion first in :data:`FERPLUS_COLUMNS`."""
    v = np.asarray(votes, np.int64).reshape(-1, len(FERPLUS_COLUMNS))
    ferplus_order = v[:, : len(EMOTIONS)]  # the first 8 FER+ columns are the emotions
    best_col = ferplus_order.argmax(1)  # first maximum in FER+ order
    lookup = np.array([EMOTIONS.index(FERPLUS_COLUMNS[c]) for c in range(len(EMOTIONS))])
    out: npt.NDArray[np.int64] = np.asarray(lookup[best_col], np.int64)
    out[~usable_for_emotions(v)] = -1
    return out


def fer_to_emotion_index(fer_labels: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """FER2013 label indices (into :data:`FER_CLASSES`) as indices into :data:`EMOTIONS`."""
    lookup = np.array([EMOTIONS.index(k) for k in FER_CLASSES], np.int64)
    return lookup[np.asarray(fer_labels, np.int64)]
