"""A 3DMM-style expression fit to 68 2D landmarks (the landmark baseline of the ExpNet paper's speed comparison).

Model: the project's linear expression basis (``mean + (c * std) @ components`` over the 478 MediaPipe vertices),
restricted to the 68 vertices that correspond to the dlib/iBUG-68 landmarks (:data:`DLIB68_TO_MP478`). Given 68
image points, :meth:`ExpressionFitter.fit` alternates (``iterations`` times) a scaled-orthographic pose (affine
camera by least squares, rows orthonormalised) and a ridge-regularised linear least-squares solve for the 29
expression coefficients, the classic landmark-fitting loop of 3DMM pipelines. It is a fair stand-in for the cost
of the fitting step (a few small dense solves); it is not the paper's fitting code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import ModelError

log = logging.getLogger(__name__)

# iBUG-68 order (jaw 17, brows 5 + 5, nose bridge 4, nostrils 5, eyes 6 + 6, outer lips 12, inner lips 8) ->
# MediaPipe FaceMesh vertex index; a widely used correspondence (left/right as seen in the image).
DLIB68_TO_MP478: tuple[int, ...] = (
    *(162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389),
    *(71, 63, 105, 66, 107),
    *(336, 296, 334, 293, 301),
    *(168, 197, 5, 4),
    *(75, 97, 2, 326, 305),
    *(33, 160, 158, 133, 153, 144),
    *(362, 385, 387, 263, 373, 380),
    *(61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181),
    *(78, 82, 13, 312, 308, 317, 14, 87),
)


@dataclass(frozen=True)
class FitResult:
    coeffs: npt.NDArray[np.float32]  # (29,)
    scale: float
    rms_px: float  # reprojection error of the fitted shape, in image pixels


class ExpressionFitter:
    """Fits expression coefficients of a linear basis to 68 2D landmarks.

    Args:
        mean: ``(V, 3)`` mean shape; components: ``(K, V, 3)``; std: ``(K,)`` coefficient scales.
        ridge: Tikhonov weight, relative to the mean diagonal of the normal matrix.
        iterations: pose / expression alternations.

    >>> rng = np.random.default_rng(0)
    >>> mean, comps = rng.normal(size=(478, 3)), 0.05 * rng.normal(size=(29, 478, 3))
    >>> fitter = ExpressionFitter(mean, comps, np.ones(29), ridge=1e-6)
    >>> truth = rng.normal(size=29).astype(np.float32)
    >>> shape = fitter.shape(truth)
    >>> pts = 50.0 * shape[:, :2] + 100.0
    >>> bool(np.abs(fitter.fit(pts).coeffs - truth).max() < 0.05)
    True
    """

    def __init__(
        self,
        mean: npt.ArrayLike,
        components: npt.ArrayLike,
        std: npt.ArrayLike,
        *,
        index: tuple[int, ...] = DLIB68_TO_MP478,
        ridge: float = 1e-3,
        iterations: int = 3,
    ) -> None:
        m = np.asarray(mean, np.float64)
        c = np.asarray(components, np.float64)
        s = np.asarray(std, np.float64)
        if m.ndim != 2 or m.shape[1] != 3 or c.ndim != 3 or c.shape[1:] != m.shape or s.shape != (c.shape[0],):
            raise ModelError(f"basis shapes mean {m.shape}, components {c.shape}, std {s.shape} do not fit together")
        idx = np.asarray(index, np.intp)
        self.mean = m[idx]  # (P, 3)
        self.basis = c[:, idx, :] * s[:, None, None]  # (K, P, 3): one unit of coefficient
        self.ridge = ridge
        self.iterations = iterations

    @classmethod
    def from_project_basis(cls, basis_id: str | None = None, **kwargs: float | int) -> ExpressionFitter:
        """The fitter over the project's shipped expression basis (``models/basis/*.npz``)."""
        try:
            from ..models.expression_basis import DEFAULT_BASIS_ID, load_basis
        except ImportError as exc:  # pragma: no cover - the loader ships with the package
            raise ModelError(f"the expression basis loader is unavailable: {exc}") from exc
        b = load_basis(basis_id or DEFAULT_BASIS_ID)
        return cls(b.mean, b.components, b.std, **kwargs)  # type: ignore[arg-type]

    def shape(self, coeffs: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``(P, 3)`` model vertices for ``coeffs``."""
        out: npt.NDArray[np.float64] = self.mean + np.tensordot(np.asarray(coeffs, np.float64), self.basis, axes=1)
        return out

    def fit(self, points: npt.ArrayLike) -> FitResult:
        """``(P, 2)`` image points -> :class:`FitResult`."""
        pts = np.asarray(points, np.float64)
        if pts.shape != (self.mean.shape[0], 2):
            raise ValueError(f"points must be ({self.mean.shape[0]}, 2), got {pts.shape}")
        k = self.basis.shape[0]
        coeffs = np.zeros(k)
        ones = np.ones((pts.shape[0], 1))
        scale, rot, t = 1.0, np.eye(3)[:2], np.zeros(2)
        for _ in range(self.iterations):
            shape = self.shape(coeffs)
            affine, *_ = np.linalg.lstsq(np.hstack([shape, ones]), pts, rcond=None)  # (4, 2)
            u, sv, vt = np.linalg.svd(affine[:3].T, full_matrices=False)  # (2, 3)
            rot, scale, t = u @ vt, float(sv.mean()), affine[3]
            design = scale * np.einsum("ij,kpj->pik", rot, self.basis).reshape(-1, k)  # (2P, K)
            target = (pts - t - scale * self.mean @ rot.T).reshape(-1)
            normal = design.T @ design
            lam = self.ridge * float(np.trace(normal)) / k
            coeffs = np.linalg.solve(normal + lam * np.eye(k), design.T @ target)
        proj = scale * self.shape(coeffs) @ rot.T + t
        rms = float(np.sqrt(((proj - pts) ** 2).sum(1).mean()))
        return FitResult(coeffs.astype(np.float32), scale, rms)
