"""Everything the worker writes: events to their topics, dead letters, worker state and idle markers; transactions
(``delivery: exactly_once``); and the check that every required send was acknowledged before a commit."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from ..config.settings import WorkerSettings
from ..errors import BrokerError
from ..events.aggregate_schema import EmotionAggregate
from ..events.codec import encode
from ..events.schema import DeadLetter, FrameEvent, StreamSummary
from ..ops import WorkerHealth, WorkerMetrics
from .stages import StageTimes
from .streams import Source

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
    dead_letters_unsent: int = 0
    commits: int = 0
    rewinds: int = 0
    idle_closed: int = 0
    track_states: int = 0
    pauses: int = 0
    step_cuts: int = 0  # poll rounds cut short by max_step_s
    started: float = field(default_factory=time.time)


def make_producer(settings: WorkerSettings, common: dict[str, Any]) -> KafkaProducer:
    """The worker's producer: every send acknowledged by all in-sync replicas, retried until
    ``delivery_timeout_ms``, in order; transactional under ``delivery: exactly_once``."""
    exactly_once = settings.delivery == "exactly_once"
    producer = KafkaProducer(
        **common,
        client_id=f"{settings.kafka.client_id}-{settings.worker_id}-producer",
        acks="all",
        linger_ms=settings.kafka.linger_ms,
        max_in_flight_requests_per_connection=1,
        retries=2**31 - 1,
        request_timeout_ms=settings.kafka.request_timeout_ms,
        delivery_timeout_ms=settings.delivery_timeout_ms,
        max_request_size=settings.dlq_max_value_bytes + 64 * 1024 + 1024 * 1024,
        transactional_id=f"{settings.group_id}-{settings.worker_id}" if exactly_once else None,
    )
    if exactly_once:
        producer.init_transactions()
    return producer


def make_dead_letter(
    topic: str,
    source: Source,
    reason: str,
    detail: str,
    stream_id: str | None,
    *,
    key: bytes | None,
    value: bytes | None,
    settings: WorkerSettings,
) -> DeadLetter:
    """The dead letter of input record ``source``: its reason, a detail of at most 2000 characters, and the record's
    key and value up to ``dlq_max_key_bytes`` / ``dlq_max_value_bytes`` (a bigger one keeps the pointer: topic,
    partition, offset, with its size and SHA-256), so the letter always fits the producer's request limit."""
    key_copy, key_hash = _capped(key, settings.dlq_max_key_bytes)
    value_copy, value_hash = _capped(value, settings.dlq_max_value_bytes)
    return DeadLetter(
        reason=reason,
        detail=detail[:2000],
        source_topic=topic,
        source_partition=source.partition,
        source_offset=source.offset,
        key=key_copy,
        key_size=None if key is None else len(key),
        key_sha256=key_hash,
        value=value_copy,
        value_size=0 if value is None else len(value),
        value_sha256=value_hash,
        stream_id=stream_id,
        worker_id=settings.worker_id,
        time=time.time(),
    )


def _capped(data: bytes | None, limit: int) -> tuple[bytes | None, str | None]:
    """``data`` itself up to ``limit`` bytes; else None and its SHA-256."""
    if data is None or len(data) <= limit:
        return data, None
    return None, hashlib.sha256(data).hexdigest()


def letter_key(stream_id: str | None, key: bytes | None, limit: int) -> bytes | None:
    """The Kafka key of a dead letter: the stream id when known (a stream's letters stay together), else the record's
    key if small, else its SHA-256."""
    if stream_id is not None:
        return stream_id.encode()
    if key is None or len(key) <= limit:
        return key
    return hashlib.sha256(key).hexdigest().encode()


