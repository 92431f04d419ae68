"""The project's 29-D linear 3D expression basis over the MediaPipe face topology (478 vertices), versioned.

A basis holds a mean shape ``(478, 3)``, 29 components ``(29, 478, 3)``, the per-coefficient std, the canonical
triangles of the MediaPipe mesh, the vertices used for rigid (similarity) alignment and an encoder matrix that maps
an aligned shape to coefficients. Coefficients are std-normalised (unit variance on the training faces), as 3DMM
expression coefficients are, and reconstruct a mesh with :meth:`ExpressionBasis.coeffs_to_mesh`::

    vertices = mean + (coeffs * std) @ components

Two candidate constructions (fitted by :mod:`expnet_stream.train.basis`, chosen by measurement, see
:mod:`expnet_stream.train.select_basis`):

* ``procrustes`` (basis ids ``mp478-procrustes-pca29-v<N>``): landmarks are similarity-aligned (Procrustes: rotation,
  isotropic scale, translation) on the most rigid vertices to a mean shape; the PCA of each person's displacements
  from their own mean gives orthonormal components; coefficients are the projection of (aligned - mean).
* ``blendshapes`` (``mp478-blendshape-pca29-v<N>``): the PCA of the labeller's 52 blendshape scores; 3D vertex
  offsets per coefficient are fitted by least squares to the aligned landmark displacements.

Numpy only; the shipped basis file is read by :func:`load_basis` without torch or mediapipe. This module is what the
runtime (mesh, annotate) needs; fitting a basis lives in :mod:`expnet_stream.train.basis`.

>>> b = load_basis()
>>> b.coeffs_to_mesh(np.zeros(29, np.float32)).shape
(478, 3)
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import ModelError

logger = logging.getLogger(__name__)

__all__ = [
    "BASIS_DIR",
    "DEFAULT_BASIS_ID",
    "NUM_COEFFS",
    "ExpressionBasis",
    "align_to",
    "load_basis",
    "mediapipe_triangles",
    "similarity_transform",
]

BASIS_DIR = Path(__file__).resolve().parent / "basis"
DEFAULT_BASIS_ID = "mp478-blendshape-pca29-v1"
NUM_COEFFS = 29
FloatArray = npt.NDArray[np.float32]


def similarity_transform(
    src: npt.NDArray[np.floating], dst: npt.NDArray[np.floating]
) -> tuple[float, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Least-squares similarity ``dst ~ s * src @ R.T + t`` (Umeyama 1991, proper rotation): ``(s, R (3, 3), t (3,))``.

    >>> rng = np.random.default_rng(0); x = rng.normal(size=(10, 3))
    >>> s, r, t = similarity_transform(x, 2.0 * x + 1.0)
    >>> round(s, 6), np.allclose(r, np.eye(3)), np.allclose(t, 1.0)
    (2.0, True, True)
    """
    a = np.asarray(src, np.float64)
    b = np.asarray(dst, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"src and dst must both be (P, 3), got {a.shape} and {b.shape}")
    ma, mb = a.mean(0), b.mean(0)
    ac, bc = a - ma, b - mb
    cov = bc.T @ ac / a.shape[0]
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ np.diag(d) @ vt
    var_a = float((ac**2).sum() / a.shape[0])
    scale = float((sig * d).sum() / var_a) if var_a > 0 else 1.0
    return scale, rot, mb - scale * (rot @ ma)


def align_to(
    shapes: npt.NDArray[np.floating], reference: npt.NDArray[np.floating], idx: npt.NDArray[np.intp] | None = None
) -> FloatArray:
    """Similarity-align each of ``shapes`` (N, P, 3) to ``reference`` (P, 3) on vertices ``idx`` (default all)."""
    x = np.asarray(shapes, np.float64)
    if x.ndim == 2:
        one: FloatArray = align_to(x[None], reference, idx)[0]
        return one
    sel = slice(None) if idx is None else idx
    out = np.empty(x.shape, np.float32)
    ref = np.asarray(reference, np.float64)[sel]
    for i in range(x.shape[0]):
        s, r, t = similarity_transform(x[i][sel], ref)
        out[i] = s * x[i] @ r.T + t
    return out


