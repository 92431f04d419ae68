"""The ExpNet face crop: one implementation, used by training, evaluation and the worker.

Rule (paper and official code, ``pose_utils.preProcessImage``): make the face box square around its centre with
side ``max(w, h)``, grow it by ``expand * side`` on each edge (0.25 -> 1.5x), fill what falls outside the frame with
zeros and resample it to ``contract.crop_size`` (227) with cubic interpolation. The later 227 -> 224 step is not done
here: it is part of :meth:`expnet_stream.models.contract.PreprocessContract.normalize` (TF1 bilinear resize, as the
official code does).

Like the official code, the expanded box is snapped to whole pixels (``ceil`` of the top-left corner, side from the
ceiled corners) unless ``contract.crop_snap_to_pixels`` is False; on the official sample frames this reproduces the
official 227 px crops to within JPEG noise (mean abs difference ~1 grey level, the same as an exact re-implementation
of the official code; sub-pixel boxes give ~2). Unlike it, the crop is not round-tripped through a JPEG file.

Pixel convention: ``xyxy`` are pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1)``, x2/y2 exclusive, as in
:class:`~expnet_stream.faces.detections.Detections`), and resampling follows ``cv2.resize`` (half-pixel centres), so
a box with integer corners reproduces ``cv2.resize(frame[y1:y2, x1:x2], (S, S), interpolation=cv2.INTER_CUBIC)``.

>>> square_boxes(np.array([[10, 20, 50, 40]], np.float32)).tolist()
[[0.0, 0.0, 60.0, 60.0]]
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import numpy.typing as npt

from ..models.contract import PreprocessContract

logger = logging.getLogger(__name__)

__all__ = ["LEVEL_MARGIN", "crop_boxes", "crop_faces", "crop_matrices", "rotate_centre_crops", "square_boxes"]

#: A levelled crop is cut from an upright crop this many times wider (the training caches' 138 px around 114 px), so
#: the rotation never reaches past it at rolls up to about 35 degrees.
LEVEL_MARGIN = 138 / 114

_INTERPOLATION = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}


def _as_boxes(xyxy: npt.ArrayLike) -> npt.NDArray[np.float32]:
    boxes = np.asarray(xyxy, dtype=np.float32)
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as x1, y1, x2, y2; got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes must be finite")
    return boxes


def _square(boxes: npt.NDArray[np.float32], expand: float) -> npt.NDArray[np.float64]:
    b = boxes.astype(np.float64)
    centre = (b[:, 0:2] + b[:, 2:4]) * 0.5
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    half = (side * (0.5 + expand))[:, None]
    return np.concatenate([centre - half, centre + half], axis=1)


def square_boxes(xyxy: npt.ArrayLike, expand: float = 0.25) -> npt.NDArray[np.float32]:
    """``(N, 4)`` boxes -> ``(N, 4)`` float32 square boxes: centred, side ``max(w, h) * (1 + 2 * expand)``.

    >>> square_boxes(np.array([[0, 0, 10, 20]]), expand=0.0).tolist()
    [[-5.0, 0.0, 15.0, 20.0]]
    """
    return _square(_as_boxes(xyxy), expand).astype(np.float32)


def crop_boxes(xyxy: npt.ArrayLike, expand: float = 0.25, *, snap_to_pixels: bool = True) -> npt.NDArray[np.float64]:
    """``(N, 4)`` float64 frame regions that :func:`crop_faces` resamples: :func:`square_boxes`, optionally snapped.

    Snapping follows the official code: top-left ``ceil``-ed, side ``max(ceil(x2) - ceil(x1), ceil(y2) - ceil(y1))``.

    >>> crop_boxes(np.array([[10.5, 20.5, 50.5, 40.5]])).tolist()
    [[1.0, 1.0, 61.0, 61.0]]
    """
    sq = _square(_as_boxes(xyxy), expand)
    if not snap_to_pixels:
        return sq
    # The tolerance keeps float32 detector output that is an integer up to rounding on that integer.
    up = np.ceil(sq - 1e-6)
    side = np.maximum(up[:, 2] - up[:, 0], up[:, 3] - up[:, 1])
    return np.stack([up[:, 0], up[:, 1], up[:, 0] + side, up[:, 1] + side], axis=1)


def crop_matrices(
    xyxy: npt.ArrayLike, crop_size: int, expand: float = 0.25, *, snap_to_pixels: bool = True
) -> npt.NDArray[np.float64]:
    """``(N, 2, 3)`` inverse affine maps (crop pixel -> frame pixel) for ``cv2.WARP_INVERSE_MAP``.

    Half-pixel convention of ``cv2.resize``: ``frame_x = x1 + (crop_x + 0.5) * scale - 0.5`` over :func:`crop_boxes`.
    """
    sq = crop_boxes(xyxy, expand, snap_to_pixels=snap_to_pixels)
    # A degenerate box still gives a valid (constant) crop instead of a division by zero.
    scale = np.maximum(sq[:, 2] - sq[:, 0], 1e-3) / float(crop_size)
    mats = np.zeros((sq.shape[0], 2, 3), np.float64)
    mats[:, 0, 0] = scale
    mats[:, 1, 1] = scale
    mats[:, 0, 2] = sq[:, 0] + 0.5 * scale - 0.5
    mats[:, 1, 2] = sq[:, 1] + 0.5 * scale - 0.5
    return mats


def rotate_centre_crops(wide: npt.NDArray[np.uint8], roll_deg: npt.ArrayLike, size: int) -> npt.NDArray[np.uint8]:
    """The centre ``size`` px of square crops ``(N, W, W, 3)``, each rotated about its centre by its ``roll_deg`` so
    a face whose eye line has that roll comes out with level eyes (bilinear, reflected border). Training
    (:func:`expnet_stream.train.dataset.level_crops`) and the worker (:func:`crop_faces` with ``roll_deg``) level
    faces with this one function. Roll 0 gives the plain centre crop.

    >>> w = np.zeros((1, 20, 20, 3), np.uint8); w[0, 10, :] = 255  # a horizontal line
    >>> bool((rotate_centre_crops(w, [0.0], 10)[0] == w[0, 5:15, 5:15]).all())
    True
    >>> rows_hit = rotate_centre_crops(w, [90.0], 10)[0, :, :, 0].max(1) > 0  # now vertical: it crosses every row
    >>> bool(rows_hit.all())
    True
    """
    roll = np.asarray(roll_deg, np.float64).reshape(-1)
    if roll.shape[0] != wide.shape[0]:
        raise ValueError(f"rotate_centre_crops: {roll.shape[0]} angles for {wide.shape[0]} crops")
    out = np.empty((wide.shape[0], size, size, 3), np.uint8)
    c_src, c_dst = np.full(2, wide.shape[1] / 2 - 0.5), np.full(2, size / 2 - 0.5)
    for i in range(wide.shape[0]):
        a = np.deg2rad(roll[i]) if np.isfinite(roll[i]) else 0.0
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        mat = np.concatenate([rot, (c_src - rot @ c_dst)[:, None]], axis=1)
        out[i] = cv2.warpAffine(
            wide[i], mat, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
    return out


def crop_faces(
    frame_bgr: npt.NDArray[np.uint8],
    xyxy: npt.ArrayLike,
    contract: PreprocessContract,
    roll_deg: npt.ArrayLike | None = None,
) -> npt.NDArray[np.uint8]:
    """Cut the ExpNet crops of ``xyxy`` (N, 4) from ``frame_bgr`` (H, W, 3) uint8 -> ``(N, S, S, 3)`` uint8 BGR.

    ``S = contract.crop_size``; expand, interpolation and fill value come from the contract. One ``cv2.warpAffine``
    per face: it samples only the S x S output pixels (cost independent of the frame size), resizes and zero-pads in
    one pass, writing straight into the output batch.

    With ``contract.crop_level_eyes`` and ``roll_deg`` (N,) given, faces with a finite roll are levelled as in
    training: the upright crop :data:`LEVEL_MARGIN` times wider, rotated about its centre (:func:`rotate_centre_crops`).
    """
    if contract.crop_level_eyes and roll_deg is not None:
        roll = np.asarray(roll_deg, np.float64).reshape(-1)
        if np.isfinite(roll).any():
            wide_size = round(contract.crop_size * LEVEL_MARGIN)
            expand = ((1.0 + 2.0 * contract.crop_expand) * wide_size / contract.crop_size - 1.0) / 2.0
            wide_c = contract.model_copy(
                update={"crop_size": wide_size, "crop_expand": expand, "crop_level_eyes": False}
            )
            return rotate_centre_crops(crop_faces(frame_bgr, xyxy, wide_c), roll, contract.crop_size)
    frame = np.asarray(frame_bgr)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) uint8 BGR, got {frame.dtype} {frame.shape}")
    size = contract.crop_size
    mats = crop_matrices(xyxy, size, contract.crop_expand, snap_to_pixels=contract.crop_snap_to_pixels)
    out = np.empty((mats.shape[0], size, size, 3), np.uint8)
    if mats.shape[0] == 0:
        return out
    if not frame.flags.c_contiguous:
        frame = np.ascontiguousarray(frame)
    flags = _INTERPOLATION[contract.crop_interpolation] | cv2.WARP_INVERSE_MAP
    border = (contract.pad_value,) * 3
    for i in range(mats.shape[0]):
        cv2.warpAffine(
            frame, mats[i], (size, size), dst=out[i], flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=border
        )
    return out
