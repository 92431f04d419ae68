"""The Kafka worker: a consumer-group member that turns video packets into expression events.

Delivery (default at-least-once): events are produced, the producer is flushed and every send
checked (acknowledged by the broker), and only then are the input offsets whose work is finished
committed. A send that fails after ``delivery_timeout_ms`` of retries stops the worker without
committing, so the next owner resumes from the last commit. ``delivery: exactly_once`` commits the
offsets inside a Kafka transaction instead.

Resuming without loss: a worker assigned a partition finds the last keyframe before the committed
position of every open stream (:mod:`.resume`), seeks back there, re-decodes the packets below the
committed position without re-publishing their frames ("replay"), and continues: no frame is lost
to a decoder that has to wait for a keyframe, and duplicates are limited to events published after
the previous owner's last commit (at most ``commit_interval_ms`` of work plus what was in flight).
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
from ..events.aggregate_schema import EmotionAggregate
from ..events.codec import decode, encode
from ..events.schema import (
    IDLE,
    DeadLetter,
    FrameEvent,
    StreamEnd,
    StreamStart,
    StreamSummary,
    VideoPacket,
)
from ..faces.detector import FaceDetector
from ..kafka.topics import create_topics
from ..ops import WorkerHealth, WorkerMetrics, partition_lag
from .offsets import OffsetTracker
from .pipeline import EmotionClassifier, Pipeline, Source
from .resume import Rewind, RewindScans
from .runtime import make_temporal
from .stages import StageTimes

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    records: int = 0
    records_replayed: int = 0
    events_published: int = 0
    frame_events: int = 0
    summaries: int = 0
    aggregates: int = 0
    dead_letters: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    commits: int = 0
    rewinds: int = 0
    idle_closed: int = 0
    track_states: int = 0
    pauses: int = 0
    started: float = field(default_factory=time.time)


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO loop (while the main thread waits in poll): commits are awaited, not blocking."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        w = self.worker
        try:
            offsets = w._drain_for_revoke(revoked)
            if offsets:
                await w._commit_offsets_async(offsets)
        except (KafkaError, BrokerError) as exc:
            w.metrics.commit(ok=False)
            log.warning("commit on revoke failed; the next owner resumes from the previous commit: %s", exc)
        w._forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in assigned}
        log.info("assigned partitions=%s", sorted(parts))
        self.worker._pending_assign |= parts - self.worker.assigned
        self.worker.assigned |= parts
        self.worker._assignment_changed()
        self.worker.health.set_broker_reachable(True)  # joining the group took a coordinator round trip

    async def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        self.worker.pipeline.close_windows({tp.partition for tp in lost})  # published, not committed
        log.warning(
            "lost partitions=%s (evicted): dropping their state without commit", sorted(t.partition for t in lost)
        )
        self.worker._forget(lost)


class Worker:
    """One member of the worker fleet. Call :meth:`run`; stop it with :meth:`stop` or a stop condition."""

    def __init__(
        self,
        settings: WorkerSettings,
        detector: FaceDetector,
        engine: Engine,
        *,
        metrics: WorkerMetrics | None = None,
        health: WorkerHealth | None = None,
        emotion_head: EmotionClassifier | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = WorkerStats()
        ops = settings.ops
        self.health = health or WorkerHealth(
            ops.liveness_timeout_s, ready_requires_partitions=ops.ready_requires_partitions
        )
        self.metrics = metrics or WorkerMetrics(status_provider=lambda: self.health.status)
        self.metrics.engine_info(engine.model_id, engine.name, engine.contract.trained)
        self.health.set_engine_loaded(True)
        self._next_lag = 0.0
        self.stages = StageTimes(observer=self.metrics.observe_stage)
        self.assigned: set[int] = set()
        self._stop = threading.Event()
        self._trackers: dict[int, OffsetTracker] = defaultdict(OffsetTracker)
        self._acked_pending: list[Source] = []
        self._futures: list[Any] = []
        self._best_effort: list[Any] = []
        self._replay_until: dict[int, int] = {}
        self._pending_assign: set[int] = set()
        self._paused: set[TopicPartition] = set()
        self._in_txn = False
        self._record_stream: str | None = None
        self._committed: dict[int, int] = {}  # partition -> highest offset committed (or found committed)
        self._commit_failed = False
        self._last_commit = time.monotonic()
        self.last_tick = time.monotonic()
        self.pipeline = Pipeline(
            detector,
            engine,
            emit=self._emit,
            done=self._done,
            max_batch=settings.batch.max_batch,
            max_wait_ms=settings.batch.max_wait_ms,
            sample_fps=settings.sampling.fps,
            stages=self.stages,
            temporal=make_temporal(settings, engine, emotion_head),
            observer=self.metrics,
            emotion_head=emotion_head,
            fail=self._fail_source,
            max_streams=settings.max_streams,
            worker_id=settings.worker_id,
        )
        self._next_idle_check = 0.0
        kafka = settings.kafka
        common = {**kafka.client_kwargs(), "reconnect_backoff_ms": 100, "reconnect_backoff_max_ms": 5000}
        t = settings.temporal
        horizon = 0.0
        if t.enabled and t.windows:  # replay rebuilds every window open at the commit from its first frame
            horizon = max(w.size_s for w in t.windows) + t.allowed_lateness_s
        self.scans = RewindScans(common, horizon_s=horizon, state_topic=settings.topics.state)
        exactly_once = settings.delivery == "exactly_once"
        try:
            self.producer = KafkaProducer(
                **common,
                client_id=f"{kafka.client_id}-{settings.worker_id}-producer",
                acks="all",
                linger_ms=5,
                max_in_flight_requests_per_connection=1,
                retries=2**31 - 1,
                request_timeout_ms=kafka.request_timeout_ms,
                delivery_timeout_ms=settings.delivery_timeout_ms,
                max_request_size=settings.dlq_max_value_bytes + 64 * 1024 + 1024 * 1024,
                transactional_id=f"{settings.group_id}-{settings.worker_id}" if exactly_once else None,
            )
            if exactly_once:
                self.producer.init_transactions()
            self.consumer = KafkaConsumer(
                **common,
                client_id=f"{kafka.client_id}-{settings.worker_id}",
                group_id=settings.group_id,
                group_instance_id=settings.group_instance_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=kafka.max_poll_records,
                session_timeout_ms=kafka.session_timeout_ms,
                heartbeat_interval_ms=kafka.heartbeat_interval_ms,
                max_partition_fetch_bytes=settings.max_packet_bytes + 1024 * 1024,
                fetch_max_bytes=max(16 * 1024 * 1024, settings.max_packet_bytes * 2),
                request_timeout_ms=kafka.request_timeout_ms,
                fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            )
        except KafkaError as exc:
            self.health.set_broker_reachable(False)
            raise BrokerError(f"cannot connect to Kafka at {kafka.bootstrap}: {exc}") from exc
        self.consumer.subscribe([settings.topics.input], listener=_Rebalance(self))
        self._state_topic_ok = self._ensure_state_topic()

    # ---------------------------------------------------------------- producing
    def _send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None, *, required: bool = True
    ) -> None:
        """Send one record; a ``required`` one must be acknowledged before the next commit (else the worker stops
        without committing), a best-effort one (worker state) only logs its failure."""
        if self.settings.delivery == "exactly_once" and not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True
        future = self.producer.send(topic, key=key, value=value, partition=partition)
        (self._futures if required else self._best_effort).append(future)

    def _emit(self, event: FrameEvent | StreamSummary | EmotionAggregate, sources: list[Source]) -> None:
        if isinstance(event, EmotionAggregate):
            with self.stages.time("publish"):
                self._send(self.settings.topics.emotions, event.stream_id.encode(), encode(event))
            self.stats.events_published += 1
            self.stats.aggregates += 1
            self._acked_pending.extend(sources)
            return
        with self.stages.time("publish"):
            self._send(self.settings.topics.expressions, event.stream_id.encode(), encode(event))
        self.stats.events_published += 1
        if isinstance(event, FrameEvent):
            self.stats.frame_events += 1
            latency = event.publish_time - event.capture_time if event.capture_time > 0 else None
            self.metrics.event_published("frame", latency)
        else:
            self.stats.summaries += 1
            self.metrics.event_published("summary")
        self._acked_pending.extend(sources)

    def _done(self, sources: list[Source]) -> None:
        self._acked_pending.extend(sources)

    def _dead_letter(self, record: Any, reason: str, detail: str, stream_id: str | None = None) -> None:
        """Dead-letter an input record with its original bytes (up to ``dlq_max_value_bytes``)."""
        self._send_dead_letter(
            Source(record.partition, record.offset), reason, detail, stream_id, key=record.key, value=record.value
        )

    def _fail_source(self, source: Source, reason: str, detail: str, stream_id: str) -> None:
        """A frame failed after its record was consumed (inference, publishing): dead-letter the record by pointer."""
        self._send_dead_letter(source, reason, detail, stream_id, key=stream_id.encode(), value=None)

    def _send_dead_letter(
        self,
        source: Source,
        reason: str,
        detail: str,
        stream_id: str | None,
        *,
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        topic = self.settings.topics.input
        if source.offset < self._replay_until.get(source.partition, -1):
            self._acked_pending.append(source)  # the previous owner dead-lettered it already
            return
        size = len(value) if value is not None else 0
        if size > self.settings.dlq_max_value_bytes:
            value = None  # the pointer (topic, partition, offset) stays
        letter = DeadLetter(
            reason=reason,
            detail=detail[:2000],
            source_topic=topic,
            source_partition=source.partition,
            source_offset=source.offset,
            key=key,
            value=value,
            value_size=size,
            stream_id=stream_id,
            worker_id=self.settings.worker_id,
            time=time.time(),
        )
        self._send(self.settings.topics.dlq, key, encode(letter))
        self.stats.dead_letters[reason] += 1
        self.metrics.dead_letter(reason)
        log.warning(
            "dead-lettered topic=%s partition=%d offset=%d reason=%s detail=%s",
            topic,
            source.partition,
            source.offset,
            reason,
            detail[:200],
        )
        self._acked_pending.append(source)

    # ---------------------------------------------------------------- input
    def handle_record(self, record: Any) -> None:
        """Decode, validate and process one input record; whatever fails goes to the dead-letter topic.

        Nothing a record carries can stop the worker: schema violations get their precise reason, a decoder
        error its own, and any other exception while handling the record (sampling, detection, cropping, the
        temporal stage) is dead-lettered as ``processing_error`` with the exception; the worker goes on.
        """
        p, offset = record.partition, record.offset
        replay = offset < self._replay_until.get(p, -1)
        self.stats.records += 1
        self.stats.records_replayed += int(replay)
        self.metrics.record(p)
        self._trackers[p].consumed(offset)
        self._record_stream = None
        try:
            self._handle_record(record, replay)
        except DecodeError as exc:
            self._dead_letter(record, exc.reason, str(exc), self._record_stream)
        except Exception as exc:  # one record must never stop the worker
            log.exception("partition=%d offset=%d: unexpected error while handling the record", p, offset)
            self._dead_letter(record, "processing_error", f"{type(exc).__name__}: {exc}", self._record_stream)

    def _handle_record(self, record: Any, replay: bool) -> None:
        if record.value is None:
            self._dead_letter(record, "empty_value", "record has no value (tombstone)")
            return
        if len(record.value) > self.settings.max_packet_bytes:
            self._dead_letter(record, "oversize", f"{len(record.value)} bytes > max_packet_bytes")
            return
        try:
            msg = decode(record.value)
        except SchemaError as exc:
            self._dead_letter(record, exc.reason, str(exc))
            return
        if not isinstance(msg, StreamStart | VideoPacket | StreamEnd):
            self._dead_letter(record, "wrong_topic", f"{type(msg).__name__} does not belong on the input topic")
            return
        self._record_stream = msg.stream_id
        key = record.key.decode(errors="replace") if record.key is not None else None
        if key is not None and key != msg.stream_id:
            self._dead_letter(record, "key_mismatch", f"key {key!r} != stream_id {msg.stream_id!r}", msg.stream_id)
            return
        self.pipeline.handle(msg, Source(record.partition, record.offset), replay=replay)

    # ---------------------------------------------------------------- commits
    def _acknowledged_offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """Flush the producer, check every send, then the offsets whose work is finished."""
        with self.stages.time("publish"):
            self.producer.flush()
        failed = [f for f in self._futures if f.failed()]
        self._futures.clear()
        lost = [f for f in self._best_effort if f.failed()]
        self._best_effort = [f for f in self._best_effort if not f.is_done]
        if lost:
            log.warning(
                "%d worker-state record(s) not stored (%r): a takeover may renumber tracks",
                len(lost),
                lost[0].exception,
            )
        if failed:
            self._acked_pending.clear()
            self.health.set_broker_reachable(False)
            raise BrokerError(
                f"{len(failed)} event(s) were not acknowledged by the broker ({failed[0].exception!r}); "
                "stopping without committing: the next owner resumes from the last commit"
            )
        for src in self._acked_pending:
            if src.partition in self._trackers:
                self._trackers[src.partition].done(src.offset)
        self._acked_pending.clear()
        offsets = {}
        for partition, tracker in self._trackers.items():
            pos = tracker.committable()
            if pos is None:
                continue
            if pos >= self._replay_until.get(partition, -1):
                self._replay_until.pop(partition, None)  # the replay is over
            if pos <= self._committed.get(partition, -1):
                continue  # never move the group offset backwards (a replay starts below the commit)
            offsets[TopicPartition(self.settings.topics.input, partition)] = OffsetAndMetadata(pos, "", -1)
        return offsets

    def commit(self, force: bool = False) -> None:
        """Commit finished offsets, at most every ``commit_interval_ms`` unless ``force``."""
        now = time.monotonic()
        if not force and (now - self._last_commit) * 1000 < self.settings.commit_interval_ms:
            return
        self._last_commit = now
        self._write_track_states()
        if not self._acked_pending and not self._futures and not force and not self._commit_failed:
            return
        offsets = self._acknowledged_offsets()
        if not offsets:
            self._commit_failed = False
            return
        try:
            if self.settings.delivery == "exactly_once":
                self._commit_transaction(offsets)
            else:
                self.consumer.commit(offsets)
        except KafkaError as exc:
            self._commit_failed = True  # retried at the next interval even if no new record arrives
            self.metrics.commit(ok=False)
            self.health.set_broker_reachable(False)
            log.warning("offset commit failed (retried in %.0f ms): %s", self.settings.commit_interval_ms, exc)
            return
        self._committed_offsets(offsets)
        self.stats.commits += 1
        self.metrics.commit()
        self.health.set_broker_reachable(True)

    def _committed_offsets(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self._commit_failed = False
        for tp, om in offsets.items():
            self._committed[tp.partition] = max(self._committed.get(tp.partition, -1), om.offset)

    def _ensure_state_topic(self) -> bool:
        """The worker-state topic exists (created like the input topic if missing); without it (no rights to create
        topics) track ids restart on takeover, and the worker says so once, here."""
        t = self.settings
        if not (t.temporal.enabled and t.temporal.tracker.enabled):
            return False
        try:
            if self.consumer.partitions_for_topic(t.topics.state):
                return True
            parts = self.consumer.partitions_for_topic(t.topics.input) or set()
            create_topics(t.kafka, {t.topics.state: max(len(parts), t.topics.input_partitions)}, timeout_s=5.0)
            return True
        except (KafkaError, BrokerError) as exc:
            log.warning("worker-state topic %s unavailable (%s): track ids restart on takeover", t.topics.state, exc)
            return False

    def _write_track_states(self) -> None:
        """Record each stream's newest track ids in the worker-state topic (at most every track_state_interval_s).

        Keyed by stream id; a worker taking a partition over reads the state topic's tail (see :mod:`.resume`)."""
        if not self._state_topic_ok:
            return
        now = time.monotonic()
        for state in self.pipeline.streams.values():
            cp = state.checkpoint
            if cp is None or now - state.checkpoint_sent_at < self.settings.track_state_interval_s:
                continue
            if state.partition not in self.assigned or state.partition in self._replay_until:
                continue
            msg = cp.model_copy(update={"sent_time": time.time()})
            self._send(self.settings.topics.state, cp.stream_id.encode(), encode(msg), required=False)
            state.checkpoint = None
            state.checkpoint_sent_at = now
            self.stats.track_states += 1

    def _check_idle(self) -> None:
        """Close streams that fell silent: write an idle ``stream_end`` marker into their input partition."""
        idle = self.settings.idle
        now = time.monotonic()
        if not idle.enabled or now < self._next_idle_check:
            return
        self._next_idle_check = now + min(1.0, idle.wall_s / 4, idle.stream_s / 4)
        caught_up: dict[int, bool] = {}
        for sid, state in list(self.pipeline.streams.items()):
            p = state.partition
            if state.idle_marker_sent or p not in self.assigned or p in self._replay_until or p in self._scanning:
                continue
            stream_gap = self.pipeline.partition_time.get(p, 0.0) - state.last_capture
            silent = state.last_seq >= 0 and stream_gap > idle.stream_s
            if not silent and now - state.last_seen > idle.wall_s:
                if p not in caught_up:
                    caught_up[p] = self._caught_up(p)
                silent = caught_up[p]
            if not silent:
                continue
            state.idle_marker_sent = True
            try:
                marker = StreamEnd(stream_id=sid, packets=state.last_seq + 1, reason=IDLE, sent_time=time.time())
            except ValueError as exc:  # cannot happen with validated input; never let it stop the worker
                log.error("stream=%s: cannot write its idle marker: %s", sid, exc)
                continue
            self._send(self.settings.topics.input, sid.encode(), encode(marker), partition=p)
            self.stats.idle_closed += 1
            log.warning(
                "stream=%s silent (%.1f s of stream time, %.1f s wall) after packet seq=%d: closing it as idle",
                sid,
                stream_gap,
                now - state.last_seen,
                state.last_seq,
            )

    def _caught_up(self, partition: int) -> bool:
        tp = TopicPartition(self.settings.topics.input, partition)
        try:
            high = self.consumer.highwater(tp)
            return high is not None and self.consumer.position(tp, timeout_ms=1000) >= high
        except (KafkaError, AssertionError, TypeError):
            return False

    def _commit_transaction(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if not self._in_txn:
            self.producer.begin_transaction()
        self.producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
        self.producer.commit_transaction()
        self._in_txn = False

    async def _commit_offsets_async(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.settings.delivery == "exactly_once":
            self._commit_transaction(offsets)
        else:
            await self.consumer.commit_async(offsets)
        self._committed_offsets(offsets)
        self.stats.commits += 1
        self.metrics.commit()

    def _drain_for_revoke(self, revoked: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        # Decoders are not flushed: a frame they hold (B-frame reordering) may precede, in presentation order,
        # frames of packets not consumed yet; emitting it now would break per-stream order. Its packet stays
        # uncommitted and the next owner publishes it (and what follows it in the partition) again.
        log.info("partitions revoked: draining queued frames, publishing, committing")
        parts = {tp.partition for tp in revoked}
        self.pipeline.pump(force=True)
        self.pipeline.close_windows(parts)
        return self._acknowledged_offsets()

    def _forget(self, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        dropped = self.pipeline.drop_partitions(parts)
        for p in parts:
            self._trackers.pop(p, None)
            self._replay_until.pop(p, None)
            self._committed.pop(p, None)
        self._paused = {tp for tp in self._paused if tp.partition not in parts}
        self.scans.cancel(parts)
        self.assigned -= parts
        self._pending_assign -= parts
        self._assignment_changed()
        if dropped:
            log.info("dropped decoders streams=%s", dropped)

    # ---------------------------------------------------------------- assignment and backpressure
    def _assignment_changed(self) -> None:
        self.metrics.assigned(self.assigned)  # also removes lag series of partitions no longer held
        self.metrics.paused(len(self._paused))
        self.health.set_assigned(len(self.assigned))

    def _resolve_assignments(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """New partitions: pause each one with a commit and scan for its rewind point off the poll loop."""
        for p in sorted(self._pending_assign):
            tp = TopicPartition(self.settings.topics.input, p)
            fetched = batches.pop(tp, [])
            committed = self.consumer.committed(tp)
            if committed is not None and committed >= 0:
                self._committed[p] = committed
                self.consumer.seek(tp, committed)  # drops what was fetched; the scan decides where to read
                self.consumer.pause(tp)
                self.scans.start(tp, committed)
            elif fetched:
                self.consumer.seek(tp, fetched[0].offset)
        self._pending_assign.clear()

    def _finish_scans(self) -> None:
        """Partitions whose rewind scan is done: seek back to the rewind point (replay up to the commit), resume."""
        for p, committed, rewind in self.scans.finished():
            if p not in self.assigned:
                continue
            tp = TopicPartition(self.settings.topics.input, p)
            target = committed
            if rewind.offset is not None and rewind.offset < committed:
                target = rewind.offset
                self._replay_until[p] = committed
                self.stats.rewinds += 1
                log.info("partition=%d: replaying offsets %d..%d to resume decoders and windows", p, target, committed)
            self._restore(rewind)
            self.consumer.seek(tp, target)
            if tp not in self._paused:
                self._resume(tp)

    def _restore(self, rewind: Rewind) -> None:
        self.pipeline.carried.update(rewind.states)
        if not rewind.complete:
            log.warning("rewind scan incomplete: windows of some streams will be published as partial")

    def _backpressure(self) -> None:
        """Pause the partitions that fill the queue when it is over budget; resume when it has drained."""
        limit = self.settings.max_queued_frames
        queued = self.pipeline.queued
        if queued > limit:
            by_part = sorted(self.pipeline.queued_by_partition().items(), key=lambda kv: -kv[1])
            busiest = {TopicPartition(self.settings.topics.input, p) for p, _ in by_part[: max(1, len(by_part) // 2)]}
            new = busiest - self._paused
            if new:
                self.consumer.pause(*new)
                self._paused |= new
                self.stats.pauses += 1
                log.info(
                    "backpressure: %d frames queued; paused partitions=%s", queued, sorted(t.partition for t in new)
                )
        elif self._paused and queued <= limit // 2:
            self._resume(*self._paused)
            log.info("backpressure: drained; resumed partitions=%s", sorted(t.partition for t in self._paused))
            self._paused.clear()

    def _observe(self) -> None:
        """Gauges refreshed once per step; lag every ``ops.lag_interval_s`` (no broker round trip)."""
        m = self.metrics
        m.queued(self.pipeline.queued)
        m.open_streams(len(self.pipeline.streams))
        m.paused(len(self._paused))
        now = time.monotonic()
        if now >= self._next_lag:
            self._next_lag = now + self.settings.ops.lag_interval_s
            for partition, lag in partition_lag(self.consumer, self.consumer.assignment()).items():
                m.lag(partition, lag)

    @property
    def _scanning(self) -> set[int]:
        """Partitions paused while their rewind scan runs."""
        return self.scans.running

    def _resume(self, *partitions: TopicPartition) -> None:
        """Resume paused partitions and drop what the fetcher parked for them while paused.

        kafka-python (3.0) parks records fetched for a paused partition and restores them only while no other
        partition's records are in line, which on a busy consumer is never; until then it does not fetch the
        partition at all, so a resumed partition could stall for good. The parked records were never returned
        (the position did not move past them), so dropping them loses nothing: they are fetched again.
        """
        self.consumer.resume(*partitions)
        fetcher = getattr(self.consumer, "_fetcher", None)
        for tp in partitions:
            for name in ("_paused_partition_records", "_paused_completed_fetches"):
                parked = getattr(fetcher, name, None)
                if isinstance(parked, dict):
                    parked.pop(tp, None)

    @property
    def paused(self) -> set[int]:
        return {tp.partition for tp in self._paused}

    # ---------------------------------------------------------------- main loop
    def step(self, poll_timeout_ms: int = 100) -> int:
        """One poll-process-publish-commit round; returns records handled."""
        self.last_tick = time.monotonic()
        self.health.tick()
        timeout = poll_timeout_ms if self.pipeline.queued == 0 else int(self.pipeline.max_wait_s * 500)
        batches = self.consumer.poll(timeout_ms=timeout, max_records=self.settings.kafka.max_poll_records)
        if self._pending_assign:
            self._resolve_assignments(batches)
        for tp in [tp for tp in batches if tp.partition in self._scanning]:
            del batches[tp]  # fetched before the pause took effect; re-read after the seek
        if self._scanning:
            self._finish_scans()
        n = 0
        for tp in sorted(batches, key=lambda t: t.partition):
            for record in batches[tp]:
                self.handle_record(record)
                n += 1
                if self.pipeline.due():
                    self.pipeline.pump()
        self.pipeline.pump(force=n == 0)
        self._backpressure()
        self._check_idle()
        self.commit()
        self._observe()
        return n

    def run(self, *, max_seconds: float | None = None, until: Callable[[Worker], bool] | None = None) -> WorkerStats:
        """Poll until :meth:`stop`, ``max_seconds`` elapsed or ``until(self)`` is true; then drain and commit."""
        t0 = time.monotonic()
        log.info(
            "worker=%s group=%s consuming topic=%s",
            self.settings.worker_id,
            self.settings.group_id,
            self.settings.topics.input,
        )
        self.health.set_running()
        while not self._stop.is_set():
            self.step()
            if max_seconds is not None and time.monotonic() - t0 >= max_seconds:
                break
            if until is not None and until(self):
                break
        self.health.set_draining()
        self.pipeline.pump(force=True)
        self.commit(force=True)
        return self.stats

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step (safe from signal handlers and other threads)."""
        self._stop.set()
        self.health.set_draining()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Leave the group (the revoke listener drains and commits) and close the clients."""
        self.health.set_draining()
        self.scans.close()
        try:
            self.consumer.close()
        finally:
            self.producer.close(timeout=10)
            self.health.set_stopped()
