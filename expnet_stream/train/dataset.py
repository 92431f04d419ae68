"""Training data: cached wide face crops + basis coefficients, identity-disjoint splits, and augmentation.

Each cached *wide* crop (:data:`~expnet_stream.train.sources.WIDE_CROP` px) holds the paper crop of the detector box
in its centre with a margin, so a batch is cut with a small random shift/scale of the box and no image decoding.
Augmentation follows what the worker meets on live video: faces downscaled to ``min_face_px`` (~20-24 px) and back
up (cubic, as :func:`~expnet_stream.faces.crop.crop_faces` does), JPEG, blur, colour jitter, greyscale, noise.
Every random draw comes from ``numpy.random.default_rng([seed, epoch, batch])``: same seed, same batches.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ..errors import ExpNetError
from .sources import PAPER_CROP, WIDE_CROP

logger = logging.getLogger(__name__)

__all__ = [
    "AugmentConfig",
    "FaceRegressionData",
    "augment_batch",
    "center_crops",
    "degrade_face_scale",
    "framed_crops",
    "holdout_mask",
    "level_crops",
    "mask_lower_face",
]

#: Rows of a paper crop (fractions of its side) that hold the lower third of the face box: the box is the central
#: 1/1.5 of the crop (1/6 .. 5/6), its lower third starts at 1/6 + 2/3 * 2/3 = 11/18; the mask runs to the crop's
#: bottom (the chin often reaches past a detector box) and spans the box's width.
LOWER_FACE_ROWS = (11 / 18, 1.0)
LOWER_FACE_COLS = (1 / 6, 5 / 6)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation probabilities and ranges (defaults: the shipped recipe)."""

    p_downscale: float = 0.6
    min_face_px: float = 20.0
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.4, 1.4)
    p_jpeg: float = 0.4
    jpeg_quality: tuple[int, int] = (25, 90)
    p_colour: float = 0.6
    p_grey: float = 0.25
    p_noise: float = 0.2
    noise_std: float = 4.0
    max_shift: float = 0.05
    scale_range: tuple[float, float] = (0.93, 1.07)
    max_rotate_deg: float = 10.0


def holdout_mask(subjects: npt.ArrayLike, fraction: float, salt: str = "expnet-val") -> npt.NDArray[np.bool_]:
    """True for the identities held out for validation: a stable hash of ``salt + subject`` (same on any machine)."""
    subj = np.asarray(subjects).astype(str)
    uniq, inv = np.unique(subj, return_inverse=True)
    h = np.array([zlib.crc32(f"{salt}:{s}".encode()) / 2**32 for s in uniq])
    return (h < fraction)[inv]


def center_crops(wide: npt.NDArray[np.uint8], crop: int = PAPER_CROP) -> npt.NDArray[np.uint8]:
    """The paper crops (``crop`` px) in the centre of wide crops ``(N, W, W, 3)``."""
    off = (wide.shape[1] - crop) // 2
    return np.ascontiguousarray(wide[:, off : off + crop, off : off + crop])


def level_crops(wide: npt.NDArray[np.uint8], roll_deg: npt.ArrayLike, size: int) -> npt.NDArray[np.uint8]:
    """The centre ``size`` px of wide crops ``(N, W, W, 3)``, each rotated about its centre by its ``roll_deg`` so the
    eyes are level: :func:`~expnet_stream.faces.crop.rotate_centre_crops`, the worker's levelling."""
    from ..faces.crop import rotate_centre_crops

    return rotate_centre_crops(wide, roll_deg, size)


def framed_crops(
    wide: npt.NDArray[np.uint8], roll_deg: npt.ArrayLike, size: int, level_eyes: bool
) -> npt.NDArray[np.uint8]:
    """The crops a model sees: levelled (:func:`level_crops`) when its contract levels the eyes, else the plain centre
    crops (:func:`center_crops`)."""
    return level_crops(wide, roll_deg, size) if level_eyes else center_crops(wide, size)


def mask_lower_face(
    crops: npt.NDArray[np.uint8], fill_bgr: tuple[float, float, float] | npt.ArrayLike, *, top: float | None = None
) -> npt.NDArray[np.uint8]:
    """Copies of paper crops ``(N, S, S, 3)`` with the lower third of the face (mouth and chin,
    :data:`LOWER_FACE_ROWS` x :data:`LOWER_FACE_COLS`) filled with ``fill_bgr`` (the contract's mean: zero input to
    the network). ``top`` moves the mask's upper edge (fraction of the side).

    >>> m = mask_lower_face(np.full((1, 18, 18, 3), 200, np.uint8), (0, 0, 0))
    >>> int(m[0, :11].min()), int(m[0, 11:, 3:15].max()), int(m[0, 11:, :3].min())
    (200, 0, 200)
    """
    out = crops.copy()
    size = crops.shape[1]
    y0 = round(size * (LOWER_FACE_ROWS[0] if top is None else top))
    x0, x1 = round(size * LOWER_FACE_COLS[0]), round(size * LOWER_FACE_COLS[1])
    out[:, y0:, x0:x1] = np.clip(np.round(np.asarray(fill_bgr, np.float64)), 0, 255).astype(np.uint8)
    return out


