"""Choose the expression basis by measurement (DESIGN.md): which 29-D coefficients separate emotions best?

Both candidates of :mod:`.basis` are fitted on the training faces (LFW photos + video frames; no emotion label is
used to fit them) and scored with :func:`~expnet_stream.train.probe.subject_cv_accuracy` on training data only: the
LFW labels (5 folds by person; the labeller's output at full resolution and with the face downscaled to the cache's
``small_face_px``, 32 px) and FER2013 ``train`` + ``val`` (5 folds; the labeller on the 48 px faces). The labeller's
raw 52 blendshapes are scored as a reference. JAFFE and FER2013 ``test`` are test sets: never used here.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExpNetError
from .basis import BASIS_DIR, ExpressionBasis, fit_blendshape_basis, fit_procrustes_basis, mediapipe_triangles
from .probe import subject_cv_accuracy
from .sources import FaceCache, load_face_cache

logger = logging.getLogger(__name__)

__all__ = ["BLENDSHAPE_ID", "PROCRUSTES_ID", "select_basis"]

PROCRUSTES_ID = "mp478-procrustes-pca29-v1"
BLENDSHAPE_ID = "mp478-blendshape-pca29-v1"


@dataclass(frozen=True)
class _Cell:
    """One scored set: labeller output (found, landmarks, blendshapes), labels, groups, folds."""

    found: np.ndarray
    landmarks: np.ndarray
    blendshapes: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    folds: int


def _face_cache_cell(cache: FaceCache, scale: str) -> _Cell:
    if scale == "full":
        return _Cell(
            cache.full_found.astype(bool), cache.full_landmarks, cache.full_blendshapes, cache.labels, cache.subjects, 5
        )
    return _Cell(
        cache.small_found.astype(bool), cache.small_landmarks, cache.small_blendshapes, cache.labels, cache.subjects, 5
    )


def _features(basis: ExpressionBasis, cell: _Cell) -> np.ndarray:
    feats = np.zeros((len(cell.labels), basis.num_coeffs), np.float32)
    if cell.found.any():
        feats[cell.found] = basis.encode(cell.landmarks[cell.found], cell.blendshapes[cell.found])
    return feats


def select_basis(
    cache_dir: str | os.PathLike[str], out_json: str | os.PathLike[str] | None = None, *, save: bool = True
) -> dict[str, Any]:
    """Fit both candidates, score them, save the winner under ``models/basis/`` (unless ``save`` is False);
    returns the comparison table."""
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
    cells: dict[str, _Cell] = {}
    small_px = None
    if (faces / "lfw_expressions.npz").is_file():
        lfw = train_caches[0]
        small_px = lfw.meta["small_face_px"]
        cells["lfw_expressions/full"] = _face_cache_cell(lfw, "full")
        cells["lfw_expressions/small"] = _face_cache_cell(lfw, "small")
    if (faces / "fer2013.npz").is_file():
        from .fer import load_fer_cache

        fer = load_fer_cache(faces / "fer2013.npz")
        m = fer.split != "test"  # the test split is never used to choose
        if not fer.full_found[m].any():  # built without --fer-coefficients: no labeller output to score
            logger.info("fer2013 cache has no labeller output: cell skipped")
        else:
            cells["fer2013/48px"] = _Cell(
                fer.full_found[m].astype(bool),
                fer.full_landmarks[m],
                fer.full_blendshapes[m],
                fer.labels[m],
                fer.ids[m],
                5,
            )
    if not cells:
        raise ExpNetError(f"no labelled training cache in {faces}: run `expnet-stream label` first")
    table: dict[str, Any] = {"candidates": {}, "fit_faces": int(lm.shape[0])}
    for cand in (proc, blend):
        rows: dict[str, Any] = {}
        for name, cell in cells.items():
            res = subject_cv_accuracy(
                _features(cand, cell), cell.labels, cell.groups, found=cell.found, n_folds=cell.folds
            )
            rows[name] = res.as_dict()
            logger.info("basis=%s cell=%s accuracy=%.3f", cand.basis_id, name, res.accuracy)
        table["candidates"][cand.basis_id] = rows
    table["reference_raw_blendshapes52"] = {
        name: subject_cv_accuracy(
            cell.blendshapes, cell.labels, cell.groups, found=cell.found, n_folds=cell.folds
        ).as_dict()
        for name, cell in cells.items()
    }

    def score(bid: str) -> float:
        rows = table["candidates"][bid]
        return float(np.mean([r["accuracy"] for r in rows.values()]))

    chosen = max((proc, blend), key=lambda b: score(b.basis_id))
    table["chosen"] = chosen.basis_id
    table["mean_accuracy"] = {b.basis_id: score(b.basis_id) for b in (proc, blend)}
    table["small_face_px"] = small_px
    table["test_sets_not_used"] = ["eval/jaffe", "fer2013/test"]
    if save:
        chosen.save(BASIS_DIR / f"{chosen.basis_id}.npz")
    logger.info("chosen basis=%s", chosen.basis_id)
    if out_json is not None:
        Path(out_json).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return table
