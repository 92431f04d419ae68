"""The view's event consumer: reads the expressions and emotions topics on its own thread, as its own consumer
group that never commits, and feeds the stream table, the pages' channels and the watched pictures.

Partitions are assigned by the view itself (no group join, so the fleet's group never rebalances for it and the view
starts at once); on start each partition is read from ``backfill_records`` before its end, so streams of the last
minutes show.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ..config.settings import KafkaSettings
from ..errors import SchemaError
from ..events.aggregate_schema import EmotionAggregate
from ..events.codec import decode
from ..events.schema import FrameEvent, StreamSummary
from .hub import Fanout
from .state import StreamTable

log = logging.getLogger(__name__)

__all__ = ["EventFeed", "view_group_id"]


def view_group_id(configured: str | None = None) -> str:
    """The view's own consumer group: ``configured``, else ``expnet-view-<random>``."""
    return configured or f"expnet-view-{uuid.uuid4().hex[:8]}"


class EventFeed:
    """Reads ``topics`` on a daemon thread until :meth:`stop`; every event goes to ``table`` and ``fanout`` (key:
    its stream id), frame events also to ``on_frame`` (the watched pictures)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: list[str],
        table: StreamTable,
        fanout: Fanout,
        *,
        group_id: str,
        backfill_records: int = 2000,
        on_frame: Callable[[FrameEvent], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.table = table
        self.fanout = fanout
        self.group_id = group_id
        self.backfill_records = backfill_records
        self.on_frame = on_frame
        self.events = 0
        self.invalid = 0
        self.ready = threading.Event()  # set once partitions are assigned
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="view-events", daemon=True)

    def start(self) -> EventFeed:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _consumer(self) -> KafkaConsumer:
        return KafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=self.group_id,
            enable_auto_commit=False,  # read-only: the view commits nothing, anywhere
            auto_offset_reset="latest",
            client_id=f"{self.group_id}-events",
            fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
            request_timeout_ms=self.kafka.request_timeout_ms,
        )

    def _assign(self, consumer: KafkaConsumer) -> bool:
        parts: list[TopicPartition] = []
        for topic in self.topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                return False  # not created yet: tried again
            parts += [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        begins = consumer.beginning_offsets(parts)
        for tp in parts:
            consumer.seek(tp, max(begins.get(tp, 0), ends.get(tp, 0) - self.backfill_records))
        log.info("view events group=%s partitions=%d backfill=%d", self.group_id, len(parts), self.backfill_records)
        return True

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        last_expire = time.monotonic()
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                if not self.ready.is_set():
                    if not self._assign(consumer):
                        self._stop.wait(0.5)
                        continue
                    self.ready.set()
                batches = consumer.poll(timeout_ms=200, max_records=500)
            except KafkaError as exc:
                log.warning("view events: %s; retrying", exc)
                self._stop.wait(1.0)
                continue
            now = time.time()
            for tp, records in batches.items():
                for record in records:
                    self._handle(record.value, tp, record.offset, now)
            if time.monotonic() - last_expire > 5.0:
                last_expire = time.monotonic()
                for sid in self.table.expire():
                    self.fanout.publish(sid, {"kind": "state", "stream": sid, "state": "forgotten"})
        if consumer is not None:
            consumer.close(autocommit=False)

    def _handle(self, value: bytes, tp: Any, offset: int, now: float) -> None:
        try:
            ev = decode(value)
        except SchemaError as exc:
            self.invalid += 1
            log.debug(
                "view: undecodable event topic=%s partition=%d offset=%d: %s", tp.topic, tp.partition, offset, exc
            )
            return
        self.events += 1
        item: dict[str, Any] | None = None
        if isinstance(ev, FrameEvent):
            item = self.table.on_frame(ev, now)
            if item is not None and self.on_frame is not None:
                self.on_frame(ev)
        elif isinstance(ev, EmotionAggregate):
            item = self.table.on_aggregate(ev)
        elif isinstance(ev, StreamSummary):
            item = self.table.on_summary(ev)
        if item is not None:  # None: the table refused it (its bounds), the pages never see it
            self.fanout.publish(str(item["stream"]), item)
