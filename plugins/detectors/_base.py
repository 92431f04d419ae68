"""Shared option handling for the built-in face detectors.

Every built-in detector accepts these options (from ``detector.options`` in the worker config):

``min_score`` (float in ``[0, 1]``)
    Drop faces scored below this. Each detector documents its default and what its score means.
``max_side`` (int or ``None``, default ``640``)
    Detect on a copy of the frame downscaled (``INTER_AREA``) so that its longer side is at most
    this many pixels, then scale the boxes back to the frame. It bounds the cost on 1080p and 4K
    frames; the price is that the smallest face found grows by the same factor (a detector that
    needs 20 px faces finds 60 px faces in a 1920 px frame with ``max_side=640``). ``None`` or
    ``0`` detects at full resolution. Frames are never upscaled.
``min_face_px`` (float, default ``0``)
    Drop faces whose shorter box side, in frame pixels, is below this. Detectors that can skip
    small scales (Haar) use it to save time too.

Boxes come back in frame pixels, clipped to the frame, sorted by score (highest first).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt

from expnet_stream.errors import ConfigError, DetectorError
from expnet_stream.faces.detections import Detections
from expnet_stream.faces.detector import BGRImage, FaceDetector

FloatArray = npt.NDArray[np.float32]

DEFAULT_MAX_SIDE = 640


def check_frame(frame_bgr: object) -> BGRImage:
    """Return ``frame_bgr`` as a C-contiguous ``(H, W, 3)`` uint8 array or raise :class:`DetectorError`."""
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.dtype != np.uint8:
        dtype = getattr(frame_bgr, "dtype", type(frame_bgr).__name__)
        raise DetectorError(f"a face detector needs a uint8 numpy array, got {dtype}")
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.shape[0] == 0 or frame_bgr.shape[1] == 0:
        raise DetectorError(f"a face detector needs a BGR frame of shape (H, W, 3), got {frame_bgr.shape}")
    return np.ascontiguousarray(frame_bgr)


def downscale(frame: BGRImage, max_side: int | None) -> tuple[BGRImage, float, float]:
    """Shrink ``frame`` so its longer side is at most ``max_side``.

    Returns the (maybe new) image and the factors ``(sx, sy)`` that map its pixel coordinates
    back to ``frame``'s (``x_frame = x_small * sx``).

    >>> img = np.zeros((1080, 1920, 3), np.uint8)
    >>> small, sx, sy = downscale(img, 640)
    >>> small.shape, sx, sy
    ((360, 640, 3), 3.0, 3.0)
    >>> downscale(img, None)[0] is img
    True
    """
    h, w = frame.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return frame, 1.0, 1.0
    f = max_side / max(h, w)
    new_w, new_h = max(1, round(w * f)), max(1, round(h * f))
    small = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small), w / new_w, h / new_h


def finish(
    xyxy_small: npt.ArrayLike,
    score: npt.ArrayLike,
    sx: float,
    sy: float,
    frame_hw: tuple[int, int],
    min_score: float,
    min_face_px: float,
    roll_deg: npt.ArrayLike | None = None,
) -> Detections:
    """Scale boxes back to the frame, clip them to it, filter by score and size, sort by score; ``roll_deg`` (one
    per box, from the detector's landmarks) follows its box.

    >>> d = finish([[10, 10, 30, 40], [-5, 0, 4, 4]], [0.9, 0.8], 2.0, 2.0, (50, 50), 0.5, 0)
    >>> d.xyxy.tolist(), [round(float(s), 2) for s in d.score]
    ([[20.0, 20.0, 50.0, 50.0], [0.0, 0.0, 8.0, 8.0]], [0.9, 0.8])
    """
    boxes = np.asarray(xyxy_small, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    scores = np.clip(np.asarray(score, dtype=np.float32).reshape(-1), 0.0, 1.0)
    h, w = frame_hw
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, float(w))
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, float(h))
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    keep = (side > 0) & (side >= min_face_px) & (scores >= min_score)
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    if roll_deg is None:
        return Detections(boxes[order], scores[order])
    roll = np.asarray(roll_deg, np.float32).reshape(-1)[keep]
    return Detections(boxes[order], scores[order], roll_deg=roll[order])


def _number(key: str, value: Any, lo: float, hi: float | None = None) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"detector option {key}={value!r} is not a number") from exc
    if x < lo or (hi is not None and x > hi) or np.isnan(x):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"detector option {key}={value!r} must be {bound}")
    return x


class ScaledFaceDetector(FaceDetector):
    """A :class:`FaceDetector` that downscales, runs :meth:`_detect_small`, and maps boxes back.

    Subclasses implement :meth:`_detect_small`. Calls to it are serialised by a per-instance lock
    (``_lock``), so one instance may be shared between threads; use one instance per thread for
    parallelism where the backend allows it (see each detector's notes).
    """

    default_min_score: ClassVar[float] = 0.5

    def __init__(
        self,
        *,
        min_score: float | None = None,
        max_side: int | None = DEFAULT_MAX_SIDE,
        min_face_px: float = 0.0,
        **extra: Any,
    ) -> None:
        if extra:
            raise ConfigError(f"unknown option(s) for face detector {self.name!r}: {sorted(extra)}")
        self.min_score = self.default_min_score if min_score is None else _number("min_score", min_score, 0, 1)
        self.max_side = None if not max_side else int(_number("max_side", max_side, 32))
        self.min_face_px = _number("min_face_px", min_face_px, 0)
        super().__init__(min_score=self.min_score, max_side=self.max_side, min_face_px=self.min_face_px)
        self._lock = threading.Lock()

    def detect(self, frame_bgr: BGRImage) -> Detections:
        frame = check_frame(frame_bgr)
        small, sx, sy = downscale(frame, self.max_side)
        min_px_small = self.min_face_px / max(sx, sy)
        with self._lock:
            xyxy, score = self._detect_small(small, min_px_small)
        return finish(xyxy, score, sx, sy, (frame.shape[0], frame.shape[1]), self.min_score, self.min_face_px)

    def _detect_small(self, image: BGRImage, min_face_px: float) -> tuple[npt.ArrayLike, npt.ArrayLike]:
        """Detect in ``image`` (already downscaled); return ``xyxy (N, 4)`` and ``score (N,)`` in its pixels.

        ``min_face_px`` is the size floor in ``image`` pixels; honouring it is optional (the caller
        filters again), it only saves work.
        """
        raise NotImplementedError