class Publisher:
    def __init__(
        self,
        settings: WorkerSettings,
        producer: KafkaProducer,
        *,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        health: WorkerHealth,
        stages: StageTimes,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.producer = producer
        self.stats = stats
        self.metrics = metrics
        self.health = health
        self.stages = stages
        self.transactional = settings.delivery == "exactly_once"
        self._futures: list[Any] = []  # required sends since the last confirm
        self._letters: list[Any] = []  # dead letters since the last confirm: logged when lost, never fatal
        self._best_effort: list[tuple[Any, str]] = []  # (future, what its loss means)
        self._in_txn = False

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        *,
        required: bool = True,
        letter: bool = False,
        if_lost: str = "worker-state record(s) not stored: a takeover may renumber tracks",
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send one record; a ``required`` one must be acknowledged before the next commit (else the worker stops
        without committing), a best-effort one only logs ``if_lost`` when it fails, a ``letter`` logs and counts it
        (its record is released all the same: a letter the broker refuses must not stop the worker for good)."""
        if self.transactional and not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True
        future = self.producer.send(topic, key=key, value=value, partition=partition, headers=headers)
        if letter:
            self._letters.append(future)
        elif required:
            self._futures.append(future)
        else:
            self._best_effort.append((future, if_lost))

    @property
    def unconfirmed(self) -> bool:
        """Required sends not confirmed yet."""
        return bool(self._futures or self._letters)

    def publish(self, event: FrameEvent | StreamSummary | EmotionAggregate) -> None:
        """An output event to its topic (aggregates to the emotions topic), keyed by stream id."""
        topic = self.topics.emotions if isinstance(event, EmotionAggregate) else self.topics.expressions
        with self.stages.time("publish"):
            self.send(topic, event.stream_id.encode(), encode(event))
        self.stats.events_published += 1
        if isinstance(event, EmotionAggregate):
            self.stats.aggregates += 1
        elif isinstance(event, FrameEvent):
            self.stats.frame_events += 1
            latency = event.publish_time - event.capture_time if event.capture_time > 0 else None
            self.metrics.event_published("frame", latency)
        else:
            self.stats.summaries += 1
            self.metrics.event_published("summary")

    def dead_letter(
        self,
        source: Source,
        reason: str,
        detail: str,
        stream_id: str | None,
        *,
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        """Send the dead letter of an input record (:func:`make_dead_letter`) to the dead-letter topic."""
        letter = make_dead_letter(
            self.topics.input, source, reason, detail, stream_id, key=key, value=value, settings=self.settings
        )
        try:
            self.send(
                self.topics.dlq,
                letter_key(stream_id, key, self.settings.dlq_max_key_bytes),
                encode(letter),
                letter=True,
            )
        except KafkaError as exc:  # refused before it was queued (e.g. larger than max_request_size)
            self._unsent(1, exc)
        self.stats.dead_letters[reason] += 1
        self.metrics.dead_letter(reason)
        log.warning(
            "dead-lettered topic=%s partition=%d offset=%d reason=%s detail=%s",
            letter.source_topic,
            source.partition,
            source.offset,
            reason,
            detail[:200],
        )

    def confirm(self) -> None:
        """Flush the producer and check every required send; raises :class:`BrokerError` when one failed."""
        with self.stages.time("publish"):
            self.producer.flush()
        failed = [f for f in self._futures if f.failed()]
        self._futures.clear()
        unsent = [f for f in self._letters if f.failed()]
        self._letters.clear()
        if unsent:
            self._unsent(len(unsent), unsent[0].exception)
        lost: dict[str, list[Any]] = {}
        for future, if_lost in self._best_effort:
            if future.failed():
                lost.setdefault(if_lost, []).append(future)
        self._best_effort = [(f, w) for f, w in self._best_effort if not f.is_done]
        for if_lost, futures in lost.items():
            log.warning("%d %s (%r)", len(futures), if_lost, futures[0].exception)
        if failed:
            self.health.set_broker_reachable(False)
            raise BrokerError(
                f"{len(failed)} event(s) were not acknowledged by the broker ({failed[0].exception!r}); "
                "stopping without committing: the next owner resumes from the last commit"
            )

    def _unsent(self, n: int, exc: BaseException | None) -> None:
        self.stats.dead_letters_unsent += n
        self.metrics.dead_letter_unsent(n)
        log.error(
            "%d dead letter(s) not stored (%r); their records are released all the same (see the log above)", n, exc
        )

    def commit_transaction(self, offsets: dict[TopicPartition, OffsetAndMetadata], group_metadata: Any) -> None:
        """Commit the input offsets inside the open transaction with what was produced in it."""
        if not self._in_txn:
            self.producer.begin_transaction()
        self.producer.send_offsets_to_transaction(offsets, group_metadata)
        self.producer.commit_transaction()
        self._in_txn = False

    def close(self) -> None:
        self.producer.close(timeout=10)
