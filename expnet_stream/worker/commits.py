"""The at-least-once rule, in one place.

1. Every consumed input record is tracked per partition (:class:`~.offsets.OffsetTracker`) until its work is done:
   its frames' events emitted, its dead letter written, or (control messages, replayed frames) nothing to write.
2. Done is not enough: a commit first flushes the producer and checks every required send
   (:meth:`Publisher.confirm`). Only then are the done records marked, and the group offset moves to the first record
   that is not (never past unfinished work, never backwards).
3. A send that failed stops the worker without committing: the next owner resumes from the last commit.
4. The replay window: after a takeover the worker re-reads from a keyframe below the committed offset
   (:mod:`.resume`). Records below ``replay_until[p]`` were finished by the previous owner: they rebuild state, and
   nothing about them is published again (no events, no dead letters). The window closes when the committable
   position reaches it.

``delivery: exactly_once`` commits the same offsets inside the producer's transaction instead.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from ..config.settings import WorkerSettings
from ..errors import BrokerError
from ..ops import WorkerHealth, WorkerMetrics
from .offsets import OffsetTracker
from .publisher import Publisher, WorkerStats
from .streams import Source

log = logging.getLogger(__name__)

Offsets = dict[TopicPartition, OffsetAndMetadata]


class CommitLedger:
    """Rules 1, 2 and 4 without I/O: which records are consumed, done, replayed, and where each partition's group
    offset may move once what was sent is acknowledged."""

    def __init__(self) -> None:
        self.trackers: dict[int, OffsetTracker] = defaultdict(OffsetTracker)
        #: partition -> offset below which records are replayed (finished by the previous owner)
        self.replay_until: dict[int, int] = {}
        #: partition -> highest offset committed (or found committed)
        self.committed: dict[int, int] = {}
        self._done: list[Source] = []  # done, waiting for their events' acknowledgement

    def consumed(self, source: Source) -> None:
        self.trackers[source.partition].consumed(source.offset)

    def done(self, sources: list[Source]) -> None:
        """Work finished; committable once what was sent for it is acknowledged."""
        self._done.extend(sources)

    @property
    def has_done(self) -> bool:
        return bool(self._done)

    def is_replay(self, source: Source) -> bool:
        return source.offset < self.replay_until.get(source.partition, -1)

    def replaying(self, partition: int) -> bool:
        return partition in self.replay_until

    def found_committed(self, partition: int, offset: int) -> None:
        """The group's committed offset of a newly assigned partition."""
        self.committed[partition] = offset

    def replay(self, partition: int, until: int) -> None:
        """Records of ``partition`` below ``until`` are replayed."""
        self.replay_until[partition] = until

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.trackers.pop(p, None)
            self.replay_until.pop(p, None)
            self.committed.pop(p, None)

    def unacknowledged(self) -> None:
        """A send failed: nothing done since the last confirm may be committed."""
        self._done.clear()

    def acknowledged(self) -> dict[int, int]:
        """Everything sent is acknowledged: the done records count, and the offset each partition may commit (only
        forward; a partition whose committable position reaches its replay window's end leaves replay)."""
        for src in self._done:
            if src.partition in self.trackers:
                self.trackers[src.partition].done(src.offset)
        self._done.clear()
        offsets = {}
        for partition, tracker in self.trackers.items():
            pos = tracker.committable()
            if pos is None:
                continue
            if pos >= self.replay_until.get(partition, -1):
                self.replay_until.pop(partition, None)  # the replay is over
            if pos <= self.committed.get(partition, -1):
                continue  # never move the group offset backwards (a replay starts below the commit)
            offsets[partition] = pos
        return offsets

    def committed_at(self, offsets: dict[int, int]) -> None:
        for p, offset in offsets.items():
            self.committed[p] = max(self.committed.get(p, -1), offset)


class CommitManager:
    """Rule 2 and 3 with the clients: confirm the sends, commit the group offsets (or the transaction)."""

    def __init__(
        self,
        settings: WorkerSettings,
        consumer: KafkaConsumer,
        publisher: Publisher,
        *,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        health: WorkerHealth,
    ) -> None:
        self.topic = settings.topics.input
        self.interval_s = settings.commit_interval_ms / 1000.0
        self.consumer = consumer
        self.publisher = publisher
        self.stats = stats
        self.metrics = metrics
        self.health = health
        self.ledger = CommitLedger()
        self._failed = False
        self._last = time.monotonic()

    def acknowledged_offsets(self) -> Offsets:
        """Confirm every send, then the offsets whose work is finished (raises :class:`BrokerError` when a send
        failed: nothing is committed)."""
        try:
            self.publisher.confirm()
        except BrokerError:
            self.ledger.unacknowledged()
            raise
        return {
            TopicPartition(self.topic, p): OffsetAndMetadata(pos, "", -1)
            for p, pos in self.ledger.acknowledged().items()
        }

    def due(self, force: bool = False) -> bool:
        """At most one commit every ``commit_interval_ms`` unless ``force``; starts the next interval."""
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return False
        self._last = now
        return True

    def commit(self, force: bool = False) -> None:
        """Commit finished, acknowledged offsets (call when :meth:`due`). A failed commit is retried at the next
        interval even if no new record arrives."""
        if not self.ledger.has_done and not self.publisher.unconfirmed and not force and not self._failed:
            return
        offsets = self.acknowledged_offsets()
        if not offsets:
            self._failed = False
            return
        try:
            if self.publisher.transactional:
                self.publisher.commit_transaction(offsets, self.consumer.group_metadata())
            else:
                self.consumer.commit(offsets)
        except KafkaError as exc:
            self._failed = True
            self.metrics.commit(ok=False)
            self.health.set_broker_reachable(False)
            log.warning("offset commit failed (retried in %.0f ms): %s", self.interval_s * 1000, exc)
            return
        self._committed(offsets)
        self.health.set_broker_reachable(True)

    async def commit_async(self, offsets: Offsets) -> None:
        """The same from the rebalance listener (kafka-python's IO loop: awaited, not blocking)."""
        if self.publisher.transactional:
            self.publisher.commit_transaction(offsets, self.consumer.group_metadata())
        else:
            await self.consumer.commit_async(offsets)
        self._committed(offsets)

    def _committed(self, offsets: Offsets) -> None:
        self._failed = False
        self.ledger.committed_at({tp.partition: om.offset for tp, om in offsets.items()})
        self.stats.commits += 1
        self.metrics.commit()
