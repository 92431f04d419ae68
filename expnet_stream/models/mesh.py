"""Expression coefficients -> 3D mesh through an expression basis; PLY/OBJ writers and a small software renderer.

The basis is the project's linear expression model (:class:`~expnet_stream.models.expression_basis.ExpressionBasis`,
numpy only), read with :func:`~expnet_stream.models.expression_basis.load_basis` from
``expnet_stream/models/basis/<basis_id>.npz``. Of that file this module relies on the loader's ``coeffs_to_mesh``
(keys ``mean`` (V, 3), ``components`` (29, V, 3), ``std`` (29,): ``mean + (coeffs * std) @ components``) and
``triangles`` (T, 3) int32. Vertices are in the MediaPipe face frame:
x to the subject's left (image right), y down, z away from the camera.

Coefficients of a model are only meaningful in the basis its contract names (``basis_id``); a model whose basis is
``none/untrained`` has none, and :func:`basis_for_model` refuses it.

>>> from expnet_stream.models.expression_basis import load_basis
>>> v, t = mesh_from_coeffs(np.zeros(29, np.float32), load_basis())
>>> v.shape, v.dtype, t.shape[1], t.dtype
((478, 3), dtype('float32'), 3, dtype('int32'))
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import ModelError

if TYPE_CHECKING:
    from .expression_basis import ExpressionBasis

logger = logging.getLogger(__name__)

__all__ = [
    "UNTRAINED_BASIS_ID",
    "basis_for_model",
    "load_expression_basis",
    "mesh_from_coeffs",
    "render_mesh_png",
    "write_obj",
    "write_ply",
]

UNTRAINED_BASIS_ID = "none/untrained"
_FACE_BGR = (150, 172, 214)  # light skin tone, BGR
_AMBIENT = 0.25


def load_expression_basis(basis_id: str) -> ExpressionBasis:
    """The shipped basis ``basis_id``; ModelError for ``none/untrained`` or a basis this install does not ship."""
    if basis_id == UNTRAINED_BASIS_ID:
        raise ModelError(
            "the model's basis_id is 'none/untrained': its coefficients refer to no expression basis, so no mesh "
            "can be built; use a trained model, or pass --coeffs with an explicit --basis ID"
        )
    from .expression_basis import load_basis

    return load_basis(basis_id)


def basis_for_model(model_basis_id: str, requested: str | None = None) -> ExpressionBasis:
    """The basis for a model's (or event's) coefficients; ``requested`` (``--basis``) must agree with it."""
    if requested is not None and model_basis_id != UNTRAINED_BASIS_ID and requested != model_basis_id:
        raise ModelError(
            f"the coefficients refer to basis {model_basis_id!r}, not {requested!r}; drop --basis or make it match"
        )
    return load_expression_basis(model_basis_id)


def mesh_from_coeffs(
    coeffs: npt.ArrayLike, basis: ExpressionBasis | str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """``(29,)`` std-normalised coefficients -> ``(vertices (V, 3) float32, triangles (T, 3) int32)``.

    ``basis`` is an :class:`ExpressionBasis` or a shipped basis id. Zero coefficients give the basis' mean shape.
    """
    if isinstance(basis, str):
        basis = load_expression_basis(basis)
    c = np.asarray(coeffs, np.float32)
    if c.shape != (basis.num_coeffs,):
        raise ModelError(f"basis {basis.basis_id} takes {basis.num_coeffs} coefficients, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ModelError("coefficients must be finite")
    vertices = np.ascontiguousarray(basis.coeffs_to_mesh(c), np.float32)
    triangles = np.ascontiguousarray(basis.triangles, np.int32)
    return vertices, triangles


def _check_mesh(v: npt.ArrayLike, t: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    vertices = np.asarray(v, np.float32)
    triangles = np.asarray(t)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ModelError(f"vertices must be (V, 3), got {vertices.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ModelError(f"triangles must be (T, 3), got {triangles.shape}")
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ModelError(f"triangle indices must lie in [0, {len(vertices)})")
    return vertices, triangles.astype(np.int32)


def _write_text(path: str | os.PathLike[str], text: str) -> Path:
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="ascii")
    except OSError as exc:
        raise ModelError(f"cannot write {out}: {exc}") from exc
    return out


def write_ply(path: str | os.PathLike[str], v: npt.ArrayLike, t: npt.ArrayLike) -> Path:
    """ASCII PLY 1.0: float x/y/z vertices, faces as ``uchar`` count + ``int`` indices (0-based)."""
    vertices, triangles = _check_mesh(v, t)
    lines = [
        "ply",
        "format ascii 1.0",
        "comment expnet-stream expression mesh",
        f"element vertex {len(vertices)}",
        "property float x",
        "property float y",
        "property float z",
        f"element face {len(triangles)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    lines += [f"{x:.6g} {y:.6g} {z:.6g}" for x, y, z in vertices.tolist()]
    lines += [f"3 {a} {b} {c}" for a, b, c in triangles.tolist()]
    return _write_text(path, "\n".join(lines) + "\n")


def write_obj(path: str | os.PathLike[str], v: npt.ArrayLike, t: npt.ArrayLike) -> Path:
    """Wavefront OBJ: ``v x y z`` lines, then ``f a b c`` with 1-based indices."""
    vertices, triangles = _check_mesh(v, t)
    lines = ["# expnet-stream expression mesh"]
    lines += [f"v {x:.6g} {y:.6g} {z:.6g}" for x, y, z in vertices.tolist()]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in triangles.tolist()]
    return _write_text(path, "\n".join(lines) + "\n")


def _rotation(yaw_deg: float, pitch_deg: float) -> npt.NDArray[np.float64]:
    """Yaw about the (downward) y axis, then pitch about x (degrees). Positive yaw turns the face towards the
    viewer's left; positive pitch brings the forehead towards the viewer (the face looks down)."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = np.array([[math.cos(y), 0.0, math.sin(y)], [0.0, 1.0, 0.0], [-math.sin(y), 0.0, math.cos(y)]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), -math.sin(p)], [0.0, math.sin(p), math.cos(p)]])
    out: npt.NDArray[np.float64] = rx @ ry
    return out


