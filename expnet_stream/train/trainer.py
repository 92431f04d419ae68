"""Train ExpNet the ExpNet way: the landmark-free CNN regresses the labeller's basis coefficients from pixels, and,
multi-task, classifies emotions with a second head on the same trunk features.

Inputs are paper crops of yuface boxes (from the face cache), augmented (:mod:`.dataset`); targets are the
std-normalised coefficients of the expression basis computed from the labeller's landmarks at full resolution.
Identities are held out for validation (LFW person names, whole videos). The loss is smooth-L1 on the coefficients.
Every epoch writes ``last.pt`` (model, optimizer, scheduler, history: ``--resume`` continues from it) and, when the
validation loss improves, ``best.pt`` in the checkpoint format of :func:`~expnet_stream.models.save_checkpoint`.

Multi-task (``emotion_cache``, default ``fer2013``): the FER2013 cache (:mod:`.fer`, faces framed through the worker's
detector box and paper crop) adds its ``train`` split to every epoch. Those faces carry an emotion label (weighted
cross-entropy, class weights ``(1 / frequency) ** emotion_balance``, label smoothing) and, where the labeller found the
face, coefficient targets weighted ``fer_coeff_weight`` (the labeller at 48 px is noisier than on the photos). FER2013
faces are mirrored with probability 1/2 (then their coefficient weight is 0: the basis is not mirror-symmetric).
Calibration and the choice between this head and a head on the coefficients happen at ``ship``
(:mod:`.emotion_fit`).

The same command trains ``expnet_resnet101`` (crop 227); the cached wide crops are resized to its crop geometry.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ..errors import ExpNetError, ModelError
from ..fileio import atomic_writer
from .dataset import AugmentConfig, FaceRegressionData, holdout_mask
from .emotion_data import EmotionData, class_weights, emotion_classes, load_emotion_data
from .labeller import default_cache_dir
from .predict import predict_crops, predict_crops_all, r2_per_coeff
from .sources import PAPER_CROP, WIDE_CROP, FaceCache, load_face_cache

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainData", "load_train_data", "train", "warm_start"]

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
    emotion_cache: str | None = "fer2013"
    emotion_targets: str = "ferplus"
    keep_unmatched: bool = False
    level_eyes: bool = False
    p_mask_lower: float = 0.3
    emotion_weight: float = 1.0
    emotion_balance: float = 0.5
    label_smoothing: float = 0.05
    fer_coeff_weight: float = 0.5
    data_dir: str = ""
    device: str = "cpu"


@dataclass(frozen=True)
class TrainData:
    """Wide crops, targets and split of every cached face usable for training."""

    wide: npt.NDArray[np.uint8]
    targets: npt.NDArray[np.float32]
    subjects: npt.NDArray[np.str_]
    sources: npt.NDArray[np.str_]
    val: npt.NDArray[np.bool_]
    roll: npt.NDArray[np.float32]


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
    from .fer import landmark_roll_deg

    parts: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.str_], str]] = []
    rolls: list[npt.NDArray[np.float32]] = []
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
        rolls.append(landmark_roll_deg(cache.full_landmarks[ok]))
        logger.info("train cache name=%s faces=%d labelled=%d", name, len(cache), int(ok.sum()))
    wide = np.concatenate([p[0] for p in parts])
    targets = np.concatenate([p[1] for p in parts])
    subjects = np.concatenate([np.char.add(f"{p[3]}/", p[2].astype(str)) for p in parts])
    sources = np.concatenate([np.full(p[0].shape[0], p[3]) for p in parts])
    roll = np.concatenate(rolls).astype(np.float32)
    return TrainData(wide, targets, subjects, sources, holdout_mask(subjects, val_fraction), roll)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    try:
        with atomic_writer(path) as fh:
            torch.save(obj, fh)
    except OSError as exc:
        raise ModelError(f"cannot write {path}: {exc}") from exc


def warm_start(model: Any, cfg: TrainConfig, classes: tuple[str, ...]) -> Any:
    """Load ``cfg.init_from``'s weights into ``model`` (weights only: the optimizer and schedule start afresh);
    returns the warm checkpoint's contract.

    * An emotion head over other classes (the seven FER2013 classes of ``lfw-videos-fer2013-v1``) is mapped row by
      row onto ``classes``; a class it lacks (contempt) keeps its fresh initialisation.
    * A checkpoint trained in another expression basis keeps its trunk; its coefficient head starts afresh (its rows
      mean other coefficients).
    """
    import torch

    from ..models.emotion import FER_CLASSES
    from ..models.registry import load_checkpoint

    warm, warm_contract = load_checkpoint(cfg.init_from or "")
    state = {k: v for k, v in warm.state_dict().items() if not k.startswith("emotion_fc.")}
    if warm_contract.basis_id != cfg.basis_id:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if any(not k.startswith(("emotion_fc.", "fc.")) for k in missing) or unexpected:
        raise ModelError(f"{cfg.init_from} does not fit {cfg.model}: missing {missing}, unexpected {unexpected}")
    warm_head = getattr(warm, "emotion_fc", None)
    if warm_head is not None and model.emotion_fc is not None:
        warm_classes = tuple(warm_contract.emotion_classes) or (
            FER_CLASSES if warm_head.out_features == len(FER_CLASSES) else ()
        )
        if len(warm_classes) != warm_head.out_features:
            raise ModelError(f"{cfg.init_from}: its emotion head has {warm_head.out_features} outputs, no class names")
        with torch.no_grad():
            for i, k in enumerate(warm_classes):
                if k in classes:
                    model.emotion_fc.weight[classes.index(k)] = warm_head.weight[i].float()
                    model.emotion_fc.bias[classes.index(k)] = warm_head.bias[i].float()
    logger.info(
        "initialised from checkpoint path=%s fresh=%s basis %s -> %s",
        cfg.init_from,
        sorted({k.split(".")[0] for k in missing}),
        warm_contract.basis_id,
        cfg.basis_id,
    )
    return warm_contract


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    until_epoch: int | None = None,
    max_minutes: float | None = None,
) -> dict[str, Any]:
    """Train ``cfg.model``; returns the summary also written to ``<out>/summary.json``.

    A run may span several working sessions: ``until_epoch`` or ``max_minutes`` (of this call, checked after each
    epoch) stop it early with its state in ``<out>/last.pt``, and ``resume=True`` continues from there on the same
    schedule (the learning-rate cycle covers ``cfg.epochs``), so the result equals an uninterrupted run's."""
    import torch

    from ..models.emotion import emotion_metrics, softmax
    from ..models.registry import create_model, save_checkpoint
    from .choices import soft_cross_entropy
    from .dataset import center_crops, degrade_face_scale, level_crops, mask_lower_face

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, contract = create_model(cfg.model, seed=cfg.seed)
    classes = emotion_classes(cfg.emotion_targets)
    if cfg.emotion_cache:
        model.add_emotion_head(len(classes), seed=cfg.seed)
    warm_contract = warm_start(model, cfg, classes) if cfg.init_from else None
    crop = contract.crop_size
    wide_size = round(crop * WIDE_CROP / PAPER_CROP)
    cache_dir = cfg.cache_dir or str(default_cache_dir())
    data = load_train_data(cache_dir, cfg.caches, cfg.basis_id, cfg.val_fraction, wide_size)
    tr_idx = np.flatnonzero(~data.val)
    if cfg.max_train is not None and tr_idx.size > cfg.max_train:
        tr_idx = np.sort(np.random.default_rng(cfg.seed).choice(tr_idx, cfg.max_train, replace=False))
    va_idx = np.flatnonzero(data.val)
    # Targets packed per face: K coefficients, the coefficient-loss weight, the emotion-loss weight (0: none), then
    # the emotion target distribution over `classes`.
    k, c = data.targets.shape[1], len(classes)
    packed = np.concatenate(
        [data.targets[tr_idx], np.ones((tr_idx.size, 1), np.float32), np.zeros((tr_idx.size, 1 + c), np.float32)], 1
    )
    wide_train = data.wide[tr_idx]
    base_deg = data.roll[tr_idx]
    emo: EmotionData | None = None
    emo_val_crops = np.zeros((0, crop, crop, 3), np.uint8)
    emo_val_labels = np.zeros(0, np.int64)
    cw = np.ones(c, np.float32)
    if cfg.emotion_cache:
        emo = load_emotion_data(
            cache_dir,
            cfg.emotion_cache,
            cfg.basis_id,
            wide_size,
            targets=cfg.emotion_targets,
            data_dir=cfg.data_dir or None,
            keep_unmatched=cfg.keep_unmatched,
        )
        fer_tr = np.flatnonzero(emo.split == "train")
        if cfg.max_train is not None and fer_tr.size > cfg.max_train:
            fer_tr = np.sort(np.random.default_rng(cfg.seed + 1).choice(fer_tr, cfg.max_train, replace=False))
        fer_va = np.flatnonzero((emo.split == "val") & (emo.labels >= 0))
        emo_val_crops = (
            level_crops(emo.wide[fer_va], emo.roll[fer_va], crop)
            if cfg.level_eyes
            else center_crops(emo.wide[fer_va], crop)
        )
        emo_val_labels = emo.labels[fer_va]
        majority = np.where(emo.weight[fer_tr] > 0, emo.dist[fer_tr].argmax(1), -1)
        cw = class_weights(majority, c, cfg.emotion_balance)
        dist = emo.dist[fer_tr]
        if cfg.emotion_targets == "fer2013" and cfg.label_smoothing > 0:  # one-hot labels: smoothed
            dist = dist * (1.0 - cfg.label_smoothing) + cfg.label_smoothing / c
        # Class balancing of soft targets: each face weighs the class weights averaged under its target.
        face_w = emo.weight[fer_tr] * (dist * cw[None, :]).sum(1)
        fer_packed = np.concatenate(
            [
                emo.targets[fer_tr],
                (emo.has_targets[fer_tr].astype(np.float32) * cfg.fer_coeff_weight)[:, None],
                face_w[:, None],
                dist,
            ],
            1,
        ).astype(np.float32)
        packed = np.concatenate([packed, fer_packed])
        wide_train = np.concatenate([wide_train, emo.wide[fer_tr]])
        base_deg = np.concatenate([base_deg, emo.roll[fer_tr]])
        logger.info("emotion data train=%d val=%d class_weights=%s", fer_tr.size, fer_va.size, np.round(cw, 3).tolist())
    train_set = FaceRegressionData(
        wide_train,
        packed,
        seed=cfg.seed,
        augment=cfg.augment,
        crop_size=crop,
        base_deg=base_deg if cfg.level_eyes else None,
    )
    val_crops = (
        level_crops(data.wide[va_idx], data.roll[va_idx], crop)
        if cfg.level_eyes
        else center_crops(data.wide[va_idx], crop)
    )
    val_targets = data.targets[va_idx]
    # A warm-started trunk keeps the input centring it was trained with.
    mean_bgr = (
        warm_contract.mean_bgr
        if warm_contract is not None
        else tuple(
            float(v)
            for v in center_crops(data.wide[tr_idx[:: max(1, tr_idx.size // 2000)]], crop).reshape(-1, 3).mean(0)
        )
    )
    tag = cfg.weights_tag or f"mp478-lfw-videos-seed{cfg.seed}"
    contract = contract.model_copy(
        update={
            "mean_bgr": mean_bgr,
            "basis_id": cfg.basis_id,
            "weights": tag,
            "crop_level_eyes": cfg.level_eyes,
        }
    )
    logger.info(
        "train data train=%d (+%d emotion) val=%d val_subjects=%d model=%s crop=%d",
        tr_idx.size,
        len(train_set) - tr_idx.size,
        va_idx.size,
        np.unique(data.subjects[va_idx]).size,
        cfg.model,
        crop,
    )
    model.to(device).train()
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
        if state.get("format") != TRAIN_STATE_FORMAT or not _same_recipe(state.get("config"), _cfg_dict(cfg)):
            raise ModelError(f"{state_path} was written by another training configuration; use another --out")
        model.load_state_dict(state["model"])
        model.to(device)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        history = json.loads(state["history"])
        best = float(state["best"])
        logger.info("resumed path=%s epoch=%d", state_path, start_epoch)
    loss_fn = torch.nn.SmoothL1Loss(beta=1.0)
    elementwise = torch.nn.SmoothL1Loss(beta=1.0, reduction="none")
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)):
        if max_minutes is not None and epoch > start_epoch and time.perf_counter() - t_start > 60.0 * max_minutes:
            logger.info("stopping after epoch %d: --max-minutes %.1f reached; --resume continues", epoch, max_minutes)
            break
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
            y = y.copy()
            emo_w = y[:, k + 1]
            rng = np.random.default_rng([cfg.seed, epoch, b, 7])
            # Mirror emotion faces half the time (a mirrored face has no valid coefficient target) and hide the lower
            # third of some of them, so the emotion is read from the whole face, not the mouth alone.
            is_emo = emo_w > 0
            flip = is_emo & (rng.random(len(y)) < 0.5)
            masked = is_emo & (rng.random(len(y)) < cfg.p_mask_lower)
            if flip.any() or masked.any():
                crops = crops.copy()
                crops[flip] = crops[flip][:, :, ::-1]
                y[flip, k] = 0.0
                for i in np.flatnonzero(masked):
                    crops[i] = mask_lower_face(crops[i : i + 1], contract.mean_bgr, top=rng.uniform(0.56, 0.66))[0]
                y[masked, k] = 0.0
            x = torch.from_numpy(contract.normalize(crops)).to(device)
            coeffs_t, logits_t = model.forward_all(x)
            w = torch.from_numpy(y[:, k]).to(device)
            per_face = elementwise(coeffs_t, torch.from_numpy(y[:, :k]).to(device)).mean(1)
            loss = (per_face * w).sum() / w.sum().clamp(min=1.0)
            if logits_t is not None and is_emo.any():
                sel = torch.from_numpy(np.flatnonzero(is_emo)).to(device)
                target = torch.from_numpy(y[is_emo, k + 2 :]).to(device)
                weight = torch.from_numpy(emo_w[is_emo]).to(device)
                loss = loss + cfg.emotion_weight * soft_cross_entropy(logits_t[sel], target, weight)
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
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": val_loss,
            "val_r2_mean": float(r2.mean()),
            "val_r2_mean_quarter_scale": float(r2_q.mean()),
        }
        score = -val_loss
        if emo is not None:
            _, val_logits = predict_crops_all(model, contract, emo_val_crops)
            _, masked_logits = predict_crops_all(model, contract, mask_lower_face(emo_val_crops, contract.mean_bgr))
            if val_logits is not None and masked_logits is not None:
                m = emotion_metrics(softmax(val_logits), emo_val_labels, c)
                m_masked = emotion_metrics(softmax(masked_logits), emo_val_labels, c)
                rec.update(
                    val_emotion_accuracy=m["accuracy"],
                    val_emotion_balanced_accuracy=m["balanced_accuracy"],
                    val_emotion_min_recall=min(m["recall"]),
                    val_emotion_accuracy_lower_masked=m_masked["accuracy"],
                )
                score = m["accuracy"]
        rec["seconds"] = time.perf_counter() - t0
        history.append(rec)
        line = " ".join(f"{k}={v:.4g}" for k, v in rec.items())
        logger.info("epoch done %s", line)
        if progress:  # one line per epoch in the log a person tails, whatever the log level
            from tqdm import tqdm

            tqdm.write(f"epoch done {line}")
        # best.pt: lowest coefficient val loss, or highest emotion val accuracy when training emotions.
        if -score < best:
            best = -score
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
        "emotion_classes": list(classes) if emo is not None else [],
        "train_faces": int(tr_idx.size),
        "val_faces": int(va_idx.size),
        "val_subjects": int(np.unique(data.subjects[va_idx]).size),
        "history": history,
        "wall_seconds_this_run": time.perf_counter() - t_start,
        "wall_seconds_total": float(sum(h["seconds"] for h in history)),
        "epochs_done": len(history),
        "complete": len(history) >= cfg.epochs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _same_recipe(saved: Any, current: dict[str, Any]) -> bool:
    """Whether a saved state's configuration (JSON) is the current one; the warm-start checkpoint is compared by
    file name, so a run resumes from another checkout or folder."""
    try:
        old = json.loads(saved)
    except (TypeError, ValueError):
        return False
    if not isinstance(old, dict):
        return False

    def norm(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "init_from": Path(d["init_from"]).name if d.get("init_from") else d.get("init_from")}

    return norm(old) == norm(json.loads(json.dumps(current)))


def _cfg_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("out", None)
    d.pop("cache_dir", None)
    d.pop("threads", None)
    d.pop("device", None)
    d.pop("data_dir", None)
    d["caches"] = list(cfg.caches)
    return d
