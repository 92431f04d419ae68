"""Choose and calibrate a model's published emotion output on ``val`` (``expnet-stream ship``).

A model with an eight-class head (FER+ votes, contempt included) is scored on the FER+ majority labels of ``val``;
a seven-class one (FER2013 labels) on FER2013's. Two candidates are measured on the validation split, never on
``test``:

* the **trunk head** (multi-task, inside the model) with a temperature fitted on ``val``;
* a **coefficient head**: multinomial logistic regression on the model's own 29 coefficients of the FER2013 ``train``
  faces (square-root class balancing), temperature fitted on ``val``. It is also shipped as the fallback for models
  without a trunk head (and engines that would not read it).

The trunk head is published (``contract.emotion_output_name``) when its ``val`` accuracy is at least the coefficient
head's; otherwise the contract names no emotion output and the coefficient head is used.

Rare classes (contempt and disgust are 0.6% of the FER+ training faces each) can be under-predicted by a head fitted
to the crowd's frequencies. :func:`choose_prior_adjustment` may shift the trunk head's logits by ``-tau * log(prior)``
(logit adjustment, Menon et al., ICLR 2021), ``tau`` chosen on ``val``: the most accurate ``tau`` whose every class
recall reaches ``min_recall``, else the one with the best lowest recall. The shift goes into the head's bias (so the
exported graph is unchanged) and the temperature is fitted after it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from ..models.contract import PreprocessContract
from ..models.emotion import (
    EMOTIONS,
    EmotionHead,
    emotion_metrics,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from .dataset import framed_crops
from .emotion_data import load_emotion_data
from .emotion_head import fit_emotion_head
from .predict import predict_crops_all
from .sources import PAPER_CROP, WIDE_CROP

logger = logging.getLogger(__name__)

__all__ = ["EMOTION_OUTPUT_NAME", "choose_prior_adjustment", "fit_emotion_outputs"]

TAU_GRID = tuple(round(0.1 * i, 1) for i in range(16))

EMOTION_OUTPUT_NAME = "emotion"


def choose_prior_adjustment(
    logits: npt.NDArray[Any], labels: npt.NDArray[np.int64], prior: npt.NDArray[Any], *, min_recall: float = 0.4
) -> tuple[float, list[dict[str, Any]]]:
    """``(tau, table)``: the logit adjustment ``logits - tau * log(prior)`` chosen on validation data (see the
    module docstring); ``table`` has accuracy and lowest class recall for every ``tau`` of :data:`TAU_GRID`.

    >>> z = np.array([[2.0, 0.0], [2.0, 1.5], [0.0, 2.0]])
    >>> tau, _ = choose_prior_adjustment(z, np.array([0, 1, 1]), np.array([0.9, 0.1]), min_recall=1.0)
    >>> tau > 0
    True
    """
    log_prior = np.log(np.maximum(np.asarray(prior, np.float64), 1e-12))
    present = np.bincount(labels, minlength=logits.shape[1]) > 0
    table = []
    for tau in TAU_GRID:
        pred = (np.asarray(logits, np.float64) - tau * log_prior).argmax(1)
        recall = [float((pred[labels == c] == c).mean()) for c in range(logits.shape[1]) if present[c]]
        table.append({"tau": tau, "accuracy": float((pred == labels).mean()), "min_recall": min(recall)})
    ok = [r for r in table if r["min_recall"] >= min_recall]
    best = (
        max(ok, key=lambda r: (r["accuracy"], -r["tau"]))
        if ok
        else max(table, key=lambda r: (r["min_recall"], r["accuracy"]))
    )
    return float(best["tau"]), table


def fit_emotion_outputs(
    model: Any,
    contract: PreprocessContract,
    cache_dir: str | os.PathLike[str],
    *,
    cache_name: str = "fer2013",
    data_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreprocessContract, EmotionHead, dict[str, Any]]:
    """``(contract with or without the calibrated trunk output, calibrated coefficient head, measurements on val)``."""
    crop = contract.crop_size
    num = int(getattr(model, "num_emotions", 0))
    targets = "ferplus" if num == len(EMOTIONS) else "fer2013"
    emo = load_emotion_data(
        cache_dir,
        cache_name,
        contract.basis_id,
        round(crop * WIDE_CROP / PAPER_CROP),
        targets=targets,
        data_dir=data_dir,
    )
    classes = emo.classes
    tr, va = (emo.split == "train") & (emo.labels >= 0), (emo.split == "val") & (emo.labels >= 0)
    y_tr, y_va = emo.labels[tr], emo.labels[va]
    level = contract.crop_level_eyes
    crops_va = framed_crops(emo.wide[va], emo.roll[va], crop, level)
    coeffs_tr, _ = predict_crops_all(model, contract, framed_crops(emo.wide[tr], emo.roll[tr], crop, level))
    coeffs_va, logits_va = predict_crops_all(model, contract, crops_va)
    n = len(classes)

    head = fit_emotion_head(coeffs_tr, np.asarray(classes)[y_tr], basis_id=contract.basis_id, classes=classes, c=1.0)
    head_logits = head.logits(coeffs_va)
    # fit_emotion_head keeps only classes present in training: map its columns to class indices.
    head_cols = [classes.index(k) for k in head.classes]
    y_head = np.array([head_cols.index(int(v)) if int(v) in head_cols else -1 for v in y_va])
    keep = y_head >= 0
    t_head = fit_temperature(head_logits[keep], y_head[keep])
    head = head.with_temperature(t_head)
    info: dict[str, Any] = {
        "classes": list(classes),
        "labels": "FER+ majority (val)" if targets == "ferplus" else "FER2013 (val)",
        "train_faces": int(tr.sum()),
        "val_faces": int(va.sum()),
        "coefficient_head": {
            "temperature": t_head,
            "val_ece_before": expected_calibration_error(softmax(head_logits[keep]), y_head[keep]),
            **_prefixed(emotion_metrics(softmax(head_logits[keep], t_head), y_head[keep], len(head.classes)), "val"),
        },
    }
    chosen = "coefficient_head"
    if logits_va is not None and getattr(model, "emotion_fc", None) is not None:
        import torch

        # class prior of the training targets (the vote distributions' mean over the faces in the emotion loss)
        w = emo.weight[emo.split == "train"]
        prior = (emo.dist[emo.split == "train"] * w[:, None]).sum(0) / max(float(w.sum()), 1e-12)
        tau, tau_table = choose_prior_adjustment(logits_va, y_va, prior)
        shift = -tau * np.log(np.maximum(prior, 1e-12))
        with torch.no_grad():
            model.emotion_fc.bias += torch.from_numpy(shift.astype(np.float32)).to(model.emotion_fc.bias.device)
        logits_va = logits_va + shift[None, :]
        info["prior_adjustment"] = {
            "tau": tau,
            "train_prior": [float(p) for p in prior],
            "val_table": tau_table,
            "chosen_on": "val",
        }
    if logits_va is not None:
        t = fit_temperature(logits_va, y_va)
        trunk = {
            "temperature": t,
            "val_ece_before": expected_calibration_error(softmax(logits_va), y_va),
            **_prefixed(emotion_metrics(softmax(logits_va, t), y_va, n), "val"),
        }
        # Flip averaging (mean of the face's and its mirror's probabilities) is measured, not shipped: see the card.
        _, logits_flip = predict_crops_all(model, contract, np.ascontiguousarray(crops_va[:, :, ::-1]))  # shifted
        if logits_flip is not None:
            avg = (softmax(logits_va, t) + softmax(logits_flip, t)) / 2.0
            trunk["val_accuracy_flip_averaged"] = float((avg.argmax(1) == y_va).mean())
        info["trunk_head"] = trunk
        if trunk["val_accuracy"] >= info["coefficient_head"]["val_accuracy"]:
            chosen = "trunk_head"
            contract = contract.model_copy(
                update={
                    "emotion_output_name": EMOTION_OUTPUT_NAME,
                    "emotion_classes": classes,
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
