"""The Kafka worker: a consumer-group member that turns video packets into expression events.

Delivery is at-least-once: events are produced, the producer is flushed (every event
acknowledged by the broker), and only then are the input offsets whose work is finished committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from ..config.settings import WorkerSettings
from ..engines.base import Engine
from ..errors import BrokerError, DecodeError, SchemaError
from ..events.codec import decode, encode
from ..events.schema import DeadLetter, FrameEvent, StreamEnd, StreamStart, StreamSummary, VideoPacket
from ..faces.detector import FaceDetector
from .offsets import OffsetTracker
from .pipeline import Pipeline, Source
from .stages import StageTimes

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    records: int = 0
    events_published: int = 0
    frame_events: int = 0
    summaries: int = 0
    dead_letters: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    commits: int = 0
    streams_ended: int = 0
    started: float = field(default_factory=time.time)


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO loop: blocking consumer calls are not allowed, so the commit is awaited."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        offsets = self.worker._drain_for_revoke()
        if offsets:
            try:
                await self.worker.consumer.commit_async(offsets)
                self.worker.stats.commits += 1
            except KafkaError as exc:
                log.warning("commit on revoke failed; the next owner may repeat some frames: %s", exc)
        self.worker._forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("assigned partitions=%s", sorted(tp.partition for tp in assigned))
        self.worker.assigned = {tp.partition for tp in assigned}

    async def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        log.warning(
            "lost partitions=%s (evicted): dropping their state without commit", sorted(tp.partition for tp in lost)
        )
        self.worker.pipeline.pump(force=True)
        self.worker._forget(lost)


class Worker:
    """One member of the worker fleet. Call :meth:`run`; stop it with :meth:`stop` or a stop condition."""

    def __init__(self, settings: WorkerSettings, detector: FaceDetector, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = WorkerStats()
        self.stages = StageTimes()
        self.assigned: set[int] = set()
        self._stop = threading.Event()
        self._trackers: dict[int, OffsetTracker] = defaultdict(OffsetTracker)
        self._acked_pending: list[Source] = []
        self._last_commit = time.monotonic()
        self.pipeline = Pipeline(
            detector,
            engine,
            emit=self._emit,
            done=self._done,
            max_batch=settings.batch.max_batch,
            max_wait_ms=settings.batch.max_wait_ms,
            sample_fps=settings.sampling.fps,
            stages=self.stages,
        )
        kafka = settings.kafka
        common = kafka.client_kwargs()
        try:
            self.producer = KafkaProducer(
                **common,
                client_id=f"{kafka.client_id}-{settings.worker_id}-producer",
                acks="all",
                linger_ms=5,
                max_in_flight_requests_per_connection=1,
                retries=2**31 - 1,
                request_timeout_ms=kafka.request_timeout_ms,
                max_request_size=settings.dlq_max_value_bytes + 64 * 1024 + 1024 * 1024,
            )
            self.consumer = KafkaConsumer(
                **common,
                client_id=f"{kafka.client_id}-{settings.worker_id}",
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=kafka.max_poll_records,
                session_timeout_ms=kafka.session_timeout_ms,
                heartbeat_interval_ms=kafka.heartbeat_interval_ms,
                max_partition_fetch_bytes=settings.max_packet_bytes + 1024 * 1024,
                fetch_max_bytes=max(52428800, settings.max_packet_bytes * 2),
                request_timeout_ms=kafka.request_timeout_ms,
            )
        except KafkaError as exc:
            raise BrokerError(f"cannot connect to Kafka at {kafka.bootstrap}: {exc}") from exc
        self.consumer.subscribe([settings.topics.input], listener=_Rebalance(self))

    # ---------------------------------------------------------------- callbacks from the pipeline
    def _emit(self, event: FrameEvent | StreamSummary, sources: list[Source]) -> None:
        with self.stages.time("publish"):
            self.producer.send(self.settings.topics.expressions, key=event.stream_id.encode(), value=encode(event))
        self.stats.events_published += 1
        if isinstance(event, FrameEvent):
            self.stats.frame_events += 1
        else:
            self.stats.summaries += 1
            self.stats.streams_ended += 1
        self._acked_pending.extend(sources)

    def _done(self, sources: list[Source]) -> None:
        self._acked_pending.extend(sources)

    def _dead_letter(self, record: Any, reason: str, detail: str, stream_id: str | None = None) -> None:
        value: bytes | None = record.value
        size = len(value) if value is not None else 0
        if size > self.settings.dlq_max_value_bytes:
            value = None
        letter = DeadLetter(
            reason=reason,
            detail=detail[:2000],
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            key=record.key,
            value=value,
            value_size=size,
            stream_id=stream_id,
            worker_id=self.settings.worker_id,
            time=time.time(),
        )
        self.producer.send(self.settings.topics.dlq, key=record.key, value=encode(letter))
        self.stats.dead_letters[reason] += 1
        log.warning(
            "dead-lettered topic=%s partition=%d offset=%d reason=%s detail=%s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            detail[:200],
        )
        self._acked_pending.append(Source(record.partition, record.offset))

    # ---------------------------------------------------------------- main loop
    def handle_record(self, record: Any) -> None:
        """Decode, validate and process one input record; bad input goes to the dead-letter topic."""
        self.stats.records += 1
        self._trackers[record.partition].consumed(record.offset)
        source = Source(record.partition, record.offset)
        if record.value is None:
            self._dead_letter(record, "empty_value", "record has no value (tombstone)")
            return
        if len(record.value) > self.settings.max_packet_bytes:
            self._dead_letter(record, "oversize", f"{len(record.value)} bytes > max_packet_bytes")
            return
        try:
            msg = decode(record.value)
        except SchemaError as exc:
            self._dead_letter(record, "bad_message", str(exc))
            return
        if not isinstance(msg, StreamStart | VideoPacket | StreamEnd):
            self._dead_letter(record, "wrong_topic", f"{type(msg).__name__} does not belong on the input topic")
            return
        key = record.key.decode(errors="replace") if record.key is not None else None
        if key is not None and key != msg.stream_id:
            self._dead_letter(record, "key_mismatch", f"key {key!r} != stream_id {msg.stream_id!r}", msg.stream_id)
            return
        try:
            self.pipeline.handle(msg, source)
        except DecodeError as exc:
            self._dead_letter(record, "decode_error", str(exc), msg.stream_id)

    def _acknowledged_offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """Flush the producer (every event acknowledged), then the offsets whose work is finished."""
        with self.stages.time("publish"):
            self.producer.flush()
        for src in self._acked_pending:
            self._trackers[src.partition].done(src.offset)
        self._acked_pending.clear()
        offsets = {}
        for partition, tracker in self._trackers.items():
            pos = tracker.committable()
            if pos is not None:
                offsets[TopicPartition(self.settings.topics.input, partition)] = OffsetAndMetadata(pos, "", -1)
        return offsets

    def commit(self, force: bool = False) -> None:
        """Commit finished offsets, at most every ``commit_interval_ms`` unless ``force``."""
        now = time.monotonic()
        if not force and (now - self._last_commit) * 1000 < self.settings.commit_interval_ms:
            return
        self._last_commit = now
        if not self._acked_pending and not force:
            return
        offsets = self._acknowledged_offsets()
        if offsets:
            try:
                self.consumer.commit(offsets)
                self.stats.commits += 1
            except KafkaError as exc:
                log.warning("offset commit failed (will retry): %s", exc)

    def _drain_for_revoke(self) -> dict[TopicPartition, OffsetAndMetadata]:
        log.info("partitions revoked: draining queued frames, publishing, committing")
        self.pipeline.pump(force=True)
        return self._acknowledged_offsets()

    def _forget(self, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        dropped = self.pipeline.drop_partitions(parts)
        for p in parts:
            self._trackers.pop(p, None)
        self.assigned -= parts
        if dropped:
            log.info("dropped decoders streams=%s", dropped)

    def step(self, poll_timeout_ms: int = 100) -> int:
        """One poll-process-publish-commit round; returns records handled."""
        timeout = poll_timeout_ms if self.pipeline.queued == 0 else 0
        if self.pipeline.queued:
            timeout = int(max(0.0, self.pipeline.max_wait_s * 1000) // 2)
        batches = self.consumer.poll(timeout_ms=timeout, max_records=self.settings.kafka.max_poll_records)
        n = 0
        for tp in sorted(batches, key=lambda t: t.partition):
            for record in batches[tp]:
                self.handle_record(record)
                n += 1
                if self.pipeline.due():
                    self.pipeline.pump()
        self.pipeline.pump(force=n == 0)
        self.commit()
        return n

    def run(
        self,
        *,
        max_seconds: float | None = None,
        until: Callable[[Worker], bool] | None = None,
    ) -> WorkerStats:
        """Poll until :meth:`stop`, ``max_seconds`` elapsed or ``until(self)`` is true; then drain and commit."""
        t0 = time.monotonic()
        log.info(
            "worker=%s group=%s consuming topic=%s",
            self.settings.worker_id,
            self.settings.group_id,
            self.settings.topics.input,
        )
        try:
            while not self._stop.is_set():
                self.step()
                if max_seconds is not None and time.monotonic() - t0 >= max_seconds:
                    break
                if until is not None and until(self):
                    break
        finally:
            self.pipeline.pump(force=True)
            self.commit(force=True)
        return self.stats

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close(timeout=10)
