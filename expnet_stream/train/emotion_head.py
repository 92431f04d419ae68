"""Fitting the coefficient emotion head (scikit-learn; training extra). The head itself, which the worker loads with
numpy only, lives in :mod:`expnet_stream.models.emotion`.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from ..errors import ModelError
from ..models.emotion import EMOTIONS, EmotionHead

logger = logging.getLogger(__name__)

__all__ = ["EMOTIONS", "EmotionHead", "fit_emotion_head"]


def fit_emotion_head(
    coeffs: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    basis_id: str,
    classes: tuple[str, ...] = EMOTIONS,
    c: float = 0.5,
    balance_power: float = 0.5,
    seed: int = 0,
) -> EmotionHead:
    """Fit the head (scikit-learn). Class weights are ``(1 / frequency) ** balance_power`` (0.5: square-root
    balancing, a compromise between skewed label sets and never predicting the rare emotions).

    The head's classes are those of ``classes`` present in ``labels``: a class without training faces is left out
    (published as unsupported), never kept as a column that is silently always ~0."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(coeffs, np.float64)
    y = np.asarray(labels).astype(str)
    keep = np.isin(y, classes)
    x, y = x[keep], y[keep]
    present = [k for k in classes if (y == k).any()]
    if len(present) < 2:
        raise ModelError(f"need at least two emotion classes, got {present}")
    counts = {k: int((y == k).sum()) for k in present}
    weights = {k: (len(y) / (len(present) * counts[k])) ** balance_power for k in present}
    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=5000, class_weight=weights, random_state=seed)
    clf.fit((x - mu) / sd, y)
    out_classes = tuple(present)
    w = np.zeros((len(out_classes), x.shape[1]))
    b = np.zeros(len(out_classes))
    for row, k in enumerate(clf.classes_):
        i = out_classes.index(str(k))
        w[i] = clf.coef_[row] / sd
        b[i] = clf.intercept_[row] - float((clf.coef_[row] * mu / sd).sum())
    info = {"train_faces": len(y), "class_counts": counts, "C": c, "balance_power": balance_power}
    logger.info("emotion head fitted faces=%d classes=%s", len(y), present)
    return EmotionHead(w.astype(np.float32), b.astype(np.float32), out_classes, basis_id, info)
