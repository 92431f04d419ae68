"""The worker-state topic: each stream's newest track ids, keyed by stream id, so a worker taking a partition over
continues the previous owner's track numbering (read back by :mod:`.resume`). Best effort: without it (no rights
to create topics) track ids restart on takeover, and the worker says so once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from ..config.settings import WorkerSettings
from ..errors import BrokerError
from ..events.codec import encode
from ..kafka.topics import create_topics
from .commits import CommitManager
from .partitions import PartitionManager
from .pipeline import Pipeline
from .publisher import Publisher
from .resume import STATE_MAC_HEADER, state_mac
from .streams import StreamState

log = logging.getLogger(__name__)


def ensure_input_topic(settings: WorkerSettings) -> None:
    """The input topic exists, with ``topics.input_partitions``, before the worker subscribes: a worker started first
    serves an ingester started later (the topic an ingester auto-creates on a fresh broker is not found by a
    subscribed consumer for minutes). Without rights to create topics it says so and waits for the topic."""
    try:
        create_topics(settings.kafka, {settings.topics.input: settings.topics.input_partitions}, timeout_s=5.0)
    except (KafkaError, BrokerError) as exc:
        log.warning("cannot create input topic %s (%s): waiting for it to appear", settings.topics.input, exc)


def ensure_state_topic(settings: WorkerSettings, consumer: KafkaConsumer) -> bool:
    """The worker-state topic exists (created like the input topic if missing); False when it is not needed
    (tracking off) or cannot be had."""
    t = settings
    if not (t.temporal.enabled and t.temporal.tracker.enabled):
        return False
    try:
        if consumer.partitions_for_topic(t.topics.state):
            return True
        parts = consumer.partitions_for_topic(t.topics.input) or set()
        create_topics(t.kafka, {t.topics.state: max(len(parts), t.topics.input_partitions)}, timeout_s=5.0)
        return True
    except (KafkaError, BrokerError) as exc:
        log.warning("worker-state topic %s unavailable (%s): track ids restart on takeover", t.topics.state, exc)
        return False


def state_secret(settings: WorkerSettings) -> bytes | None:
    """The fleet's ``state_secret`` as bytes: the key that signs and checks track states (None: unsigned)."""
    secret = settings.state_secret
    return None if secret is None else secret.get_secret_value().encode()


def due_checkpoints(
    streams: Iterable[StreamState], now: float, interval_s: float, ours: Callable[[int], bool]
) -> list[StreamState]:
    """Streams with a new track state whose last one was sent at least ``interval_s`` ago (monotonic ``now``), on
    partitions that are ``ours`` (held and not replaying: during a replay the previous owner's states are newest)."""
    return [
        s
        for s in streams
        if s.checkpoint is not None and now - s.checkpoint_sent_at >= interval_s and ours(s.partition)
    ]


class StateTopic:
    def __init__(
        self,
        settings: WorkerSettings,
        consumer: KafkaConsumer,
        pipeline: Pipeline,
        partitions: PartitionManager,
        commits: CommitManager,
        publisher: Publisher,
    ) -> None:
        self.topic = settings.topics.state
        self.interval_s = settings.track_state_interval_s
        self.secret = state_secret(settings)
        self.pipeline = pipeline
        self.partitions = partitions
        self.commits = commits
        self.publisher = publisher
        self.available = ensure_state_topic(settings, consumer)
        # a stream's states go to the partition that mirrors its input partition, where a taker-over reads them
        # (resume.read_states), whatever the two topics' partition counts and the key hash
        self.partitions_of_topic = len(consumer.partitions_for_topic(self.topic) or ()) if self.available else 0

    def write(self) -> None:
        """Each stream's newest track state, at most every ``track_state_interval_s`` (not during a replay: the
        previous owner's states are still the newest)."""
        if not self.available:
            return
        now = time.monotonic()

        def ours(p: int) -> bool:
            return p in self.partitions.assigned and not self.commits.ledger.replaying(p)

        for state in due_checkpoints(self.pipeline.streams.values(), now, self.interval_s, ours):
            cp = state.checkpoint
            if cp is None:  # pragma: no cover - due_checkpoints returns streams with one
                continue
            msg = cp.model_copy(update={"sent_time": time.time()})
            n = self.partitions_of_topic
            partition = state.partition if n == 0 or state.partition < n else state.partition % n
            value = encode(msg)
            headers = None if self.secret is None else [(STATE_MAC_HEADER, state_mac(self.secret, value))]
            self.publisher.send(
                self.topic, cp.stream_id.encode(), value, partition=partition, required=False, headers=headers
            )
            state.checkpoint = None
            state.checkpoint_sent_at = now
            self.publisher.stats.track_states += 1