def render_mesh_image(
    v: npt.ArrayLike, t: npt.ArrayLike, size: int = 512, yaw: float = 0.0, pitch: float = 0.0
) -> npt.NDArray[np.uint8]:
    """Render to a ``(size, size, 3)`` uint8 BGR image: orthographic view along +z, painter's algorithm (triangles
    filled far to near with ``cv2.fillConvexPoly``), flat Lambert shading with a head light, white background."""
    import cv2

    vertices, triangles = _check_mesh(v, t)
    if size < 16:
        raise ModelError(f"render size must be >= 16 px, got {size}")
    img = np.full((size, size, 3), 255, np.uint8)
    if len(triangles) == 0:
        return img
    used = vertices[np.unique(triangles)].astype(np.float64)
    centre = (used.max(0) + used.min(0)) / 2.0
    pts = (vertices.astype(np.float64) - centre) @ _rotation(yaw, pitch).T
    used_rot = pts[np.unique(triangles)]
    extent = float(np.max(used_rot.max(0)[:2] - used_rot.min(0)[:2]))
    scale = 0.9 * size / extent if extent > 0 else 1.0
    xy = pts[:, :2] * scale + size / 2.0
    tri = pts[triangles]  # (T, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    lengths[lengths == 0] = 1.0
    # The viewer looks along +z (camera at -z): light from the camera, |cos| so winding does not matter.
    lambert = np.abs(normals[:, 2]) / lengths
    shade = _AMBIENT + (1.0 - _AMBIENT) * lambert
    order = np.argsort(-tri[:, :, 2].mean(1), kind="stable")  # far (large z) first, near last
    shift = 4  # sub-pixel precision of fillConvexPoly
    poly = np.round(xy[triangles] * (1 << shift)).astype(np.int32)
    base = np.asarray(_FACE_BGR, np.float64)
    for i in order.tolist():
        colour = tuple(int(c) for c in np.clip(base * shade[i], 0, 255))
        cv2.fillConvexPoly(img, poly[i], colour, lineType=cv2.LINE_AA, shift=shift)
    return img


def render_mesh_png(
    v: npt.ArrayLike,
    t: npt.ArrayLike,
    path: str | os.PathLike[str],
    size: int = 512,
    yaw: float = 0.0,
    pitch: float = 0.0,
) -> Path:
    """Render with :func:`render_mesh_image` and write a PNG; returns the path."""
    import cv2

    img = render_mesh_image(v, t, size=size, yaw=yaw, pitch=pitch)
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise ModelError(f"PNG encoding of {out} failed")
        out.write_bytes(buf.tobytes())
    except OSError as exc:
        raise ModelError(f"cannot write {out}: {exc}") from exc
    logger.debug("rendered mesh path=%s size=%d yaw=%s pitch=%s", out, size, yaw, pitch)
    return out