def degrade_face_scale(crops: npt.NDArray[np.uint8], factor: float) -> npt.NDArray[np.uint8]:
    """Crops as if the face were ``factor`` times its size in the frame: INTER_AREA down, INTER_CUBIC back up."""
    if factor >= 1.0:
        return crops
    size = crops.shape[1]
    small = max(2, round(size * factor))
    out = np.empty_like(crops)
    for i, c in enumerate(crops):
        s = cv2.resize(c, (small, small), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(s, (size, size), interpolation=cv2.INTER_CUBIC)
    return out


def _augment_one(
    wide: npt.NDArray[np.uint8], rng: np.random.Generator, cfg: AugmentConfig, size: int, base_deg: float = 0.0
) -> npt.NDArray[np.uint8]:
    w = wide.shape[0]
    s = rng.uniform(*cfg.scale_range)
    dx, dy = rng.uniform(-cfg.max_shift, cfg.max_shift, 2) * size
    jitter = rng.uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg) if cfg.max_rotate_deg > 0 else 0.0
    a = np.deg2rad(base_deg + jitter)
    # dst pixel centre (u, v) <- src = c_src + d + s * R(a) @ ((u, v) - c_dst), with c = side / 2 - 0.5
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c_dst = np.full(2, size / 2 - 0.5)
    t = np.full(2, w / 2 - 0.5) + np.array([dx, dy]) - rot @ c_dst
    mat = np.concatenate([rot, t[:, None]], axis=1)
    img = cv2.warpAffine(
        wide, mat, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )
    if rng.random() < cfg.p_colour:
        f = img.astype(np.float32)
        gain = rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, 3)
        mean = f.mean()
        contrast = rng.uniform(0.75, 1.25)
        f = (f - mean) * contrast + mean
        grey = f.mean(2, keepdims=True)
        sat = rng.uniform(0.6, 1.3)
        f = (grey + (f - grey) * sat) * gain + rng.uniform(-15, 15)
        img = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < cfg.p_grey:
        g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        img = np.repeat(g[:, :, None], 3, axis=2)
    face_px = size / 1.5
    low = img
    if rng.random() < cfg.p_downscale:
        target = float(np.exp(rng.uniform(np.log(cfg.min_face_px), np.log(face_px))))
        small = max(4, round(size * target / face_px))
        low = cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA)
    if rng.random() < cfg.p_blur:
        sigma = rng.uniform(*cfg.blur_sigma) * low.shape[0] / size
        low = cv2.GaussianBlur(low, (0, 0), max(sigma, 0.3))
    if rng.random() < cfg.p_jpeg:
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", low, [cv2.IMWRITE_JPEG_QUALITY, q])
        dec = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        if dec is not None:
            low = np.asarray(dec, np.uint8)
    if low.shape[0] != size:
        low = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    if rng.random() < cfg.p_noise:
        noisy = low.astype(np.float32) + np.asarray(rng.normal(0.0, cfg.noise_std, low.shape), np.float32)
        low = np.clip(noisy, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(low)


def augment_batch(
    wide: npt.NDArray[np.uint8],
    rng: np.random.Generator,
    cfg: AugmentConfig,
    size: int = PAPER_CROP,
    base_deg: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.uint8]:
    """Augmented paper crops ``(N, size, size, 3)`` uint8 BGR from wide crops ``(N, W, W, 3)``; ``base_deg`` (N,)
    rotates each face before the random rotation (the eye roll, to level the eyes)."""
    out = np.empty((wide.shape[0], size, size, 3), np.uint8)
    for i in range(wide.shape[0]):
        out[i] = _augment_one(wide[i], rng, cfg, size, 0.0 if base_deg is None else float(base_deg[i]))
    return out


class FaceRegressionData:
    """Wide crops ``(N, W, W, 3)`` uint8 and targets ``(N, K)`` float32 for one split; deterministic batches."""

    def __init__(
        self,
        wide_crops: npt.NDArray[np.uint8],
        targets: npt.NDArray[np.float32],
        *,
        seed: int = 0,
        augment: AugmentConfig | None = None,
        crop_size: int = PAPER_CROP,
        base_deg: npt.NDArray[np.float32] | None = None,
    ) -> None:
        if wide_crops.ndim != 4 or wide_crops.shape[1] != wide_crops.shape[2] or wide_crops.shape[3] != 3:
            raise ExpNetError(f"wide crops must be (N, W, W, 3), got {wide_crops.shape}")
        if targets.shape[0] != wide_crops.shape[0]:
            raise ExpNetError(f"{targets.shape[0]} targets for {wide_crops.shape[0]} crops")
        if wide_crops.shape[1] < crop_size:
            raise ExpNetError(f"wide crops ({wide_crops.shape[1]} px) are smaller than the crop ({crop_size} px)")
        if wide_crops.shape[1] != WIDE_CROP:
            logger.warning("wide crops are %d px, the cache default is %d", wide_crops.shape[1], WIDE_CROP)
        if base_deg is not None and base_deg.shape != (wide_crops.shape[0],):
            raise ExpNetError(f"base_deg must have shape ({wide_crops.shape[0]},), got {base_deg.shape}")
        self.wide = wide_crops
        self.base_deg = base_deg
        self.targets = targets.astype(np.float32)
        self.seed = seed
        self.augment = augment
        self.crop_size = crop_size

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def num_batches(self, batch_size: int, *, drop_last: bool) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(
        self, epoch: int, batch_size: int, *, shuffle: bool = True, drop_last: bool = True
    ) -> Iterator[tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]]:
        """``(crops uint8 (B, S, S, 3), targets (B, K))`` batches; random draws depend only on seed/epoch/batch."""
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng([self.seed, epoch, 1 << 20]).permutation(len(self))
        for b in range(self.num_batches(batch_size, drop_last=drop_last)):
            idx = np.sort(order[b * batch_size : (b + 1) * batch_size])
            wide = self.wide[idx]
            if self.augment is None:
                crops = (
                    center_crops(wide, self.crop_size)
                    if self.base_deg is None
                    else level_crops(wide, self.base_deg[idx], self.crop_size)
                )
            else:
                base = None if self.base_deg is None else self.base_deg[idx]
                rng = np.random.default_rng([self.seed, epoch, b])
                crops = augment_batch(wide, rng, self.augment, self.crop_size, base)
            yield crops, self.targets[idx]
