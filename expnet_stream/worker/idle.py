"""Streams that fell silent: the worker writes an idle ``stream_end`` marker into their input partition, so the
stream is closed (its windows and summary published) in order with its packets, by whoever owns the partition."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ..config.settings import IdleSettings, WorkerSettings
from ..events.codec import encode
from ..events.schema import IDLE, StreamEnd
from .commits import CommitManager
from .partitions import PartitionManager
from .pipeline import Pipeline
from .publisher import Publisher
from .streams import StreamState

log = logging.getLogger(__name__)


def silent(
    state: StreamState, stream_time: float, now: float, idle: IdleSettings, caught_up: Callable[[], bool]
) -> bool:
    """Whether a stream fell silent: its partition's stream time (newest capture time) ran more than
    ``idle.stream_s`` past its last packet, or it sent nothing for ``idle.wall_s`` (monotonic ``now``) while the worker
    is ``caught_up`` on its partition (asked only then: it costs a broker round trip)."""
    if state.last_seq >= 0 and stream_time - state.last_capture > idle.stream_s:
        return True
    return now - state.last_seen > idle.wall_s and caught_up()


class IdleWatch:
    """A stream is silent when its partition's stream time ran ``idle.stream_s`` past its last packet, or when it
    sent nothing for ``idle.wall_s`` of wall clock while the worker is caught up on its partition."""

    def __init__(
        self,
        settings: WorkerSettings,
        consumer: KafkaConsumer,
        pipeline: Pipeline,
        partitions: PartitionManager,
        commits: CommitManager,
        publisher: Publisher,
    ) -> None:
        self.idle = settings.idle
        self.topic = settings.topics.input
        self.consumer = consumer
        self.pipeline = pipeline
        self.partitions = partitions
        self.commits = commits
        self.publisher = publisher
        self._next_check = 0.0

    def check(self) -> None:
        """At most a few times a second: close the streams that fell silent."""
        idle = self.idle
        now = time.monotonic()
        if not idle.enabled or now < self._next_check:
            return
        self._next_check = now + min(1.0, idle.wall_s / 4, idle.stream_s / 4)
        caught_up: dict[int, bool] = {}
        for sid, state in list(self.pipeline.streams.items()):
            p = state.partition
            if (
                state.idle_marker_sent
                or p not in self.partitions.assigned
                or self.commits.ledger.replaying(p)
                or p in self.partitions.scanning
            ):
                continue

            def partition_caught_up(p: int = p) -> bool:
                if p not in caught_up:
                    caught_up[p] = self._caught_up(p)
                return caught_up[p]

            stream_time = self.pipeline.partition_time.get(p, 0.0)
            if not silent(state, stream_time, now, idle, partition_caught_up):
                continue
            state.idle_marker_sent = True
            try:
                marker = StreamEnd(
                    stream_id=sid, session=state.session, packets=state.last_seq + 1, reason=IDLE, sent_time=time.time()
                )
            except ValueError as exc:  # cannot happen with validated input; never let it stop the worker
                log.error("stream=%s: cannot write its idle marker: %s", sid, exc)
                continue
            # best effort: a worker without write access to the input topic keeps running; the stream then stays
            # open until it sends again or is evicted at max_streams
            self.publisher.send(
                self.topic,
                sid.encode(),
                encode(marker),
                partition=p,
                required=False,
                if_lost="idle marker(s) not written to the input topic (does the worker lack write access?): "
                "those streams stay open until they send again or are evicted",
            )
            self.publisher.stats.idle_closed += 1
            log.warning(
                "stream=%s silent (%.1f s of stream time, %.1f s wall) after packet seq=%d: closing it as idle",
                sid,
                stream_time - state.last_capture,
                now - state.last_seen,
                state.last_seq,
            )

    def _caught_up(self, partition: int) -> bool:
        tp = TopicPartition(self.topic, partition)
        try:
            high = self.consumer.highwater(tp)
            return high is not None and self.consumer.position(tp, timeout_ms=1000) >= high
        except (KafkaError, AssertionError, TypeError):
            return False
