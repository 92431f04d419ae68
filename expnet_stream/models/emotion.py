"""Emotion outputs at run time (numpy only): the coefficient head, temperature calibration, calibration error.

A model publishes emotions in one of two ways:

1. **Trunk head** (models trained since ``fer2013`` weights): a second linear layer on the network's pooled features,
   trained jointly with the coefficients on labelled faces (FER2013). The exported ONNX file has a second output
   (``contract.emotion_output_name``) that already holds calibrated probabilities: ``softmax(logits / T)`` with the
   temperature ``T`` fitted on the validation split (recorded as ``contract.emotion_temperature``).
2. **Coefficient head** (:class:`EmotionHead`, an ``.npz`` beside the model): a linear softmax on the 29 expression
   coefficients, the paper's framing. It is the fallback for models without a trunk head (older models, converted
   official weights, TensorRT plans built from them).

Classes a model cannot tell (FER2013 has no ``contempt``) are *unsupported*: they are absent from the published
probabilities (never a column that is silently always ~0) and listed in ``unsupported``.

>>> head = EmotionHead(np.zeros((7, 29), np.float32), np.zeros(7, np.float32), FER_CLASSES)
>>> head.predict_proba(np.zeros((2, 29), np.float32)).sum(1).round(6).tolist()
[1.0, 1.0]
>>> head.unsupported
('contempt',)
>>> softmax(np.array([[0.0, np.log(3.0)]]), temperature=1.0).round(3).tolist()
[[0.25, 0.75]]
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

__all__ = [
    "EMOTIONS",
    "FER_CLASSES",
    "EmotionHead",
    "ModelEmotions",
    "emotion_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "softmax",
    "unsupported_of",
]

#: Every emotion the product knows (the seven of CK+: six basic emotions, contempt, and neutral).
EMOTIONS = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
#: FER2013's seven classes (no contempt), in the order of the trunk head's outputs.
FER_CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
FORMAT = "expnet-stream/emotion-head-v1"


def unsupported_of(classes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The product's emotions that a model with output ``classes`` cannot tell."""
    return tuple(k for k in EMOTIONS if k not in classes)


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """Row-wise ``softmax(logits / temperature)``, numerically stable."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def expected_calibration_error(proba: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 15) -> float:
    """ECE of the top-1 confidence: ``sum_b |B|/N * |accuracy(B) - confidence(B)|`` over equal-width bins."""
    p = np.asarray(proba, np.float64)
    y = np.asarray(labels, np.int64)
    if p.shape[0] == 0:
        return float("nan")
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def emotion_metrics(proba: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int) -> dict[str, Any]:
    """Accuracy, per-class recall (0 for a class without faces), balanced accuracy over the classes that have faces,
    NLL, ECE and the confusion matrix (rows: true class, columns: predicted) of ``proba (N, C)`` against labels."""
    p = np.asarray(proba, np.float64)
    y = np.asarray(labels, np.int64)
    pred = p.argmax(1)
    conf = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(conf, (y, pred), 1)
    support = conf.sum(1)
    recall = conf.diagonal() / np.maximum(support, 1)
    present = support > 0
    n = len(y)
    return {
        "n": int(n),
        "accuracy": float((pred == y).mean()) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "recall": [float(r) for r in recall],
        "support": [int(s) for s in support],
        "nll": float(-np.log(np.maximum(p[np.arange(n), y], 1e-12)).mean()) if n else float("nan"),
        "ece": expected_calibration_error(p, y),
        "confusion": conf.tolist(),
    }


def fit_temperature(logits: npt.ArrayLike, labels: npt.ArrayLike, *, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (golden-section search on log T).

    Fitted on a validation split (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017); it rescales
    confidence without changing any prediction.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if z.shape[0] == 0:
        raise ModelError("cannot fit a temperature on no samples")

    def nll(log_t: float) -> float:
        p = softmax(z, float(np.exp(log_t)))
        return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())

    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(np.exp((a + b) / 2.0))


class ModelEmotions:
    """The model's own emotion output (a trunk head inside the ONNX file), read by the engine's ``infer_all``.

    >>> out = ModelEmotions(FER_CLASSES)
    >>> out.predict_proba(np.zeros((1, 29)), np.full((1, 7), 1 / 7, np.float32)).shape, out.unsupported
    ((1, 7), ('contempt',))
    """

    source = "model"

    def __init__(self, classes: tuple[str, ...] | list[str]) -> None:
        self.classes = tuple(classes)

    @property
    def unsupported(self) -> tuple[str, ...]:
        return unsupported_of(self.classes)

    def predict_proba(
        self, coeffs: npt.ArrayLike, model_probs: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        """The engine's emotion probabilities, checked; ``coeffs`` only gives the expected row count."""
        n = np.asarray(coeffs).shape[0]
        if model_probs is None:
            raise ModelError("the engine returned no emotion output for a model whose contract names one")
        p = np.asarray(model_probs, np.float32)
        if p.shape != (n, len(self.classes)):
            raise ModelError(f"emotion output has shape {p.shape}, expected ({n}, {len(self.classes)})")
        return p


