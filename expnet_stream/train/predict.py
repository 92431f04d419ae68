"""Run a torch ExpNet on cached crops, and score coefficients: shared by training, choosing and reporting."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["predict_crops", "predict_crops_all", "r2_per_coeff"]


def r2_per_coeff(pred: npt.ArrayLike, target: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Coefficient of determination per column: ``1 - SSE / SST`` (SST around the target mean)."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    sse = ((p - t) ** 2).sum(0)
    sst = ((t - t.mean(0)) ** 2).sum(0)
    return np.asarray(1.0 - sse / np.maximum(sst, 1e-12), np.float64)


def predict_crops(
    model: Any, contract: Any, crops: npt.NDArray[np.uint8], batch_size: int = 128
) -> npt.NDArray[np.float32]:
    """Run a torch ExpNet on uint8 crops ``(N, crop, crop, 3)`` -> ``(N, K)``."""
    return predict_crops_all(model, contract, crops, batch_size)[0]


def predict_crops_all(
    model: Any, contract: Any, crops: npt.NDArray[np.uint8], batch_size: int = 128
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """``(coefficients (N, K), emotion logits (N, C) or None)`` of a torch ExpNet on uint8 crops."""
    import torch

    device = next(model.parameters()).device
    coeffs, logits = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, crops.shape[0], batch_size):
            x = torch.from_numpy(contract.normalize(crops[i : i + batch_size])).to(device)
            c, e = model.forward_all(x) if hasattr(model, "forward_all") else (model(x), None)
            coeffs.append(c.float().cpu().numpy())
            if e is not None:
                logits.append(e.float().cpu().numpy())
    c_out = np.concatenate(coeffs).astype(np.float32) if coeffs else np.zeros((0, contract.num_coeffs), np.float32)
    return c_out, (np.concatenate(logits).astype(np.float32) if logits else None)
