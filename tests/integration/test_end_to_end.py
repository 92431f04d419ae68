"""End to end on a real Kafka-protocol broker: H.264 packets in, per-frame expression events out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from expnet_stream.config.settings import WorkerSettings, load_settings
from expnet_stream.events.codec import decode, encode
from expnet_stream.events.schema import DeadLetter, FrameEvent, StreamSummary
from expnet_stream.kafka.broker import EmbeddedBroker
from expnet_stream.kafka.topics import ensure_topics
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.runtime import build_detector, build_engine
from expnet_stream.worker.worker import Worker
from tests.conftest import broker_settings

pytestmark = pytest.mark.integration


def _read_all(bootstrap: str, topic: str, expect_types: int, timeout_s: float = 60) -> list[Any]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(decode(r.value) for r in records)
            if sum(isinstance(e, StreamSummary | DeadLetter) for e in out) >= expect_types:
                # one more short poll picks up stragglers of other partitions
                for records in consumer.poll(timeout_ms=300).values():
                    out.extend(decode(r.value) for r in records)
                break
    finally:
        consumer.close()
    return out


def _run_worker(settings: WorkerSettings, n_summaries: int, max_seconds: float = 120) -> Worker:
    worker = Worker(settings, build_detector(settings), build_engine(settings))
    try:
        worker.run(max_seconds=max_seconds, until=lambda w: w.stats.summaries >= n_summaries)
    finally:
        worker.close()
    return worker


def _produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_in_flight_requests_per_connection=1)
    for key, value in messages:
        producer.send(topic, key=key.encode(), value=value)
    producer.flush()
    producer.close()


def test_two_interleaved_streams_one_event_per_frame_in_order(
    broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, face_video: tuple[Path, list[bool]]
) -> None:
    """Two streams of the same H.264 face video, packets interleaved, through a bounded worker."""
    video, has_face = face_video
    settings = broker_settings(broker, topic_prefix, small_onnx)
    ensure_topics(settings.kafka, settings.topics)
    a = [("cam-a", encode(m)) for m in iter_stream_messages(str(video), "cam-a")]
    b = [("cam-b", encode(m)) for m in iter_stream_messages(str(video), "cam-b")]
    interleaved = [m for pair in zip(a, b, strict=True) for m in pair]
    _produce(broker.bootstrap, settings.topics.input, interleaved)

    worker = _run_worker(settings, n_summaries=2)
    assert worker.stats.summaries == 2
    events = _read_all(broker.bootstrap, settings.topics.expressions, expect_types=2)
    for sid in ("cam-a", "cam-b"):
        frames = [e for e in events if isinstance(e, FrameEvent) and e.stream_id == sid]
        summary = [e for e in events if isinstance(e, StreamSummary) and e.stream_id == sid]
        assert len(frames) == len(has_face), f"{sid}: one event per frame"
        assert [e.frame_seq for e in frames] == list(range(len(has_face))), "per-stream order"
        pts = [e.pts for e in frames]
        assert pts == sorted(pts) and len(set(pts)) == len(pts)
        assert len(summary) == 1 and summary[0].frames_sampled == len(has_face)
        assert summary[0].packets == len(has_face)
        # faces where the video has faces, none where it has none
        found = [bool(e.faces) for e in frames]
        assert not any(f for f, h in zip(found, has_face, strict=True) if not h), "faces on blank frames"
        hit = sum(f for f, h in zip(found, has_face, strict=True) if h) / sum(has_face)
        assert hit >= 0.9, f"{sid}: face found in {hit:.0%} of face frames"
        for e in frames:
            assert e.model_trained is False and "UNTRAINED" in e.model_id
            for face in e.faces:
                assert face.coefficients.shape == (29,)
        assert len({e.event_id for e in frames}) == len(frames)
        # the summary comes after the stream's last frame event on the same partition
        assert events.index(summary[0]) > events.index(frames[-1])

    # every input offset is committed: nothing left unprocessed
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=settings.group_id)
    try:
        committed = {
            p: consumer.committed(TopicPartition(settings.topics.input, p)) or 0
            for p in range(settings.topics.input_partitions)
        }
    finally:
        consumer.close()
    assert sum(committed.values()) == len(interleaved)


def test_sampling_fps_and_dead_letters_while_good_stream_flows(
    broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, face_video: tuple[Path, list[bool]]
) -> None:
    """Frames sampled at 5 fps of a 25 fps video; malformed records go to the DLQ with a reason."""
    video, _has_face = face_video
    settings = broker_settings(broker, topic_prefix, small_onnx, sampling={"fps": 5.0})
    ensure_topics(settings.kafka, settings.topics)
    good = [("cam-c", encode(m)) for m in iter_stream_messages(str(video), "cam-c")]
    bad = [
        ("cam-c", b"\xc1 not msgpack"),
        ("cam-c", msgpack.packb({"v": 99, "type": "packet"})),
        ("cam-c", msgpack.packb({"v": 1, "type": "packet", "stream_id": "cam-c"})),
    ]
    _produce(broker.bootstrap, settings.topics.input, good[:5] + bad + good[5:])

    worker = _run_worker(settings, n_summaries=1)
    assert sum(worker.stats.dead_letters.values()) == 3
    events = _read_all(broker.bootstrap, settings.topics.expressions, expect_types=1)
    frames = [e for e in events if isinstance(e, FrameEvent)]
    # 36 frames at 25 fps span 1.44 s: samples at t = 0, 0.2, ..., 1.4
    assert len(frames) == 8
    assert [round(e.pts_time, 2) for e in frames] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]
    letters = _read_all(broker.bootstrap, settings.topics.dlq, expect_types=3)
    reasons = sorted(e.reason for e in letters if isinstance(e, DeadLetter))
    assert reasons == ["invalid_fields", "not_msgpack", "unknown_version"]
    details = " ".join(e.detail for e in letters if isinstance(e, DeadLetter))
    assert "unknown schema version 99" in details and "not a msgpack" in details
    assert all(e.value is not None and e.source_topic == settings.topics.input for e in letters)


def test_worker_joins_mid_stream_waits_for_keyframe(
    broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, face_video: tuple[Path, list[bool]]
) -> None:
    """Packets before the first keyframe are counted as skipped and dead-lettered (nothing dropped silently);
    decoding starts at the keyframe and frame_seq resyncs to the keyframe's packet seq."""
    video, _has_face = face_video
    settings = broker_settings(broker, topic_prefix, small_onnx)
    ensure_topics(settings.kafka, settings.topics)
    msgs = list(iter_stream_messages(str(video), "cam-d"))
    packets = msgs[1:-1]
    second_key = next(i for i, p in enumerate(packets) if p.keyframe and i > 0)
    tail = [*packets[second_key - 3 :], msgs[-1]]  # starts 3 packets before a keyframe, no stream_start
    _produce(broker.bootstrap, settings.topics.input, [("cam-d", encode(m)) for m in tail])
    worker = _run_worker(settings, n_summaries=1)
    events = _read_all(broker.bootstrap, settings.topics.expressions, expect_types=1)
    summary = next(e for e in events if isinstance(e, StreamSummary))
    assert summary.packets_skipped == 3
    assert summary.frames_sampled == len(packets) - second_key
    assert worker.stats.dead_letters == {"before_keyframe": 3}
    frames = [e for e in events if isinstance(e, FrameEvent)]
    assert frames[0].frame_seq == second_key and [e.frame_seq for e in frames] == list(range(second_key, len(packets)))


