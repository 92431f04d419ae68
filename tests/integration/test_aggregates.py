"""Temporal stage on a real Kafka-protocol broker: the aggregates a worker publishes for a face video match the
aggregates recomputed from its per-frame topic; track ids are set; windows close once, in event time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from expnet_stream.aggregate import WindowAggregator
from expnet_stream.events.aggregate_schema import EmotionAggregate
from expnet_stream.events.codec import decode, encode
from expnet_stream.events.schema import FrameEvent, StreamSummary
from expnet_stream.kafka.broker import EmbeddedBroker
from expnet_stream.kafka.topics import ensure_topics
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.runtime import build_detector, build_engine
from expnet_stream.worker.worker import Worker
from tests.conftest import broker_settings

pytestmark = pytest.mark.integration

WINDOWS = [{"kind": "tumbling", "size_s": 0.5}, {"kind": "sliding", "size_s": 1.0, "step_s": 0.5}]


def _read(bootstrap: str, topic: str, until: Any, timeout_s: float = 60) -> list[Any]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(out):
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(decode(r.value) for r in records)
    finally:
        consumer.close()
    return out


def test_published_aggregates_match_recomputed_from_frames(
    broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, face_video: tuple[Path, list[bool]]
) -> None:
    video, has_face = face_video
    settings = broker_settings(
        broker,
        topic_prefix,
        small_onnx,
        topics={"input_partitions": 1},
        temporal={"windows": WINDOWS, "allowed_lateness_s": 0.0},
    )
    ensure_topics(settings.kafka, settings.topics)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", max_in_flight_requests_per_connection=1)
    for m in iter_stream_messages(str(video), "cam-t"):
        producer.send(settings.topics.input, key=b"cam-t", value=encode(m))
    producer.flush()
    producer.close()

    worker = Worker(settings, build_detector(settings), build_engine(settings))
    try:
        worker.run(max_seconds=120, until=lambda w: w.stats.summaries >= 1)
    finally:
        worker.close()
    assert worker.stats.aggregates > 0

    frames_topic = _read(
        broker.bootstrap, settings.topics.expressions, lambda ev: any(isinstance(e, StreamSummary) for e in ev)
    )
    frames = [e for e in frames_topic if isinstance(e, FrameEvent)]
    assert len(frames) == len(has_face)
    published = _read(broker.bootstrap, settings.topics.emotions, lambda ev: len(ev) >= worker.stats.aggregates)
    assert all(isinstance(e, EmotionAggregate) for e in published)
    assert len({e.event_id for e in published}) == len(published), "no window emitted twice"

    # the worker's tracker set ids: one face moving across the frame is one track
    ids = {f.track_id for e in frames for f in e.faces}
    assert ids == {0}

    # recompute from the per-frame topic with the same windows
    agg = WindowAggregator(settings.temporal.window_specs(), frames[0].model_id, per_track=True, allowed_lateness_s=0.0)
    recomputed: list[EmotionAggregate] = []
    for e in frames:
        coeffs = np.array([f.coefficients for f in e.faces], np.float32).reshape(-1, 29)
        recomputed += agg.on_frame("cam-t", e.pts_time, [f.track_id for f in e.faces], coeffs)
    recomputed += agg.flush("cam-t", "end_of_stream")

    def key(a: EmotionAggregate) -> tuple[Any, ...]:
        return (a.track_id, a.window_kind, a.window_start)

    pub = {key(a): a for a in published}
    rec = {key(a): a for a in recomputed}
    assert set(pub) == set(rec)
    for k, a in rec.items():
        b = pub[k]
        assert (b.event_id, b.frames, b.faces, b.first_time, b.last_time, b.closed_by) == (
            a.event_id,
            a.frames,
            a.faces,
            a.first_time,
            a.last_time,
            a.closed_by,
        ), k
        np.testing.assert_allclose(b.mean_coefficients, a.mean_coefficients, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.std_coefficients, a.std_coefficients, rtol=1e-4, atol=1e-5)
    # every frame is counted once in the stream's tumbling windows
    assert sum(a.frames for a in published if a.track_id == -1 and a.window_kind == "tumbling") == len(frames)
    assert {a.closed_by for a in published} == {"watermark", "end_of_stream"}
