"""Recipe choices made on FER+ ``val`` before a long training run (``expnet-stream choose-recipe``).

A choice between two ways of feeding the emotion loss costs a training run each if made end to end; a linear probe on
a trained trunk's frozen features answers it in minutes, on the same faces and the same split rule: probes are fitted
on FER2013 ``train`` and scored on FER+ ``val`` majority labels; ``test`` is never read. Two choices:

* **unmatched faces** (FER2013 faces without FER+ votes, 7% of ``train``): keep them with their FER2013 label as a
  one-hot target, or drop them;
* **framing**: the paper crop as the worker cuts it today, or the same crop with the eyes levelled (rotated about the
  box centre by the roll of YuNet's eye landmarks, :func:`~expnet_stream.train.fer.level_crops`).

A variant is kept only when it beats the other by more than ``min_gain`` (0.5 points, about 17 of 3,464 faces): the
simpler recipe wins a tie.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from ..models.emotion import EMOTIONS

logger = logging.getLogger(__name__)

__all__ = ["fit_soft_linear", "probe_choices", "soft_cross_entropy"]


def soft_cross_entropy(logits: Any, target: Any, weight: Any | None = None) -> Any:
    """Mean over faces of ``-sum_c target_c * log softmax(logits)_c`` (torch tensors), each face weighted by
    ``weight`` when given (normalised by the sum of the weights). With one-hot targets it is the usual cross-entropy.

    >>> import torch
    >>> z = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> round(float(soft_cross_entropy(z, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))), 4)
    0.4100
    """
    import torch

    per_face = -(target * torch.log_softmax(logits, dim=1)).sum(1)
    if weight is None:
        return per_face.mean()
    return (per_face * weight).sum() / weight.sum().clamp(min=1e-12)


def fit_soft_linear(
    x: npt.NDArray[np.float32],
    target: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32] | None = None,
    *,
    l2: float = 1e-3,
    steps: int = 300,
    seed: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Multinomial logistic regression on soft targets ``(N, C)`` (features standardised inside; L-BFGS);
    returns ``(W (C, D), b (C,))`` for raw features: ``logits = x @ W.T + b``."""
    import torch

    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    t = torch.from_numpy(target.astype(np.float32))
    w = None if weight is None else torch.from_numpy(weight.astype(np.float32))
    lin = torch.nn.Linear(x.shape[1], target.shape[1])
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = soft_cross_entropy(lin(xs), t, w) + l2 * (lin.weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    wt = lin.weight.detach().numpy() / sd[None, :]
    b = lin.bias.detach().numpy() - wt @ mu
    return wt.astype(np.float32), b.astype(np.float32)


def _accuracy(w: npt.NDArray[np.float32], b: npt.NDArray[np.float32], x: npt.NDArray[np.float32], y: Any) -> float:
    return float(((x @ w.T + b).argmax(1) == y).mean())


def probe_choices(
    checkpoint: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    min_gain: float = 0.005,
    class_power: float = 0.5,
) -> dict[str, Any]:
    """Score both choices with linear probes on ``checkpoint``'s frozen trunk; returns the table (and the choices)."""
    import torch

    from ..models.registry import load_checkpoint
    from .basis import DEFAULT_BASIS_ID
    from .dataset import framed_crops
    from .emotion_data import class_weights, load_emotion_data
    from .sources import PAPER_CROP, WIDE_CROP

    model, contract = load_checkpoint(checkpoint)
    crop = contract.crop_size
    # one read: unmatched faces carry their FER2013 label (weight 1); the "drop" variant masks them out
    emo = load_emotion_data(
        cache_dir,
        "fer2013",
        DEFAULT_BASIS_ID,  # the probes read emotions only: any shipped basis encodes the unused coefficient targets
        round(crop * WIDE_CROP / PAPER_CROP),
        data_dir=data_dir,
        keep_unmatched=True,
    )
    tr, va = emo.split == "train", emo.split == "val"
    va_idx = np.flatnonzero(va & (emo.labels >= 0))
    usable = emo.has_votes & (emo.weight > 0)
    model.eval()

    def feats(crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        out = []
        with torch.no_grad():
            for i in range(0, len(crops), 256):
                out.append(model.trunk(torch.from_numpy(contract.normalize(crops[i : i + 256]))).numpy())
        return np.concatenate(out).astype(np.float32)

    idx = np.flatnonzero(tr | va)
    plain = np.zeros((len(emo.split), model.fc.in_features), np.float32)
    level = np.zeros_like(plain)
    logger.info("probe features faces=%d (x2 framings)", idx.size)
    plain[idx] = feats(framed_crops(emo.wide[idx], emo.roll[idx], crop, level_eyes=False))
    level[idx] = feats(framed_crops(emo.wide[idx], emo.roll[idx], crop, level_eyes=True))
    cw = class_weights(emo.labels[tr & usable], len(EMOTIONS), class_power)

    def probe(x: npt.NDArray[np.float32], keep_unmatched: bool) -> float:
        rows = np.flatnonzero(tr & ((emo.weight > 0) if keep_unmatched else usable))
        w = (emo.dist[rows] * cw[None, :]).sum(1)
        wt, b = fit_soft_linear(x[rows], emo.dist[rows], w)
        return _accuracy(wt, b, x[va_idx], emo.labels[va_idx])

    roll = emo.roll[idx]
    table: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "val_faces": int(va_idx.size),
        "train_faces_with_votes": int((tr & usable).sum()),
        "train_faces_unmatched": int((tr & ~emo.has_votes).sum()),
        "detected_with_eyes": float(np.mean(roll != 0)),
        "abs_roll_deg_median": float(np.median(np.abs(roll))),
        "abs_roll_deg_p90": float(np.percentile(np.abs(roll), 90)),
        "val_accuracy": {
            "plain/drop_unmatched": probe(plain, False),
            "plain/keep_unmatched": probe(plain, True),
            "levelled/drop_unmatched": probe(level, False),
        },
        "min_gain": min_gain,
    }
    acc = table["val_accuracy"]
    table["keep_unmatched"] = bool(acc["plain/keep_unmatched"] > acc["plain/drop_unmatched"] + min_gain)
    table["level_eyes"] = bool(acc["levelled/drop_unmatched"] > acc["plain/drop_unmatched"] + min_gain)
    table["test_sets_not_used"] = ["fer2013/test", "ferplus/test", "eval/jaffe"]
    logger.info("recipe choices %s", table)
    return table