@dataclass(frozen=True)
class ExpressionBasis:
    """A versioned linear expression model; see the module docstring.

    Attributes:
        basis_id: e.g. ``mp478-procrustes-pca29-v1``.
        kind: ``procrustes`` or ``blendshapes``.
        mean: ``(478, 3)`` mean aligned shape (unit RMS on the rigid vertices).
        components: ``(29, 478, 3)`` vertex offsets per unit raw coefficient.
        std: ``(29,)`` std of the raw coefficients on the training faces.
        encoder: ``(29, 1434)`` maps a flattened (aligned - mean) to raw coefficients (procrustes), or ``(29, 52)``
            centred blendshapes to raw coefficients (blendshapes).
        encoder_offset: ``(1434,)`` or ``(52,)`` subtracted before the encoder.
        rigid_idx: vertices used for alignment.
        triangles: ``(F, 3)`` int32 canonical triangles of the MediaPipe face mesh.
        explained: ``(29,)`` fraction of the fitted variance per component.
    """

    basis_id: str
    kind: str
    mean: FloatArray
    components: FloatArray
    std: FloatArray
    encoder: FloatArray
    encoder_offset: FloatArray
    rigid_idx: npt.NDArray[np.intp]
    triangles: npt.NDArray[np.int32]
    explained: FloatArray = field(default_factory=lambda: np.zeros(NUM_COEFFS, np.float32))

    def __post_init__(self) -> None:
        k = self.std.shape[0]
        if self.mean.ndim != 2 or self.mean.shape[1] != 3:
            raise ValueError(f"mean must be (V, 3), got {self.mean.shape}")
        if self.components.shape != (k, *self.mean.shape):
            raise ValueError(f"components must be ({k}, {self.mean.shape[0]}, 3), got {self.components.shape}")
        if self.encoder.shape[0] != k or self.encoder.shape[1] != self.encoder_offset.shape[0]:
            raise ValueError(f"encoder {self.encoder.shape} does not fit offset {self.encoder_offset.shape}")

    @property
    def num_coeffs(self) -> int:
        return int(self.std.shape[0])

    def coeffs_to_mesh(self, coeffs: npt.ArrayLike) -> FloatArray:
        """``(29,)`` or ``(N, 29)`` std-normalised coefficients -> vertices ``(478, 3)`` or ``(N, 478, 3)``."""
        c = np.asarray(coeffs, np.float32)
        if c.shape[-1] != self.num_coeffs:
            raise ValueError(f"coeffs must end in {self.num_coeffs}, got {c.shape}")
        flat = (c * self.std) @ self.components.reshape(self.num_coeffs, -1)
        return (self.mean + flat.reshape(*c.shape[:-1], *self.mean.shape)).astype(np.float32)

    def align(self, landmarks: npt.ArrayLike) -> FloatArray:
        """Similarity-align ``(N, 478, 3)`` landmarks (any pixel frame) to the mean on the rigid vertices."""
        return align_to(np.asarray(landmarks, np.float32), self.mean, self.rigid_idx)

    def encode_landmarks(self, landmarks: npt.ArrayLike) -> FloatArray:
        """``(N, 478, 3)`` labeller landmarks -> ``(N, 29)`` std-normalised coefficients (procrustes bases)."""
        if self.kind != "procrustes":
            raise ModelError(f"basis {self.basis_id} encodes blendshapes, not landmarks")
        lm = np.asarray(landmarks, np.float32)
        if lm.ndim == 2:
            single: FloatArray = self.encode_landmarks(lm[None])[0]
            return single
        flat = self.align(lm).reshape(lm.shape[0], -1) - self.encoder_offset
        return ((flat @ self.encoder.T) / self.std).astype(np.float32)

    def encode_blendshapes(self, blendshapes: npt.ArrayLike) -> FloatArray:
        """``(N, 52)`` blendshape scores -> ``(N, 29)`` std-normalised coefficients (blendshape bases)."""
        if self.kind != "blendshapes":
            raise ModelError(f"basis {self.basis_id} encodes landmarks, not blendshapes")
        bs = np.asarray(blendshapes, np.float32)
        return (((bs - self.encoder_offset) @ self.encoder.T) / self.std).astype(np.float32)

    def encode(self, landmarks: npt.ArrayLike, blendshapes: npt.ArrayLike) -> FloatArray:
        """Coefficients ``(N, 29)`` from the labeller's output, whichever kind this basis is."""
        if self.kind == "procrustes":
            return self.encode_landmarks(landmarks)
        return self.encode_blendshapes(blendshapes)

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            basis_id=np.asarray(self.basis_id),
            kind=np.asarray(self.kind),
            mean=self.mean.astype(np.float32),
            components=self.components.astype(np.float32),
            std=self.std.astype(np.float32),
            encoder=self.encoder.astype(np.float32),
            encoder_offset=self.encoder_offset.astype(np.float32),
            rigid_idx=self.rigid_idx.astype(np.int32),
            triangles=self.triangles.astype(np.int32),
            explained=self.explained.astype(np.float32),
        )
        return path

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ExpressionBasis:
        try:
            with np.load(path, allow_pickle=False) as d:
                return cls(
                    basis_id=str(d["basis_id"]),
                    kind=str(d["kind"]),
                    mean=d["mean"],
                    components=d["components"],
                    std=d["std"],
                    encoder=d["encoder"],
                    encoder_offset=d["encoder_offset"],
                    rigid_idx=d["rigid_idx"].astype(np.intp),
                    triangles=d["triangles"],
                    explained=d["explained"],
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read expression basis {path}: {exc}") from exc


@functools.lru_cache(maxsize=8)
def load_basis(basis_id: str = DEFAULT_BASIS_ID) -> ExpressionBasis:
    """The shipped basis ``expnet_stream/models/basis/<basis_id>.npz`` (cached; treat it as read-only)."""
    path = BASIS_DIR / f"{basis_id}.npz"
    if not path.is_file():
        known = sorted(p.stem for p in BASIS_DIR.glob("*.npz"))
        raise ModelError(f"unknown expression basis {basis_id!r}; shipped: {known}")
    basis = ExpressionBasis.from_file(path)
    if basis.basis_id != basis_id:
        raise ModelError(f"{path} holds basis {basis.basis_id!r}, not {basis_id!r}")
    return basis


# ---------------------------------------------------------------------------------------------------------------------
# Fitting


def mediapipe_triangles() -> npt.NDArray[np.int32]:
    """Canonical triangles of the MediaPipe face mesh: the 3-cliques of ``FACE_LANDMARKS_TESSELATION`` (mediapipe).

    mediapipe ships the tessellation as edges only (no ``canonical_face_model.obj`` in the wheel); every triangle of
    the mesh has its three edges there, so the triangles are the edge graph's 3-cycles. Needs mediapipe (fitting only).
    """
    from mediapipe.tasks.python.vision.face_landmarker import FaceLandmarksConnections

    adj: dict[int, set[int]] = {}
    for c in FaceLandmarksConnections.FACE_LANDMARKS_TESSELATION:
        adj.setdefault(c.start, set()).add(c.end)
        adj.setdefault(c.end, set()).add(c.start)
    tris = {tuple(sorted((a, b, c))) for a, nb in adj.items() for b in nb if b > a for c in nb & adj[b] if c > b}
    return np.asarray(sorted(tris), np.int32).reshape(-1, 3)
