"""Build the detector and engine a worker or `run` needs from settings."""

from __future__ import annotations

import logging

from .. import plugin_registry
from ..config.settings import WorkerSettings
from ..engines import create_engine
from ..engines.base import Engine
from ..faces.detector import FaceDetector
from ..models.export import ensure_onnx

log = logging.getLogger(__name__)


def build_detector(settings: WorkerSettings) -> FaceDetector:
    detector = plugin_registry.create("face_detector", settings.detector.name, **settings.detector.options)
    if not isinstance(detector, FaceDetector):  # pragma: no cover - registry already checks the class
        raise TypeError(f"{settings.detector.name} is not a FaceDetector")
    return detector


def build_engine(settings: WorkerSettings) -> Engine:
    m = settings.model
    onnx_path = m.onnx if m.onnx is not None else ensure_onnx(m.name, m.cache_dir / "models")
    engine = create_engine(
        m.engine,
        onnx_path,
        max_batch=settings.batch.max_batch,
        intra_op_threads=m.threads,
        allow_spinning=m.allow_spinning,
    )
    if not engine.contract.trained:
        log.warning(
            "model %s has UNTRAINED weights: its coefficients are meaningless (events say so in model_id "
            "and model_trained=false)",
            engine.model_id,
        )
    return engine
