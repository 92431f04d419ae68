"""Base class of face detector plugins."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from .detections import Detections

BGRImage = npt.NDArray[np.uint8]


class FaceDetector(abc.ABC):
    """Finds faces in BGR ``uint8`` frames of shape ``(H, W, 3)``.

    Subclasses set ``name`` and implement :meth:`detect`. Constructor keyword arguments come
    from the ``detector.options`` mapping of the worker config.
    """

    name: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abc.abstractmethod
    def detect(self, frame_bgr: BGRImage) -> Detections:
        """Return the faces in one frame, boxes in that frame's pixel coordinates."""

    def detect_batch(self, frames: Sequence[BGRImage]) -> list[Detections]:
        """Detect in several frames; override when the backend batches natively."""
        return [self.detect(f) for f in frames]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""


def _declare() -> None:
    from ..plugin_registry import declare_kind

    declare_kind("face_detector", FaceDetector)


_declare()
