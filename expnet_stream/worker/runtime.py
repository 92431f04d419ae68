"""Build the detector and engine a worker or `run` needs from settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import plugin_registry
from ..aggregate.temporal import StreamTemporal
from ..config.settings import WorkerSettings
from ..engines import create_engine
from ..engines.base import Engine
from ..errors import EngineError
from ..faces.detector import FaceDetector
from ..video.decode import DecodeLimits
from .pipeline import EmotionClassifier

DEFAULT_MODEL = "default"
"""``model.name`` / ``model.emotion_head`` value meaning the trained weights shipped in the package."""
COEFFICIENT_HEAD = "coefficients"
"""``model.emotion_head`` value: the shipped coefficient head even when the model has its own emotion output."""

log = logging.getLogger(__name__)


def build_detector(settings: WorkerSettings) -> FaceDetector:
    detector = plugin_registry.create("face_detector", settings.detector.name, **settings.detector.options)
    if not isinstance(detector, FaceDetector):  # pragma: no cover - registry already checks the class
        raise TypeError(f"{settings.detector.name} is not a FaceDetector")
    return detector


def _shipped_checkpoint() -> Path:
    """The shipped model's torch checkpoint, for engine ``torch``. A source checkout has it; the wheel leaves it out
    (the ONNX Runtime and TensorRT engines never read it), so an installed package needs ``model.checkpoint``."""
    from ..errors import ModelError
    from ..models.weights import default_checkpoint_path

    try:
        return default_checkpoint_path()
    except ModelError as exc:
        raise EngineError(
            f"engine 'torch' needs the torch checkpoint of the shipped model, which the wheel leaves out ({exc}): "
            "set model.checkpoint (EXPNET_MODEL__CHECKPOINT) to that file from a source checkout, or use the GPU "
            "image (deploy/tensorrt/Dockerfile), which has it"
        ) from exc


def build_engine(settings: WorkerSettings) -> Engine:
    m = settings.model
    if m.onnx is not None:
        onnx_path = m.onnx
    elif m.name == DEFAULT_MODEL:
        from ..models.weights import default_model_path

        onnx_path = default_model_path()
    else:  # a registered architecture with untrained weights; exporting needs torch
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
        checkpoint = m.checkpoint
        if checkpoint is None and m.onnx is None and m.name == DEFAULT_MODEL:
            checkpoint = _shipped_checkpoint()
        opts.update(checkpoint=checkpoint, device=m.device, cuda_graphs=m.cuda_graphs, intra_op_threads=m.threads)
    engine = create_engine(m.engine, onnx_path, **opts)
    if not engine.contract.trained:
        log.warning(
            "model %s has UNTRAINED weights: its coefficients are meaningless (events say so in model_id "
            "and model_trained=false)",
            engine.model_id,
        )
    return engine


def build_emotion_head(settings: WorkerSettings, engine: Engine) -> EmotionClassifier | None:
    """The emotion output the settings ask for (``model.emotion_head``).

    ``default``: the model's own emotion output when it has one and the engine reads it, else the shipped
    coefficient head; ``coefficients``: the shipped coefficient head; a path: that coefficient head; null: none.
    A coefficient head whose expression basis is not the engine's gives None, with a warning.
    """
    spec = settings.model.emotion_head
    if spec is None:
        return None
    from ..models.emotion import EmotionHead, ModelEmotions

    if spec == DEFAULT_MODEL and engine.has_emotion_output:
        out = ModelEmotions(engine.contract.emotion_classes)
        log.info("emotions from the model's own output classes=%s unsupported=%s", out.classes, out.unsupported)
        return out
    if spec == DEFAULT_MODEL and engine.contract.emotion_output_name is not None:
        log.warning(
            "model %s has an emotion output but the %s engine does not read it: using the coefficient head",
            engine.model_id,
            engine.name,
        )
    if spec in (DEFAULT_MODEL, COEFFICIENT_HEAD):
        from ..models.weights import default_emotion_head_path

        path = default_emotion_head_path()
    else:
        path = Path(spec)
    head = EmotionHead.load(path)
    if head.basis_id != engine.contract.basis_id:
        log.warning(
            "emotion head %s expects basis %s but model %s outputs %s: events carry no emotions",
            path,
            head.basis_id,
            engine.model_id,
            engine.contract.basis_id,
        )
        return None
    return head


@dataclass
class Runtime:
    """What a worker, ``run``, ``annotate``, the demo, the benches and the evaluation run a video with: the engine,
    the detector and the emotion output the settings name (:func:`build_runtime`). ``close()`` (or ``with``) frees
    the engine and the detector."""

    settings: WorkerSettings
    engine: Engine
    detector: FaceDetector
    emotion_head: EmotionClassifier | None

    def close(self) -> None:
        self.detector.close()
        self.engine.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_runtime(settings: WorkerSettings) -> Runtime:
    """The one place a runtime is built from settings: engine, detector, emotion output (in that order: the
    emotion output depends on what the engine reads)."""
    engine = build_engine(settings)
    try:
        detector = build_detector(settings)
    except BaseException:
        engine.close()
        raise
    return Runtime(settings, engine, detector, build_emotion_head(settings, engine))


def make_temporal(
    settings: WorkerSettings, engine: Engine, emotion_head: EmotionClassifier | None
) -> StreamTemporal | None:
    """Tracking, smoothing and window aggregates per stream, when enabled."""
    if not settings.temporal.enabled:
        return None
    labels = tuple(emotion_head.classes) if emotion_head is not None else None
    return StreamTemporal(settings.temporal, engine.model_id, emotion_labels=labels)


def decode_limits(settings: WorkerSettings) -> DecodeLimits:
    """What a stream may ask the worker's decoders for (``decode`` settings)."""
    d = settings.decode
    memory = None if d.memory_mb is None else int(d.memory_mb * 2**20)
    return DecodeLimits(frozenset(d.codecs), d.max_pixels, d.max_extradata_bytes, memory)
