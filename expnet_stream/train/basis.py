"""Fitting the project's expression bases (:class:`~expnet_stream.models.expression_basis.ExpressionBasis`) on
labelled landmarks: the two candidates that :mod:`expnet_stream.train.select_basis` compares.

* ``procrustes`` (basis ids ``mp478-procrustes-pca29-v<N>``): landmarks are similarity-aligned (Procrustes: rotation,
  isotropic scale, translation) on the most rigid vertices to a mean shape; the PCA of each person's displacements
  from their own mean gives orthonormal components; coefficients are the projection of (aligned - mean).
* ``blendshapes`` (``mp478-blendshape-pca29-v<N>``): the PCA of the labeller's 52 blendshape scores; 3D vertex
  offsets per coefficient are fitted by least squares to the aligned landmark displacements.

Reading a basis (:func:`load_basis`) is runtime code in :mod:`expnet_stream.models.expression_basis`; its names are
re-exported here for the training code.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from ..errors import ModelError
from ..models.expression_basis import BASIS_DIR as BASIS_DIR
from ..models.expression_basis import DEFAULT_BASIS_ID as DEFAULT_BASIS_ID
from ..models.expression_basis import NUM_COEFFS as NUM_COEFFS
from ..models.expression_basis import ExpressionBasis as ExpressionBasis
from ..models.expression_basis import align_to as align_to
from ..models.expression_basis import load_basis as load_basis
from ..models.expression_basis import mediapipe_triangles as mediapipe_triangles
from ..models.expression_basis import similarity_transform as similarity_transform

logger = logging.getLogger(__name__)

__all__ = [
    "BASIS_DIR",
    "DEFAULT_BASIS_ID",
    "ExpressionBasis",
    "align_to",
    "fit_blendshape_basis",
    "fit_procrustes_basis",
    "generalized_procrustes",
    "load_basis",
    "mediapipe_triangles",
    "similarity_transform",
]

FloatArray = npt.NDArray[np.float32]


# ---------------------------------------------------------------------------------------------------------------------
# Procrustes
# ---------------------------------------------------------------------------------------------------------------------


def _normalise(shape: npt.NDArray[np.float64], idx: npt.NDArray[np.intp] | slice) -> npt.NDArray[np.float64]:
    c = shape - shape[idx].mean(0)
    out: npt.NDArray[np.float64] = c / np.sqrt((c[idx] ** 2).sum(1).mean())
    return out


def generalized_procrustes(
    shapes: npt.NDArray[np.floating], idx: npt.NDArray[np.intp] | None = None, *, iters: int = 4
) -> tuple[FloatArray, FloatArray]:
    """Generalised Procrustes analysis: ``(aligned (N, P, 3), mean (P, 3))``, mean centred with unit RMS on ``idx``."""
    x = np.asarray(shapes, np.float64)
    sel: npt.NDArray[np.intp] | slice = slice(None) if idx is None else idx
    mean = _normalise(np.median(x, axis=0), sel)
    aligned = align_to(x, mean, idx)
    for _ in range(iters):
        mean = _normalise(aligned.astype(np.float64).mean(0), sel)
        aligned = align_to(x, mean, idx)
    return aligned, mean.astype(np.float32)


def rigid_vertices(
    aligned: FloatArray, subjects: npt.NDArray[np.str_], fraction: float = 0.35, exclude_iris: bool = True
) -> npt.NDArray[np.intp]:
    """The ``fraction`` of vertices that move least within a person (used to align without the expression)."""
    resid = _within_subject(aligned.reshape(aligned.shape[0], -1), subjects)[0].reshape(-1, aligned.shape[1], 3)
    var = (resid**2).sum(2).mean(0)
    n_v = aligned.shape[1]
    if exclude_iris and n_v > 468:
        var[468:] = np.inf
    k = max(3, round(fraction * min(n_v, 468)))
    return np.sort(np.argsort(var)[:k]).astype(np.intp)


def _within_subject(
    x: npt.NDArray[np.floating], subjects: npt.NDArray[np.str_]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Rows minus their subject's mean, for subjects with >= 2 rows; mask of the rows used."""
    x = np.asarray(x, np.float64)
    _, inv, counts = np.unique(subjects, return_inverse=True, return_counts=True)
    sums = np.zeros((counts.shape[0], x.shape[1]))
    np.add.at(sums, inv, x)
    means = sums / counts[:, None]
    used = counts[inv] >= 2
    return (x - means[inv])[used], used


