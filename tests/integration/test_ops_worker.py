"""A worker on a real Kafka-protocol broker serves /metrics, /healthz, /readyz: metrics move, readiness follows
assignment and shutdown."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from expnet_stream.events.codec import encode
from expnet_stream.kafka.broker import EmbeddedBroker
from expnet_stream.kafka.topics import ensure_topics
from expnet_stream.ops import HealthServer, WorkerHealth, WorkerMetrics
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.runtime import build_detector, build_engine
from expnet_stream.worker.worker import Worker
from tests.conftest import broker_settings

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_worker_metrics_move_and_readiness_follows_assignment(
    broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, face_video: tuple[Path, list[bool]]
) -> None:
    video, has_face = face_video
    settings = broker_settings(broker, topic_prefix, small_onnx)
    ensure_topics(settings.kafka, settings.topics)
    health = WorkerHealth(liveness_timeout_s=30.0)
    metrics = WorkerMetrics(status_provider=lambda: health.status)
    with HealthServer(metrics.registry, health.snapshot, port=0) as server:
        assert _get(server.url + "/readyz")[0] == 503  # starting: engine not loaded, no partitions
        worker = Worker(settings, build_detector(settings), build_engine(settings), metrics=metrics, health=health)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                worker.run(max_seconds=90, until=lambda w: w.stats.summaries >= 1)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _get(server.url + "/readyz")[0] != 200:
            time.sleep(0.1)
        code, body = _get(server.url + "/readyz")
        assert code == 200, body  # assigned, engine loaded, broker reachable
        assert _get(server.url + "/healthz")[0] == 200

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        for msg in iter_stream_messages(str(video), "cam-ops"):
            producer.send(settings.topics.input, key=b"cam-ops", value=encode(msg))
        producer.flush()
        producer.close()
        thread.join(timeout=120)
        assert not thread.is_alive() and not errors, errors

        text = _get(server.url + "/metrics")[1].decode()
        n = len(has_face)
        assert _value(text, "expnet_frames_decoded_total") == n
        assert _value(text, "expnet_events_published_total", type="frame") == n
        assert _value(text, "expnet_events_published_total", type="summary") == 1
        assert _value(text, "expnet_records_total") >= n
        assert _value(text, "expnet_faces_total") > 0
        assert _value(text, "expnet_batch_size_faces_count") > 0
        for stage in ("decode", "detect", "crop", "infer", "publish"):
            assert _value(text, "expnet_stage_seconds_count", stage=stage) > 0, stage
        assert _value(text, "expnet_frame_to_event_seconds_count") == n
        assert _value(text, "expnet_commits_total") >= 1
        assert _value(text, "expnet_assigned_partitions") == 2
        assert _value(text, "expnet_engine_info", engine="onnxruntime", trained="false") == 1

        worker.close()
        code, body = _get(server.url + "/readyz")
        assert code == 503 and json.loads(body)["status"] in ("draining", "stopped")