@dataclass(frozen=True)
class EmotionHead:
    """Linear softmax on coefficients: ``weight (C, K)``, ``bias (C,)``, class names ``classes`` (C), ``basis_id``.

    ``temperature`` divides the logits (calibration fitted on validation data; 1.0 = none).
    """

    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    classes: tuple[str, ...] = EMOTIONS
    basis_id: str = "mp478-blendshape-pca29-v1"
    info: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    source = "coefficients"

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.weight.shape[0] != len(self.classes):
            raise ValueError(f"weight must be ({len(self.classes)}, K), got {self.weight.shape}")
        if self.bias.shape != (len(self.classes),):
            raise ValueError(f"bias must be ({len(self.classes)},), got {self.bias.shape}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @property
    def num_coeffs(self) -> int:
        return int(self.weight.shape[1])

    @property
    def unsupported(self) -> tuple[str, ...]:
        """Emotions of :data:`EMOTIONS` this head cannot tell."""
        return unsupported_of(self.classes)

    def logits(self, coeffs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """``(N, K)`` coefficients -> ``(N, C)`` uncalibrated logits."""
        x = np.asarray(coeffs, np.float32)
        if x.ndim != 2 or x.shape[1] != self.num_coeffs:
            raise ValueError(f"coeffs must be (N, {self.num_coeffs}), got {x.shape}")
        out: npt.NDArray[np.float32] = x @ self.weight.T + self.bias
        return out

    def predict_proba(
        self, coeffs: npt.ArrayLike, model_probs: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        """``(N, K)`` coefficients -> ``(N, C)`` calibrated probabilities (rows sum to 1), in :attr:`classes` order.

        ``model_probs`` (the model's own emotion output, if any) is ignored: this head reads the coefficients.
        """
        return softmax(self.logits(coeffs), self.temperature).astype(np.float32)

    def predict(self, coeffs: npt.ArrayLike) -> list[str]:
        """Most probable class name per row."""
        return [self.classes[i] for i in self.predict_proba(coeffs).argmax(1)]

    def with_temperature(self, temperature: float) -> EmotionHead:
        """The same head with another calibration temperature."""
        return EmotionHead(self.weight, self.bias, self.classes, self.basis_id, self.info, float(temperature))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.npz`` (weights) with the class names, basis id, temperature and info as JSON inside."""
        path = Path(path)
        meta = {
            "format": FORMAT,
            "classes": list(self.classes),
            "basis_id": self.basis_id,
            "temperature": self.temperature,
            "info": self.info,
        }
        np.savez(path, weight=self.weight.astype(np.float32), bias=self.bias.astype(np.float32), meta=json.dumps(meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmotionHead:
        """Read a head written by :meth:`save` (heads without a temperature read as 1.0); ModelError when invalid."""
        try:
            with np.load(path, allow_pickle=False) as d:
                meta = json.loads(str(d["meta"]))
                weight, bias = d["weight"].astype(np.float32), d["bias"].astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read emotion head {path}: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise ModelError(f"{path} is not an emotion head ({FORMAT!r} expected)")
        try:
            return cls(
                weight,
                bias,
                tuple(meta["classes"]),
                str(meta["basis_id"]),
                dict(meta.get("info", {})),
                float(meta.get("temperature", 1.0)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"invalid emotion head {path}: {exc}") from exc
