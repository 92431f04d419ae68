"""OpenCV Haar cascade face detector (``haar``): no extra dependency, weakest of the built-ins.

Options (besides ``min_score``, ``max_side``, ``min_face_px``; see :mod:`._base`):

``cascade`` (str, default ``"frontalface_default"``)
    ``"frontalface_default"``, ``"frontalface_alt"``, ``"frontalface_alt2"``, ``"frontalface_alt_tree"``
    (the XML files shipped in ``cv2.data.haarcascades``) or a path to a cascade XML file.
``scale_factor`` (float > 1, default ``1.1``)
    Image pyramid step of ``detectMultiScale``; larger is faster and misses more.
``min_neighbors`` (int >= 1, default ``5``)
    Overlapping raw hits a face needs to be kept; the main precision/recall knob.

Score: a Haar cascade has no calibrated confidence. The score is a proxy from the number ``n``
of raw hits merged into the box (``detectMultiScale2``): ``1 - 0.5 ** (n / min_neighbors)``. A
box that barely passed ``min_neighbors`` scores about 0.5, twice as many hits 0.75. Hence the
default ``min_score`` is ``0`` (``min_neighbors`` already filters).

The frame is converted to grey and histogram-equalised before detection. The smallest face found
is the cascade window, 24 px (20 px for ``alt*``), in the downscaled image.

Thread safety: calls on one instance are serialised by a lock; ``cv2.CascadeClassifier`` is not
documented as thread-safe. Create one instance per thread to run in parallel.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt

from expnet_stream.errors import ConfigError, DetectorError
from expnet_stream.faces.detector import BGRImage
from expnet_stream.plugin_registry import register

from ._base import ScaledFaceDetector

_CASCADE_DIR = Path(cv2.data.haarcascades)  # type: ignore[attr-defined]
BUILTIN_CASCADES = ("frontalface_default", "frontalface_alt", "frontalface_alt2", "frontalface_alt_tree")


def cascade_path(cascade: str) -> Path:
    """Resolve a built-in cascade name or a file path to an existing XML file."""
    if cascade in BUILTIN_CASCADES:
        return _CASCADE_DIR / f"haarcascade_{cascade}.xml"
    path = Path(cascade).expanduser()
    if path.suffix.lower() != ".xml":
        raise ConfigError(f"haar cascade {cascade!r} is neither one of {list(BUILTIN_CASCADES)} nor an .xml file")
    return path


@register("face_detector", "haar")
class HaarFaceDetector(ScaledFaceDetector):
    """OpenCV Haar cascade; CPU only, ships with ``opencv-python-headless``.

    >>> import numpy as np
    >>> len(HaarFaceDetector().detect(np.zeros((120, 160, 3), np.uint8)))
    0
    """

    name: ClassVar[str] = "haar"
    default_min_score: ClassVar[float] = 0.0

    def __init__(
        self,
        *,
        cascade: str = "frontalface_default",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        **base: Any,
    ) -> None:
        super().__init__(**base)  # min_score, max_side, min_face_px: declared once, in ScaledFaceDetector
        if not float(scale_factor) > 1.0:
            raise ConfigError(f"haar option scale_factor={scale_factor!r} must be > 1")
        if int(min_neighbors) < 1:
            raise ConfigError(f"haar option min_neighbors={min_neighbors!r} must be >= 1")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        path = cascade_path(str(cascade))
        if not path.is_file():
            raise DetectorError(f"haar cascade file not found: {path}")
        self._classifier = cv2.CascadeClassifier(str(path))
        if self._classifier.empty():
            raise DetectorError(f"OpenCV could not load the haar cascade {path}")
        self.options.update(cascade=str(cascade), scale_factor=self.scale_factor, min_neighbors=self.min_neighbors)

    def _detect_small(self, image: BGRImage, min_face_px: float) -> tuple[npt.ArrayLike, npt.ArrayLike]:
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        side = math.floor(min_face_px)
        try:
            rects, hits = self._classifier.detectMultiScale2(
                gray,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(side, side),
            )
        except cv2.error as exc:
            raise DetectorError(f"haar detection failed: {exc}") from exc
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        xywh = np.asarray(rects, np.float32).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        n = np.asarray(hits, np.float32).reshape(-1)
        score = 1.0 - np.power(0.5, n / self.min_neighbors)
        return xyxy, score

    def close(self) -> None:
        self._classifier = cv2.CascadeClassifier()
