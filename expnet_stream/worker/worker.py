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

The worker is a driver over stages, each its own module: :mod:`.pipeline` (frames to events), :mod:`.publisher`
(sends, transactions, dead letters), :mod:`.commits` (the at-least-once rule and the replay window),
:mod:`.partitions` (assignment, rewind, revoke, backpressure), :mod:`.idle` (silent streams) and
:mod:`.state_topic` (track ids for takeovers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ..config.settings import WorkerSettings
from ..engines.base import Engine
from ..errors import BrokerError, DecodeError, SchemaError
from ..events.aggregate_schema import EmotionAggregate
from ..events.codec import decode
from ..events.schema import FrameEvent, StreamEnd, StreamStart, StreamSummary, VideoPacket
from ..faces.detector import FaceDetector
from ..ops import WorkerHealth, WorkerMetrics, partition_lag
from .commits import CommitManager
from .idle import IdleWatch
from .partitions import PartitionManager, input_drained, round_robin
from .pipeline import EmotionClassifier, Pipeline, Source
from .publisher import Publisher, WorkerStats, make_producer
from .resume import RewindScans
from .runtime import decode_limits, make_temporal
from .stages import StageTimes
from .state_topic import StateTopic, ensure_input_topic, state_secret

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger(__name__)


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
        self._decoders_evicted = 0
        self._cut_partition: int | None = None  # the partition that spent the last cut round's budget
        self.stages = StageTimes(observer=self.metrics.observe_stage)
        self._stop = threading.Event()
        self._record_stream: str | None = None
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
            decode_limits=decode_limits(settings),
            session_takeover_s=settings.session_takeover_s,
        )
        kafka = settings.kafka
        common = {**kafka.client_kwargs(), "reconnect_backoff_ms": 100, "reconnect_backoff_max_ms": 5000}
        t = settings.temporal
        horizon = 0.0
        if t.enabled and t.windows:  # replay rebuilds every window open at the commit from its first frame
            horizon = max(w.size_s for w in t.windows) + t.allowed_lateness_s
        self.scans = RewindScans(
            common, horizon_s=horizon, state_topic=settings.topics.state, state_secret=state_secret(settings)
        )
        try:
            producer = make_producer(settings, common)
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
                # a worker started before its input topic exists finds it within seconds once an ingester creates it
                # (kafka-python's default refresh is 5 minutes)
                metadata_max_age_ms=5000,
            )
        except KafkaError as exc:
            self.health.set_broker_reachable(False)
            raise BrokerError(f"cannot connect to Kafka at {kafka.bootstrap}: {exc}") from exc
        ctx: dict[str, Any] = {"stats": self.stats, "metrics": self.metrics, "health": self.health}
        self.publisher = Publisher(settings, producer, stages=self.stages, **ctx)
        self.commits = CommitManager(settings, self.consumer, self.publisher, **ctx)
        self.partitions = PartitionManager(settings, self.consumer, self.pipeline, self.commits, self.scans, **ctx)
        ensure_input_topic(settings)
        self.consumer.subscribe([settings.topics.input], listener=self.partitions.listener())
        stages = (self.consumer, self.pipeline, self.partitions, self.commits, self.publisher)
        self.state_topic = StateTopic(settings, *stages)
        self.idle = IdleWatch(settings, *stages)

    # ---------------------------------------------------------------- pipeline callbacks
    def _emit(self, event: FrameEvent | StreamSummary | EmotionAggregate, sources: list[Source]) -> None:
        self.publisher.publish(event)
        self.commits.ledger.done(sources)

    def _done(self, sources: list[Source]) -> None:
        self.commits.ledger.done(sources)

    def _fail_source(self, source: Source, reason: str, detail: str, stream_id: str) -> None:
        """A frame failed after its record was consumed (inference, publishing): dead-letter the record by pointer."""
        self._dead_letter(source, reason, detail, stream_id, key=stream_id.encode(), value=None)

    def _dead_letter(
        self, source: Source, reason: str, detail: str, stream_id: str | None, *, key: bytes | None, value: bytes | None
    ) -> None:
        if not self.commits.ledger.is_replay(source):  # else the previous owner dead-lettered it already
            self.publisher.dead_letter(source, reason, detail, stream_id, key=key, value=value)
        self.commits.ledger.done([source])

    def _reject(self, record: Any, reason: str, detail: str, stream_id: str | None = None) -> None:
        """Dead-letter an input record with its original bytes."""
        source = Source(record.partition, record.offset)
        self._dead_letter(source, reason, detail, stream_id, key=record.key, value=record.value)

    # ---------------------------------------------------------------- input
    def handle_record(self, record: Any) -> None:
        """Decode, validate and process one input record; whatever fails goes to the dead-letter topic.

        Nothing a record carries can stop the worker: schema violations get their precise reason, a decoder
        error its own, and any other exception while handling the record (sampling, detection, cropping, the
        temporal stage) is dead-lettered as ``processing_error`` with the exception; the worker goes on.
        """
        source = Source(record.partition, record.offset)
        replay = self.commits.ledger.is_replay(source)
        self.stats.records += 1
        self.stats.records_replayed += int(replay)
        self.metrics.record(source.partition)
        self.commits.ledger.consumed(source)
        self._record_stream = None
        try:
            try:
                self._handle_record(record, source, replay)
            except DecodeError as exc:
                self._reject(record, exc.reason, str(exc), self._record_stream)
            except Exception as exc:  # one record must never stop the worker
                log.exception("partition=%d offset=%d: unexpected error while handling the record", *source)
                self._reject(record, "processing_error", f"{type(exc).__name__}: {exc}", self._record_stream)
        except Exception:  # not even its dead letter could be written: logged, counted, released
            log.exception("partition=%d offset=%d: cannot dead-letter the record; releasing it", *source)
            self.stats.dead_letters_unsent += 1
            self.metrics.dead_letter_unsent()
            self.commits.ledger.done([source])

    def _handle_record(self, record: Any, source: Source, replay: bool) -> None:
        if record.value is None:
            self._reject(record, "empty_value", "record has no value (tombstone)")
            return
        if len(record.value) > self.settings.max_packet_bytes:
            self._reject(record, "oversize", f"{len(record.value)} bytes > max_packet_bytes")
            return
        try:
            msg = decode(record.value)
        except SchemaError as exc:
            self._reject(record, exc.reason, str(exc))
            return
        if not isinstance(msg, StreamStart | VideoPacket | StreamEnd):
            self._reject(record, "wrong_topic", f"{type(msg).__name__} does not belong on the input topic")
            return
        self._record_stream = msg.stream_id
        key = record.key.decode(errors="replace") if record.key is not None else None
        if key is not None and key != msg.stream_id:
            self._reject(record, "key_mismatch", f"key {key!r} != stream_id {msg.stream_id!r}", msg.stream_id)
            return
        ts = getattr(record, "timestamp", None)
        arrived = ts / 1000.0 if isinstance(ts, int) and ts > 0 else None
        self.pipeline.handle(msg, source, replay=replay, arrived=arrived)

    # ---------------------------------------------------------------- main loop
    def commit(self, force: bool = False) -> None:
        """Commit finished offsets, at most every ``commit_interval_ms`` unless ``force`` (worker state first)."""
        if not self.commits.due(force):
            return
        self.state_topic.write()
        self.commits.commit(force)

    def _observe(self) -> None:
        """Gauges refreshed once per step; lag every ``ops.lag_interval_s`` (no broker round trip)."""
        m = self.metrics
        m.queued(self.pipeline.queued)
        m.open_streams(len(self.pipeline.streams))
        table = self.pipeline.table
        m.decoders(table.decoder_memory, table.decoders_evicted - self._decoders_evicted)
        self._decoders_evicted = table.decoders_evicted
        m.paused(len(self.partitions.paused))
        now = time.monotonic()
        if now >= self._next_lag:
            self._next_lag = now + self.settings.ops.lag_interval_s
            for partition, lag in partition_lag(self.consumer, self.consumer.assignment()).items():
                m.lag(partition, lag)

    def _drained(self, batches: dict[TopicPartition, list[Any]], n: int) -> bool:
        try:
            last = {tp: records[-1].offset for tp, records in batches.items() if records}
            return input_drained(last, self.consumer.highwater, n, self.settings.kafka.max_poll_records)
        except KafkaError:  # revoked during the poll: not ours to judge
            return False

    def step(self, poll_timeout_ms: int = 100) -> int:
        """One poll-process-publish-commit round; returns records handled."""
        self.last_tick = time.monotonic()
        self.health.tick()
        timeout = poll_timeout_ms if self.pipeline.queued == 0 else int(self.pipeline.max_wait_s * 500)
        batches = self.consumer.poll(timeout_ms=timeout, max_records=self.settings.kafka.max_poll_records)
        parts = self.partitions
        if parts.pending_assignment:
            parts.resolve(batches)
        for tp in [tp for tp in batches if tp.partition in parts.scanning]:
            del batches[tp]  # fetched before the pause took effect; re-read after the seek
        if parts.scanning:
            parts.finish_scans()
        n = self._handle_batches(batches)
        cut = n < sum(len(records) for records in batches.values())
        eager = self.settings.batch.eager and not cut and self._drained(batches, n)
        self.pipeline.pump(force=n == 0 or eager)
        parts.backpressure()
        self.idle.check()
        self.commit()
        self._observe()
        return n

    def _handle_batches(self, batches: dict[TopicPartition, list[Any]]) -> int:
        """Handle the polled records in partition order for at most ``max_step_s`` (at least one record), so that no
        run of costly records (large pictures, dense streams) keeps the loop from polling, committing and ticking
        ``/healthz``. The records left over are fetched again: each of their partitions is sought back to its first
        unhandled offset (nothing of them was consumed). After a cut the next round starts with the partition after
        the one that spent the budget, so one partition of costly records cannot starve the others. Returns the
        records handled."""
        budget = self.settings.max_step_s
        t0 = time.monotonic()
        n = 0
        parts = round_robin(batches, self._cut_partition)
        self._cut_partition = None
        for i, tp in enumerate(parts):
            records = batches[tp]
            for j, record in enumerate(records):
                self.handle_record(record)
                n += 1
                if self.pipeline.due():
                    self.pipeline.pump()
                if time.monotonic() - t0 >= budget and (j + 1 < len(records) or i + 1 < len(parts)):
                    self._refetch([(tp, records[j + 1 :]), *((t, batches[t]) for t in parts[i + 1 :])])
                    self._cut_partition = tp.partition
                    return n
        return n

    def _refetch(self, left: list[tuple[TopicPartition, list[Any]]]) -> None:
        """Seek each partition back to its first record not handled this step (the step ran out of time)."""
        for tp, records in left:
            if records:
                self.consumer.seek(tp, records[0].offset)
        self.stats.step_cuts += 1
        self.metrics.step_cut()
        log.debug(
            "step over max_step_s=%g s: %d records fetched again",
            self.settings.max_step_s,
            sum(map(len, (r for _, r in left))),
        )

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

    @property
    def assigned(self) -> set[int]:
        return self.partitions.assigned

    @property
    def paused(self) -> set[int]:
        return self.partitions.paused

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
            self.publisher.close()
            self.health.set_stopped()
