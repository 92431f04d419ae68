"""Choose and calibrate a model's published emotion output on FER2013 ``val`` (``expnet-stream ship``).

Two candidates are measured on the validation split, never on ``test``:

* the **trunk head** (multi-task, inside the model) with a temperature fitted on ``val``;
* a **coefficient head**: multinomial logistic regression on the model's own 29 coefficients of the FER2013 ``train``
  faces (square-root class balancing), temperature fitted on ``val``. It is also shipped as the fallback for models
  without a trunk head (and engines that would not read it).

The trunk head is published (``contract.emotion_output_name``) when its ``val`` accuracy is at least the coefficient
head's; otherwise the contract names no emotion output and the coefficient head is used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ..models.contract import PreprocessContract
from ..models.emotion import (
    FER_CLASSES,
    EmotionHead,
    emotion_metrics,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from .dataset import center_crops
from .emotion_head import fit_emotion_head
from .sources import PAPER_CROP, WIDE_CROP
from .trainer import load_emotion_data, predict_crops_all

logger = logging.getLogger(__name__)

__all__ = ["EMOTION_OUTPUT_NAME", "fit_emotion_outputs"]

EMOTION_OUTPUT_NAME = "emotion"


def fit_emotion_outputs(
    model: Any, contract: PreprocessContract, cache_dir: str | os.PathLike[str], *, cache_name: str = "fer2013"
) -> tuple[PreprocessContract, EmotionHead, dict[str, Any]]:
    """``(contract with or without the calibrated trunk output, calibrated coefficient head, measurements on val)``."""
    crop = contract.crop_size
    emo = load_emotion_data(cache_dir, cache_name, contract.basis_id, round(crop * WIDE_CROP / PAPER_CROP))
    tr, va = emo.split == "train", emo.split == "val"
    y_tr, y_va = emo.labels[tr], emo.labels[va]
    coeffs_tr, _ = predict_crops_all(model, contract, center_crops(emo.wide[tr], crop))
    coeffs_va, logits_va = predict_crops_all(model, contract, center_crops(emo.wide[va], crop))
    n = len(FER_CLASSES)

    head = fit_emotion_head(
        coeffs_tr, np.asarray(FER_CLASSES)[y_tr], basis_id=contract.basis_id, classes=FER_CLASSES, c=1.0
    )
    head_logits = head.logits(coeffs_va)
    # fit_emotion_head keeps only classes present in training: map its columns to FER_CLASSES indices.
    head_cols = [FER_CLASSES.index(k) for k in head.classes]
    y_head = np.array([head_cols.index(int(v)) if int(v) in head_cols else -1 for v in y_va])
    keep = y_head >= 0
    t_head = fit_temperature(head_logits[keep], y_head[keep])
    head = head.with_temperature(t_head)
    info: dict[str, Any] = {
        "classes": list(FER_CLASSES),
        "train_faces": int(tr.sum()),
        "val_faces": int(va.sum()),
        "coefficient_head": {
            "temperature": t_head,
            "val_ece_before": expected_calibration_error(softmax(head_logits[keep]), y_head[keep]),
            **_prefixed(emotion_metrics(softmax(head_logits[keep], t_head), y_head[keep], len(head.classes)), "val"),
        },
    }
    chosen = "coefficient_head"
    if logits_va is not None:
        t = fit_temperature(logits_va, y_va)
        trunk = {
            "temperature": t,
            "val_ece_before": expected_calibration_error(softmax(logits_va), y_va),
            **_prefixed(emotion_metrics(softmax(logits_va, t), y_va, n), "val"),
        }
        info["trunk_head"] = trunk
        if trunk["val_accuracy"] >= info["coefficient_head"]["val_accuracy"]:
            chosen = "trunk_head"
            contract = contract.model_copy(
                update={
                    "emotion_output_name": EMOTION_OUTPUT_NAME,
                    "emotion_classes": FER_CLASSES,
                    "emotion_temperature": t,
                }
            )
    if chosen == "coefficient_head":
        contract = contract.model_copy(
            update={"emotion_output_name": None, "emotion_classes": (), "emotion_temperature": 1.0}
        )
    info["published"] = chosen
    logger.info(
        "emotion outputs on val: coefficient head accuracy=%.4f trunk head accuracy=%s published=%s",
        info["coefficient_head"]["val_accuracy"],
        f"{info['trunk_head']['val_accuracy']:.4f}" if "trunk_head" in info else "n/a",
        chosen,
    )
    return contract, head, info


def _prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {f"{prefix}_{k}": v for k, v in metrics.items() if k != "ece"}
    out[f"{prefix}_ece_after"] = metrics["ece"]
    return out
