"""`expnet-stream run VIDEO`: the same pipeline with no broker, events to a callback."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.settings import WorkerSettings
from ..engines.base import Engine
from ..errors import DecodeError
from ..events.aggregate_schema import EmotionAggregate
from ..events.schema import FrameEvent, StreamSummary
from ..faces.detector import FaceDetector
from ..video.ingest import iter_stream_messages
from .pipeline import EmotionClassifier, Pipeline, Source
from .runtime import decode_limits, make_temporal
from .stages import StageTimes

log = logging.getLogger(__name__)


@dataclass
class LocalRunResult:
    frame_events: int = 0
    aggregates: int = 0
    summaries: list[StreamSummary] = field(default_factory=list)
    decode_errors: int = 0
    seconds: float = 0.0
    stages: StageTimes = field(default_factory=StageTimes)
    detect_reasons: dict[str, int] = field(default_factory=dict)  # why the detector ran (Pipeline.detect_reasons)


def run_local(
    sources: list[tuple[str, str]],
    settings: WorkerSettings,
    detector: FaceDetector,
    engine: Engine,
    on_event: Callable[[FrameEvent | StreamSummary | EmotionAggregate], None],
    *,
    max_packets: int | None = None,
    emotion_head: EmotionClassifier | None = None,
) -> LocalRunResult:
    """Process ``(source, stream_id)`` pairs one after the other; every event goes to ``on_event``."""
    result = LocalRunResult()

    def emit(event: FrameEvent | StreamSummary | EmotionAggregate, _sources: list[Source]) -> None:
        if isinstance(event, FrameEvent):
            result.frame_events += 1
        elif isinstance(event, EmotionAggregate):
            result.aggregates += 1
        else:
            result.summaries.append(event)
        on_event(event)

    pipeline = Pipeline(
        detector,
        engine,
        emit=emit,
        done=lambda _s: None,
        max_batch=settings.batch.max_batch,
        max_wait_ms=math.inf,
        sample_fps=settings.sampling.fps,
        stages=result.stages,  # offline: batch by size only
        temporal=make_temporal(settings, engine, emotion_head),
        emotion_head=emotion_head,
        decode_limits=decode_limits(settings),
    )
    t0 = time.perf_counter()
    offset = 0
    for source, stream_id in sources:
        for msg in iter_stream_messages(source, stream_id, max_packets=max_packets):
            try:
                pipeline.handle(msg, Source(-1, offset))
            except DecodeError as exc:
                result.decode_errors += 1
                log.warning("stream=%s: %s", stream_id, exc)
            offset += 1
            pipeline.pump()
    pipeline.pump(force=True)
    result.seconds = time.perf_counter() - t0
    result.detect_reasons = dict(pipeline.detect_reasons)
    return result
