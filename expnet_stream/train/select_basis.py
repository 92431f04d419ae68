"""Choose the expression basis by measurement (DESIGN.md): which 29-D coefficients separate emotions best?

Both candidates of :mod:`.basis` are fitted on the training faces (LFW photos + video frames; no emotion label is
used to fit them) and scored with :func:`~expnet_stream.train.probe.subject_cv_accuracy` on JAFFE (leave-one-poser
-out) and on the LFW labels (5 folds by person), on the labeller's output at full resolution and with the face
downscaled to the cache's ``small_face_px`` (32 px). The labeller's raw 52 blendshapes are scored as a reference.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .basis import BASIS_DIR, ExpressionBasis, fit_blendshape_basis, fit_procrustes_basis, mediapipe_triangles
from .probe import subject_cv_accuracy
from .sources import FaceCache, load_face_cache

logger = logging.getLogger(__name__)

__all__ = ["BLENDSHAPE_ID", "PROCRUSTES_ID", "select_basis"]

PROCRUSTES_ID = "mp478-procrustes-pca29-v1"
BLENDSHAPE_ID = "mp478-blendshape-pca29-v1"


def _features(basis: ExpressionBasis, cache: FaceCache, scale: str) -> tuple[np.ndarray, np.ndarray]:
    found = (cache.full_found if scale == "full" else cache.small_found).astype(bool)
    lm = cache.full_landmarks if scale == "full" else cache.small_landmarks
    bs = cache.full_blendshapes if scale == "full" else cache.small_blendshapes
    feats = np.zeros((len(cache), basis.num_coeffs), np.float32)
    if found.any():
        feats[found] = basis.encode(lm[found], bs[found])
    return feats, found


def select_basis(cache_dir: str | os.PathLike[str], out_json: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Fit both candidates, score them, save the winner under ``models/basis/``; returns the comparison table."""
    faces = Path(cache_dir) / "faces"
    train_caches = [
        load_face_cache(faces / f"{n}.npz") for n in ("lfw_expressions", "videos") if (faces / f"{n}.npz").is_file()
    ]
    lm = np.concatenate([c.full_landmarks[c.full_found] for c in train_caches])
    bs = np.concatenate([c.full_blendshapes[c.full_found] for c in train_caches])
    subj = np.concatenate(
        [np.char.add(f"{i}/", c.subjects[c.full_found].astype(str)) for i, c in enumerate(train_caches)]
    )
    tri = mediapipe_triangles()
    proc = fit_procrustes_basis(lm, subj, basis_id=PROCRUSTES_ID, triangles=tri)
    blend = fit_blendshape_basis(bs, lm, reference=proc, basis_id=BLENDSHAPE_ID)
    evals: dict[str, tuple[FaceCache, int | None]] = {"jaffe": (load_face_cache(faces / "jaffe.npz"), None)}
    if (faces / "lfw_expressions.npz").is_file():
        evals["lfw_expressions"] = (train_caches[0], 5)
    table: dict[str, Any] = {"candidates": {}, "fit_faces": int(lm.shape[0])}
    for cand in (proc, blend):
        rows: dict[str, Any] = {}
        for name, (cache, folds) in evals.items():
            for scale in ("full", "small"):
                feats, found = _features(cand, cache, scale)
                res = subject_cv_accuracy(feats, cache.labels, cache.subjects, found=found, n_folds=folds)
                rows[f"{name}/{scale}"] = res.as_dict()
                logger.info("basis=%s set=%s scale=%s accuracy=%.3f", cand.basis_id, name, scale, res.accuracy)
        table["candidates"][cand.basis_id] = rows
    ref: dict[str, Any] = {}
    for name, (cache, folds) in evals.items():
        for scale in ("full", "small"):
            found = (cache.full_found if scale == "full" else cache.small_found).astype(bool)
            raw = cache.full_blendshapes if scale == "full" else cache.small_blendshapes
            ref[f"{name}/{scale}"] = subject_cv_accuracy(
                raw, cache.labels, cache.subjects, found=found, n_folds=folds
            ).as_dict()
    table["reference_raw_blendshapes52"] = ref

    def score(bid: str) -> float:
        rows = table["candidates"][bid]
        return float(np.mean([r["accuracy"] for r in rows.values()]))

    chosen = max((proc, blend), key=lambda b: score(b.basis_id))
    table["chosen"] = chosen.basis_id
    table["mean_accuracy"] = {b.basis_id: score(b.basis_id) for b in (proc, blend)}
    table["small_face_px"] = evals["jaffe"][0].meta["small_face_px"]
    chosen.save(BASIS_DIR / f"{chosen.basis_id}.npz")
    logger.info("chosen basis=%s", chosen.basis_id)
    if out_json is not None:
        Path(out_json).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return table
