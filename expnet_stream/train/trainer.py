"""Train ExpNet the ExpNet way: the landmark-free CNN regresses the labeller's basis coefficients from pixels.

Inputs are paper crops of yuface boxes (from the face cache), augmented (:mod:`.dataset`); targets are the
std-normalised coefficients of the expression basis computed from the labeller's landmarks at full resolution.
Identities are held out for validation (LFW person names, whole videos). The loss is smooth-L1 on the coefficients.
Every epoch writes ``last.pt`` (model, optimizer, scheduler, history: ``--resume`` continues from it) and, when the
validation loss improves, ``best.pt`` in the checkpoint format of :func:`~expnet_stream.models.save_checkpoint`.

The same command trains ``expnet_resnet101`` (crop 227); the cached wide crops are resized to its crop geometry.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ..errors import ExpNetError, ModelError
from .dataset import AugmentConfig, FaceRegressionData, holdout_mask
from .labeller import default_cache_dir
from .sources import PAPER_CROP, WIDE_CROP, FaceCache, load_face_cache

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainData", "load_train_data", "r2_per_coeff", "train"]

TRAIN_STATE_FORMAT = "expnet-stream/train-state-v1"


@dataclass
class TrainConfig:
    """Options of ``expnet-stream train`` (see the CLI for their help)."""

    model: str = "expnet_resnet18.s112"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0
    out: str = "runs/expnet"
    cache_dir: str = ""
    basis_id: str = "mp478-blendshape-pca29-v1"
    val_fraction: float = 0.1
    threads: int = 2
    max_train: int | None = None
    max_batches_per_epoch: int | None = None
    init_from: str | None = None
    weights_tag: str = ""
    caches: tuple[str, ...] = ("lfw_expressions", "videos")
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class TrainData:
    """Wide crops, targets and split of every cached face usable for training."""

    wide: npt.NDArray[np.uint8]
    targets: npt.NDArray[np.float32]
    subjects: npt.NDArray[np.str_]
    sources: npt.NDArray[np.str_]
    val: npt.NDArray[np.bool_]


def r2_per_coeff(pred: npt.ArrayLike, target: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Coefficient of determination per column: ``1 - SSE / SST`` (SST around the target mean)."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    sse = ((p - t) ** 2).sum(0)
    sst = ((t - t.mean(0)) ** 2).sum(0)
    return np.asarray(1.0 - sse / np.maximum(sst, 1e-12), np.float64)


def _targets(cache: FaceCache, basis_id: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    from .basis import load_basis

    basis = load_basis(basis_id)
    ok = cache.full_found.astype(bool)
    coeffs = np.zeros((len(cache), basis.num_coeffs), np.float32)
    if ok.any():
        coeffs[ok] = basis.encode(cache.full_landmarks[ok], cache.full_blendshapes[ok])
    return coeffs, ok


def load_train_data(
    cache_dir: str | os.PathLike[str], names: tuple[str, ...], basis_id: str, val_fraction: float, wide_size: int
) -> TrainData:
    """Read the face caches ``<cache_dir>/faces/<name>.npz``, encode targets, split identities."""
    parts: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.str_], str]] = []
    for name in names:
        path = Path(cache_dir) / "faces" / f"{name}.npz"
        if not path.is_file():
            raise ExpNetError(f"face cache {path} is missing: run `expnet-stream label` first")
        cache = load_face_cache(path)
        coeffs, ok = _targets(cache, basis_id)
        wide = cache.crops[ok]
        if wide.shape[1] != wide_size:
            wide = np.stack([cv2.resize(w, (wide_size, wide_size), interpolation=cv2.INTER_AREA) for w in wide])
        parts.append((wide, coeffs[ok], cache.subjects[ok], name))
        logger.info("train cache name=%s faces=%d labelled=%d", name, len(cache), int(ok.sum()))
    wide = np.concatenate([p[0] for p in parts])
    targets = np.concatenate([p[1] for p in parts])
    subjects = np.concatenate([np.char.add(f"{p[3]}/", p[2].astype(str)) for p in parts])
    sources = np.concatenate([np.full(p[0].shape[0], p[3]) for p in parts])
    return TrainData(wide, targets, subjects, sources, holdout_mask(subjects, val_fraction))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ModelError(f"cannot write {path}: {exc}") from exc


def predict_crops(
    model: Any, contract: Any, crops: npt.NDArray[np.uint8], batch_size: int = 128
) -> npt.NDArray[np.float32]:
    """Run a torch ExpNet on uint8 crops ``(N, crop, crop, 3)`` -> ``(N, K)``."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, crops.shape[0], batch_size):
            x = torch.from_numpy(contract.normalize(crops[i : i + batch_size]))
            out.append(model(x).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, contract.num_coeffs), np.float32)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.model``; returns the summary also written to ``<out>/summary.json``."""
    import torch

    from ..models.registry import create_model, load_checkpoint, save_checkpoint
    from .dataset import center_crops, degrade_face_scale

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, contract = create_model(cfg.model, seed=cfg.seed)
    if cfg.init_from:
        # Warm start (e.g. a second learning-rate cycle): weights only, the optimizer and schedule start afresh.
        warm, _ = load_checkpoint(cfg.init_from)
        model.load_state_dict(warm.state_dict())
        logger.info("initialised from checkpoint path=%s", cfg.init_from)
    crop = contract.crop_size
    wide_size = round(crop * WIDE_CROP / PAPER_CROP)
    cache_dir = cfg.cache_dir or str(default_cache_dir())
    data = load_train_data(cache_dir, cfg.caches, cfg.basis_id, cfg.val_fraction, wide_size)
    tr_idx = np.flatnonzero(~data.val)
    if cfg.max_train is not None and tr_idx.size > cfg.max_train:
        tr_idx = np.sort(np.random.default_rng(cfg.seed).choice(tr_idx, cfg.max_train, replace=False))
    va_idx = np.flatnonzero(data.val)
    train_set = FaceRegressionData(
        data.wide[tr_idx], data.targets[tr_idx], seed=cfg.seed, augment=cfg.augment, crop_size=crop
    )
    val_crops = center_crops(data.wide[va_idx], crop)
    val_targets = data.targets[va_idx]
    mean_bgr = tuple(
        float(v) for v in center_crops(data.wide[tr_idx[:: max(1, tr_idx.size // 2000)]], crop).reshape(-1, 3).mean(0)
    )
    tag = cfg.weights_tag or f"mp478-lfw-videos-seed{cfg.seed}"
    contract = contract.model_copy(update={"mean_bgr": mean_bgr, "basis_id": cfg.basis_id, "weights": tag})
    logger.info(
        "train data train=%d val=%d val_subjects=%d model=%s crop=%d",
        tr_idx.size,
        va_idx.size,
        np.unique(data.subjects[va_idx]).size,
        cfg.model,
        crop,
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = train_set.num_batches(cfg.batch_size, drop_last=True)
    if cfg.max_batches_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch), pct_start=0.15
    )
    history: list[dict[str, Any]] = []
    start_epoch = 0
    best = float("inf")
    state_path = out / "last.pt"
    if resume and state_path.is_file():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            raise ModelError(f"cannot resume from {state_path}: {exc}") from exc
        if state.get("format") != TRAIN_STATE_FORMAT or state.get("config") != json.dumps(_cfg_dict(cfg)):
            raise ModelError(f"{state_path} was written by another training configuration; use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        history = json.loads(state["history"])
        best = float(state["best"])
        logger.info("resumed path=%s epoch=%d", state_path, start_epoch)
    loss_fn = torch.nn.SmoothL1Loss(beta=1.0)
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        losses = []
        bar: Any = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        for b, (crops, y) in enumerate(train_set.batches(epoch, cfg.batch_size)):
            if b >= steps_per_epoch:
                break
            x = torch.from_numpy(contract.normalize(crops))
            loss = loss_fn(model(x), torch.from_numpy(y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if bar is not None:
            bar.close()
        pred = predict_crops(model, contract, val_crops)
        pred_q = predict_crops(model, contract, degrade_face_scale(val_crops, 0.25))
        val_loss = float(loss_fn(torch.from_numpy(pred), torch.from_numpy(val_targets)))
        r2 = r2_per_coeff(pred, val_targets)
        r2_q = r2_per_coeff(pred_q, val_targets)
        rec = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": val_loss,
            "val_r2_mean": float(r2.mean()),
            "val_r2_mean_quarter_scale": float(r2_q.mean()),
            "seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        logger.info("epoch done %s", " ".join(f"{k}={v:.4g}" for k, v in rec.items()))
        if val_loss < best:
            best = val_loss
            save_checkpoint(out / "best.pt", model, contract)
        save_checkpoint(out / "final.pt", model, contract)
        _atomic_torch_save(
            {
                "format": TRAIN_STATE_FORMAT,
                "config": json.dumps(_cfg_dict(cfg)),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "history": json.dumps(history),
                "best": best,
            },
            state_path,
        )
    summary = {
        "config": _cfg_dict(cfg),
        "contract": json.loads(contract.model_dump_json()),
        "train_faces": int(tr_idx.size),
        "val_faces": int(va_idx.size),
        "val_subjects": int(np.unique(data.subjects[va_idx]).size),
        "history": history,
        "wall_seconds_this_run": time.perf_counter() - t_start,
        "wall_seconds_total": float(sum(h["seconds"] for h in history)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _cfg_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("out", None)
    d.pop("cache_dir", None)
    d.pop("threads", None)
    d["caches"] = list(cfg.caches)
    return d
