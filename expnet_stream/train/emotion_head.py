"""A small emotion classifier on the 29 expression coefficients: softmax(W @ coeffs + b), numpy-only at run time.

The shipped head (``expnet_stream/models/weights/emotion_head.npz``) is a multinomial logistic regression trained
on the labelled photos (LFW expressions) with the basis coefficients of the labeller as input (what ExpNet learns to
predict). Its input standardisation is folded into ``W`` and ``b``. Fitting needs scikit-learn (training extra);
:meth:`EmotionHead.predict_proba` needs only numpy, so the worker loads it without torch.

>>> head = EmotionHead(np.zeros((8, 29), np.float32), np.zeros(8, np.float32))
>>> head.predict_proba(np.zeros((2, 29), np.float32)).sum(1).round(6).tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelError

logger = logging.getLogger(__name__)

__all__ = ["EMOTIONS", "EmotionHead", "fit_emotion_head"]

EMOTIONS = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
FORMAT = "expnet-stream/emotion-head-v1"


@dataclass(frozen=True)
class EmotionHead:
    """Linear softmax classifier: ``weight (C, K)``, ``bias (C,)``, class names ``classes`` (C), ``basis_id``."""

    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    classes: tuple[str, ...] = EMOTIONS
    basis_id: str = "mp478-blendshape-pca29-v1"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.weight.shape[0] != len(self.classes):
            raise ValueError(f"weight must be ({len(self.classes)}, K), got {self.weight.shape}")
        if self.bias.shape != (len(self.classes),):
            raise ValueError(f"bias must be ({len(self.classes)},), got {self.bias.shape}")

    @property
    def num_coeffs(self) -> int:
        return int(self.weight.shape[1])

    def predict_proba(self, coeffs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """``(N, K)`` coefficients -> ``(N, C)`` probabilities (rows sum to 1), classes in :attr:`classes` order."""
        x = np.asarray(coeffs, np.float32)
        if x.ndim != 2 or x.shape[1] != self.num_coeffs:
            raise ValueError(f"coeffs must be (N, {self.num_coeffs}), got {x.shape}")
        logits = x @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        proba: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return proba

    def predict(self, coeffs: npt.ArrayLike) -> list[str]:
        """Most probable class name per row."""
        return [self.classes[i] for i in self.predict_proba(coeffs).argmax(1)]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.npz`` (weights) with the class names, basis id and info as JSON inside."""
        path = Path(path)
        meta = {"format": FORMAT, "classes": list(self.classes), "basis_id": self.basis_id, "info": self.info}
        np.savez(path, weight=self.weight.astype(np.float32), bias=self.bias.astype(np.float32), meta=json.dumps(meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmotionHead:
        """Read a head written by :meth:`save`; raises ModelError when missing or invalid."""
        try:
            with np.load(path, allow_pickle=False) as d:
                meta = json.loads(str(d["meta"]))
                weight, bias = d["weight"].astype(np.float32), d["bias"].astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read emotion head {path}: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise ModelError(f"{path} is not an emotion head ({FORMAT!r} expected)")
        try:
            return cls(weight, bias, tuple(meta["classes"]), str(meta["basis_id"]), dict(meta.get("info", {})))
        except (KeyError, ValueError) as exc:
            raise ModelError(f"invalid emotion head {path}: {exc}") from exc


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
    balancing, a compromise between the 92% neutral/happy photo set and never predicting the rare emotions)."""
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
    w = np.full((len(classes), x.shape[1]), 0.0)
    b = np.full(len(classes), -30.0)  # a class never seen in training gets ~zero probability
    for row, k in enumerate(clf.classes_):
        i = classes.index(str(k))
        w[i] = clf.coef_[row] / sd
        b[i] = clf.intercept_[row] - float((clf.coef_[row] * mu / sd).sum())
    info = {"train_faces": len(y), "class_counts": counts, "C": c, "balance_power": balance_power}
    logger.info("emotion head fitted faces=%d classes=%s", len(y), present)
    return EmotionHead(w.astype(np.float32), b.astype(np.float32), classes, basis_id, info)