# ---------------------------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------------------------


def _pca(x: npt.NDArray[np.float64], k: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Top-``k`` principal directions ``(k, D)`` of centred rows and their explained variance fractions."""
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s**2
    # Fix the sign: the largest-magnitude entry of each component is positive (deterministic files).
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(1)])
    return vt[:k] * signs[:, None], var[:k] / var.sum()


def fit_procrustes_basis(
    landmarks: npt.ArrayLike,
    subjects: npt.ArrayLike,
    *,
    basis_id: str = DEFAULT_BASIS_ID,
    k: int = NUM_COEFFS,
    rigid_fraction: float = 0.35,
    triangles: npt.NDArray[np.int32] | None = None,
) -> ExpressionBasis:
    """Candidate (a): PCA of within-person displacements of Procrustes-aligned landmarks ``(N, 478, 3)``."""
    lm = np.asarray(landmarks, np.float32)
    subj = np.asarray(subjects).astype(str)
    aligned, _ = generalized_procrustes(lm)
    rigid = rigid_vertices(aligned, subj, rigid_fraction)
    aligned, mean = generalized_procrustes(lm, rigid)
    flat = aligned.reshape(lm.shape[0], -1).astype(np.float64)
    resid, used = _within_subject(flat, subj)
    if resid.shape[0] <= k:
        raise ModelError(f"need more than {k} images of people seen at least twice, got {resid.shape[0]}")
    comps, explained = _pca(resid, k)
    offset = mean.reshape(-1)
    raw = (flat - offset) @ comps.T
    std = raw.std(0)
    logger.info(
        "procrustes basis fitted faces=%d within_person=%d rigid=%d explained=%.3f",
        lm.shape[0],
        int(used.sum()),
        rigid.shape[0],
        float(explained.sum()),
    )
    return ExpressionBasis(
        basis_id=basis_id,
        kind="procrustes",
        mean=mean,
        components=comps.reshape(k, *mean.shape).astype(np.float32),
        std=std.astype(np.float32),
        encoder=comps.astype(np.float32),
        encoder_offset=offset.astype(np.float32),
        rigid_idx=rigid,
        triangles=triangles if triangles is not None else np.zeros((0, 3), np.int32),
        explained=explained.astype(np.float32),
    )


def fit_blendshape_basis(
    blendshapes: npt.ArrayLike,
    landmarks: npt.ArrayLike,
    *,
    reference: ExpressionBasis,
    basis_id: str = "mp478-blendshape-pca29-v1",
    k: int = NUM_COEFFS,
) -> ExpressionBasis:
    """Candidate (b): PCA of the 52 blendshapes; 3D vertex offsets fitted by least squares to aligned landmarks.

    ``reference`` (a procrustes basis) provides the mean shape, rigid vertices and triangles used for alignment.
    """
    bs = np.asarray(blendshapes, np.float64)
    offset = bs.mean(0)
    comps, explained = _pca(bs - offset, k)
    raw = (bs - offset) @ comps.T
    std = raw.std(0)
    aligned = reference.align(np.asarray(landmarks, np.float32)).reshape(bs.shape[0], -1).astype(np.float64)
    disp = aligned - reference.mean.reshape(-1)
    design = np.concatenate([raw, np.ones((raw.shape[0], 1))], axis=1)
    sol, *_ = np.linalg.lstsq(design, disp, rcond=None)
    mean = (reference.mean.reshape(-1) + sol[-1]).reshape(reference.mean.shape)
    logger.info("blendshape basis fitted faces=%d explained=%.3f", bs.shape[0], float(explained.sum()))
    return ExpressionBasis(
        basis_id=basis_id,
        kind="blendshapes",
        mean=mean.astype(np.float32),
        components=sol[:-1].reshape(k, *reference.mean.shape).astype(np.float32),
        std=std.astype(np.float32),
        encoder=comps.astype(np.float32),
        encoder_offset=offset.astype(np.float32),
        rigid_idx=reference.rigid_idx,
        triangles=reference.triangles,
        explained=explained.astype(np.float32),
    )
