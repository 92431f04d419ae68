"""Which input partitions the worker holds and reads: assignment, the rewind on takeover (scan off the poll loop,
seek back, replay up to the commit), revoke and loss, and backpressure (pause the busiest partitions)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ..config.settings import WorkerSettings
from ..errors import BrokerError
from ..ops import WorkerHealth, WorkerMetrics
from .commits import CommitManager
from .pipeline import Pipeline
from .publisher import WorkerStats
from .resume import RewindScans

log = logging.getLogger(__name__)


def plan_backpressure(queued: int, by_partition: dict[int, int], paused: set[int], limit: int) -> tuple[set[int], bool]:
    """Backpressure as a decision: over ``limit`` queued frames, the busiest half of the partitions (at least one)
    that are not paused yet are to be paused; at half the limit or less, every paused partition resumes (True)."""
    if queued > limit:
        by_part = sorted(by_partition.items(), key=lambda kv: -kv[1])
        busiest = {p for p, _ in by_part[: max(1, len(by_part) // 2)]}
        return busiest - paused, False
    return set(), bool(paused) and queued <= limit // 2


def round_robin(partitions: Iterable[TopicPartition], after: int | None) -> list[TopicPartition]:
    """The order a poll round handles its partitions in: by partition, starting after ``after`` (the partition that
    spent the previous round's time budget, wrapping round), so that each gets its turn first. A partition's own
    records keep their order; partitions need none between them."""
    parts = sorted(partitions, key=lambda t: t.partition)
    if after is None:
        return parts
    return [t for t in parts if t.partition > after] + [t for t in parts if t.partition <= after]


def input_drained(
    last_offsets: dict[TopicPartition, int], highwater: Callable[[TopicPartition], int | None], n: int, max_records: int
) -> bool:
    """Whether a poll read everything the broker had: fewer records than it may return, and each partition it
    returned records of at its last known high watermark (``batch.eager`` then runs the batch at once: waiting for
    more would wait for nothing). A worker behind its input keeps filling batches and catches up at full
    efficiency."""
    if n >= max_records:
        return False
    for tp, last in last_offsets.items():
        high = highwater(tp)
        if high is not None and last + 1 < high:
            return False
    return True


class PartitionManager:
    def __init__(
        self,
        settings: WorkerSettings,
        consumer: KafkaConsumer,
        pipeline: Pipeline,
        commits: CommitManager,
        scans: RewindScans,
        *,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        health: WorkerHealth,
    ) -> None:
        self.topic = settings.topics.input
        self.max_queued_frames = settings.max_queued_frames
        self.consumer = consumer
        self.pipeline = pipeline
        self.commits = commits
        self.scans = scans
        self.stats = stats
        self.metrics = metrics
        self.health = health
        self.assigned: set[int] = set()
        self._new: set[int] = set()  # assigned, committed position not read yet
        self._paused: set[TopicPartition] = set()  # by backpressure

    @property
    def scanning(self) -> set[int]:
        """Partitions paused while their rewind scan runs."""
        return self.scans.running

    @property
    def paused(self) -> set[int]:
        return {tp.partition for tp in self._paused}

    @property
    def pending_assignment(self) -> bool:
        return bool(self._new)

    def listener(self) -> AsyncConsumerRebalanceListener:
        """The consumer's rebalance listener."""
        return _Rebalance(self)

    # ---------------------------------------------------------------- assignment
    def on_assigned(self, parts: set[int]) -> None:
        log.info("assigned partitions=%s", sorted(parts))
        self._new |= parts - self.assigned
        self.assigned |= parts
        self._changed()
        self.health.set_broker_reachable(True)  # joining the group took a coordinator round trip

    def resolve(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """New partitions: pause each one with a commit and scan for its rewind point off the poll loop."""
        for p in sorted(self._new):
            tp = TopicPartition(self.topic, p)
            fetched = batches.pop(tp, [])
            committed = self.consumer.committed(tp)
            if committed is not None and committed >= 0:
                self.commits.ledger.found_committed(p, committed)
                self.consumer.seek(tp, committed)  # drops what was fetched; the scan decides where to read
                self.consumer.pause(tp)
                self.scans.start(tp, committed)
            elif fetched:
                self.consumer.seek(tp, fetched[0].offset)
        self._new.clear()

    def finish_scans(self) -> None:
        """Partitions whose rewind scan is done: seek back to the rewind point (replay up to the commit), resume."""
        for p, committed, rewind in self.scans.finished():
            if p not in self.assigned:
                continue
            tp = TopicPartition(self.topic, p)
            target = committed
            if rewind.offset is not None and rewind.offset < committed:
                target = rewind.offset
                self.commits.ledger.replay(p, committed)
                self.stats.rewinds += 1
                log.info("partition=%d: replaying offsets %d..%d to resume decoders and windows", p, target, committed)
            self.pipeline.carried.update(rewind.states)
            if not rewind.complete:
                log.warning("rewind scan incomplete: windows of some streams will be published as partial")
            self.consumer.seek(tp, target)
            if tp not in self._paused:
                self.resume(tp)

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Revoked or lost: drop their decoders, offsets and scans."""
        parts = {tp.partition for tp in partitions}
        dropped = self.pipeline.drop_partitions(parts)
        self.commits.ledger.forget(parts)
        self._paused = {tp for tp in self._paused if tp.partition not in parts}
        self.scans.cancel(parts)
        self.assigned -= parts
        self._new -= parts
        self._changed()
        if dropped:
            log.info("dropped decoders streams=%s", dropped)

    def _changed(self) -> None:
        self.metrics.assigned(self.assigned)  # also removes lag series of partitions no longer held
        self.metrics.paused(len(self._paused))
        self.health.set_assigned(len(self.assigned))

    # ---------------------------------------------------------------- backpressure
    def backpressure(self) -> None:
        """Pause the partitions that fill the queue when it is over budget; resume when it has drained."""
        queued = self.pipeline.queued
        pause, resume = plan_backpressure(
            queued, self.pipeline.queued_by_partition(), self.paused, self.max_queued_frames
        )
        if pause:
            new = {TopicPartition(self.topic, p) for p in pause}
            self.consumer.pause(*new)
            self._paused |= new
            self.stats.pauses += 1
            log.info("backpressure: %d frames queued; paused partitions=%s", queued, sorted(pause))
        elif resume:
            self.resume(*self._paused)
            log.info("backpressure: drained; resumed partitions=%s", sorted(t.partition for t in self._paused))
            self._paused.clear()

    def resume(self, *partitions: TopicPartition) -> None:
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


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO loop (while the main thread waits in poll): commits are awaited, not blocking."""

    def __init__(self, partitions: PartitionManager) -> None:
        self.partitions = partitions

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pm = self.partitions
        try:
            # Decoders are not flushed: a frame they hold (B-frame reordering) may precede, in presentation order,
            # frames of packets not consumed yet; emitting it now would break per-stream order. Its packet stays
            # uncommitted and the next owner publishes it (and what follows it in the partition) again.
            log.info("partitions revoked: draining queued frames, publishing, committing")
            pm.pipeline.pump(force=True)
            pm.pipeline.close_windows({tp.partition for tp in revoked})
            offsets = pm.commits.acknowledged_offsets()
            if offsets:
                await pm.commits.commit_async(offsets)
        except (KafkaError, BrokerError) as exc:
            pm.metrics.commit(ok=False)
            log.warning("commit on revoke failed; the next owner resumes from the previous commit: %s", exc)
        pm.forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.partitions.on_assigned({tp.partition for tp in assigned})

    async def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        self.partitions.pipeline.close_windows({tp.partition for tp in lost})  # published, not committed
        log.warning(
            "lost partitions=%s (evicted): dropping their state without commit", sorted(t.partition for t in lost)
        )
        self.partitions.forget(lost)
