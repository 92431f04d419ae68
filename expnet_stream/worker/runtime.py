"""Build the detector and engine a worker or `run` needs from settings."""

from __future__ import annotations

import logging
from typing import Any

from .. import plugin_registry
from ..config.settings import WorkerSettings
from ..engines import create_engine
from ..engines.base import Engine
from ..faces.detector import FaceDetector

log = logging.getLogger(__name__)


def build_detector(settings: WorkerSettings) -> FaceDetector:
    detector = plugin_registry.create("face_detector", settings.detector.name, **settings.detector.options)
    if not isinstance(detector, FaceDetector):  # pragma: no cover - registry already checks the class
        raise TypeError(f"{settings.detector.name} is not a FaceDetector")
    return detector


def build_engine(settings: WorkerSettings) -> Engine:
    m = settings.model
    if m.onnx is not None:
        onnx_path = m.onnx
    else:  # exporting needs torch; a worker given an ONNX file does not import it
        from ..models.export import ensure_onnx

        onnx_path = ensure_onnx(m.name, m.cache_dir / "models")
    opts: dict[str, Any] = {"max_batch": settings.batch.max_batch}
    if m.engine == "onnxruntime":
        opts.update(intra_op_threads=m.threads, allow_spinning=m.allow_spinning)
    elif m.engine == "tensorrt":
        opts.update(
            plan_dir=m.plan_dir if m.plan_dir is not None else m.cache_dir / "plans",
            precision=m.precision,
            build_on_miss=m.build_on_miss,
            device_index=m.gpu_index,
        )
    else:
        opts.update(checkpoint=m.checkpoint, device=m.device, cuda_graphs=m.cuda_graphs, intra_op_threads=m.threads)
    engine = create_engine(m.engine, onnx_path, **opts)
    if not engine.contract.trained:
        log.warning(
            "model %s has UNTRAINED weights: its coefficients are meaningless (events say so in model_id "
            "and model_trained=false)",
            engine.model_id,
        )
    return engine