def test_embedded_broker_listens_on_loopback_only() -> None:
    """The broker's listening socket is bound to 127.0.0.1, never 0.0.0.0 (read from /proc/net/tcp)."""
    with EmbeddedBroker() as b:
        port_hex = f"{b.port:04X}"
        listening = []
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and local.endswith(":" + port_hex):
                listening.append(local.split(":")[0])
        assert listening == ["0100007F"], listening


def test_exactly_once_commits_offsets_inside_transactions(
    broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, face_video: tuple[Path, list[bool]]
) -> None:
    """delivery=exactly_once: events and input offsets are committed in Kafka transactions (Tansu runs the commit
    path; what it cannot do, filtering aborted transactions, is covered by the apache_kafka test below)."""
    video, has_face = face_video
    settings = broker_settings(broker, topic_prefix, small_onnx, delivery="exactly_once")
    ensure_topics(settings.kafka, settings.topics)
    msgs = [("cam-x", encode(m)) for m in iter_stream_messages(str(video), "cam-x")]
    _produce(broker.bootstrap, settings.topics.input, msgs)
    worker = _run_worker(settings, n_summaries=1)
    assert worker.stats.commits >= 1
    consumer = KafkaConsumer(
        settings.topics.expressions,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level="read_committed",
    )
    try:
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(isinstance(e, StreamSummary) for e in got):
            for records in consumer.poll(timeout_ms=300).values():
                got.extend(decode(r.value) for r in records)
        group = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=settings.group_id)
        try:
            committed = sum(
                group.committed(TopicPartition(settings.topics.input, p)) or 0
                for p in range(settings.topics.input_partitions)
            )
        finally:
            group.close()
    finally:
        consumer.close()
    assert [e.frame_seq for e in got if isinstance(e, FrameEvent)] == list(range(len(has_face)))
    assert committed == len(msgs)


@pytest.mark.apache_kafka
def test_exactly_once_hides_aborted_work_from_read_committed_subscribers(
    topic_prefix: str, small_onnx: Path, face_video: tuple[Path, list[bool]], tmp_path: Path
) -> None:
    """kill -9 a worker mid-transaction: a read_committed subscriber sees every frame exactly once.

    Needs a real Apache Kafka (deploy/compose.yaml): Tansu does not filter aborted transactions.
    """
    import os
    import signal

    from tests.integration.fleet_util import Collector, start_worker, stop, worker_config

    bootstrap = os.environ.get("EXPNET_TEST_BOOTSTRAP")
    if not bootstrap:
        pytest.skip("set EXPNET_TEST_BOOTSTRAP to a real Apache Kafka (Tansu cannot filter aborted transactions)")
    video, has_face = face_video
    cfgs = [
        worker_config(tmp_path, f"eos-{i}", bootstrap, topic_prefix, small_onnx, delivery="exactly_once")
        for i in range(2)
    ]
    settings = load_settings(cfgs[0])
    ensure_topics(settings.kafka, settings.topics)
    _produce(bootstrap, settings.topics.input, [("eos", encode(m)) for m in iter_stream_messages(str(video), "eos")])
    a = start_worker(cfgs[0], tmp_path / "a.log")
    time.sleep(8)
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    b = start_worker(cfgs[1], tmp_path / "b.log")
    collector = Collector(bootstrap, settings.topics.expressions, isolation_level="read_committed")
    try:
        assert collector.wait(lambda ev: any(isinstance(e, StreamSummary) for e in ev), 120)
    finally:
        stop(b)
        collector.close()
    ids = [e.event_id for e in collector.events() if isinstance(e, FrameEvent)]
    assert len(ids) == len(set(ids)) == len(has_face)
