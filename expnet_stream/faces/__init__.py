"""Face detection, crops and tracking."""

from .detections import Detections as Detections
from .detector import FaceDetector as FaceDetector
