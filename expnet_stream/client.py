"""Typed subscriber client: yields validated events from an expnet topic and can drop duplicates.

>>> from expnet_stream.client import Subscriber  # doctest: +SKIP
>>> with Subscriber("127.0.0.1:9092", "expnet.expressions") as sub:  # doctest: +SKIP
...     for item in sub.iter(timeout_s=10):
...         print(item.event.stream_id, len(item.event.faces))
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from .errors import BrokerError, SchemaError
from .events.codec import decode
from .events.schema import AnyEvent, FrameEvent

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from .config.settings import KafkaSettings

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 20
"""Default ``fetch_max_wait_ms`` of a :class:`Subscriber` (kafka-python's own default is 500)."""


@dataclass(frozen=True)
class Received:
    """An event with where and when it was received."""

    event: AnyEvent
    partition: int
    offset: int
    receive_time: float


class Deduplicator:
    """Remembers the last ``capacity`` event ids; :meth:`seen` is True for a repeat."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0

    def seen(self, event_id: str) -> bool:
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            self.duplicates += 1
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


class Subscriber:
    """Reads one topic and yields validated events.

    ``group_id=None`` reads without a consumer group (every partition, from the beginning when
    ``from_beginning``). ``dedupe`` drops events whose ``event_id`` was already seen. Messages that
    do not decode are logged and counted in :attr:`invalid`, never raised.
    """

    def __init__(
        self,
        bootstrap: str | list[str],
        topic: str,
        *,
        group_id: str | None = None,
        from_beginning: bool = True,
        dedupe: bool = True,
        **kafka_kwargs: Any,
    ) -> None:
        self.topic = topic
        self.dedupe = Deduplicator() if dedupe else None
        self.invalid = 0
        servers = bootstrap.split(",") if isinstance(bootstrap, str) else bootstrap
        # A broker that holds a waiting fetch for its whole max wait even when data arrives (Tansu does) would add up
        # to kafka-python's default 500 ms to every event's delivery; 20 ms bounds that hop (measured: `bench latency`)
        # for one small fetch request per 20 ms while the topic is idle. Pass fetch_max_wait_ms to choose otherwise.
        kafka_kwargs.setdefault("fetch_max_wait_ms", FETCH_MAX_WAIT_MS)
        try:
            self._consumer = KafkaConsumer(
                topic,
                bootstrap_servers=servers,
                group_id=group_id,
                enable_auto_commit=group_id is not None,
                auto_offset_reset="earliest" if from_beginning else "latest",
                client_id=f"expnet-subscriber-{uuid.uuid4().hex[:8]}",
                **kafka_kwargs,
            )
        except KafkaError as exc:
            raise BrokerError(f"cannot subscribe to {topic} at {bootstrap}: {exc}") from exc

    @classmethod
    def from_settings(cls, kafka: KafkaSettings, topic: str, **kwargs: Any) -> Subscriber:
        """A subscriber that connects as the worker settings say: bootstrap servers and the whole security
        configuration (SASL, SSL, mutual TLS), so a secured cluster needs no kafka-python argument names."""
        kw = kafka.client_kwargs()
        servers = kw.pop("bootstrap_servers")
        return cls(servers, topic, **kw, **kwargs)

    def poll(self, timeout_s: float = 0.5) -> list[Received]:
        """Events that arrived within ``timeout_s`` (possibly none)."""
        out: list[Received] = []
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        now = time.time()
        for tp, records in batches.items():
            for record in records:
                try:
                    event = decode(record.value)
                except SchemaError as exc:
                    self.invalid += 1
                    log.warning(
                        "undecodable event topic=%s partition=%d offset=%d: %s",
                        self.topic,
                        tp.partition,
                        record.offset,
                        exc,
                    )
                    continue
                event_id = getattr(event, "event_id", None)
                if self.dedupe is not None and event_id is not None and self.dedupe.seen(event_id):
                    continue
                out.append(Received(event, tp.partition, record.offset, now))
        return out

    def iter(self, timeout_s: float | None = None, idle_s: float | None = None) -> Iterator[Received]:
        """Yield events until ``timeout_s`` in total or ``idle_s`` without any event (None = forever)."""
        t0 = last = time.monotonic()
        while True:
            got = self.poll(0.2)
            now = time.monotonic()
            if got:
                last = now
            yield from got
            if timeout_s is not None and now - t0 >= timeout_s:
                return
            if idle_s is not None and now - last >= idle_s:
                return

    def iter_frames(
        self,
        *,
        max_events: int | None = None,
        timeout_s: float | None = None,
        idle_s: float | None = 5.0,
        stream_id: str | None = None,
    ) -> Iterator[FrameEvent]:
        """Frame events (of ``stream_id`` only, when given) until ``max_events`` of them, ``timeout_s`` in total or
        ``idle_s`` without any event on the topic (None = no such limit); other events are passed over."""
        n = 0
        if max_events is not None and max_events <= 0:
            return
        for item in self.iter(timeout_s=timeout_s, idle_s=idle_s):
            ev = item.event
            if not isinstance(ev, FrameEvent) or (stream_id is not None and ev.stream_id != stream_id):
                continue
            yield ev
            n += 1
            if max_events is not None and n >= max_events:
                return

    def to_arrow(
        self,
        *,
        max_events: int | None = None,
        timeout_s: float | None = None,
        idle_s: float | None = 5.0,
        stream_id: str | None = None,
        emotions: Sequence[str] | None = None,
    ) -> pa.Table:
        """Read frame events (:meth:`iter_frames`'s stop rules) into an Arrow table, one row per face and frame.

        The columns are :func:`expnet_stream.table.table_schema`'s (``emotions``: the emotion classes with a column,
        default the shipped model's); a frame without faces is one row with null face columns. Stop with
        ``max_events``, ``timeout_s`` or ``idle_s`` (by default after 5 s without events), or the call reads forever.
        Needs ``pip install 'expnet-stream[table]'``.

        >>> with Subscriber("127.0.0.1:9092", "expnet.expressions") as sub:  # doctest: +SKIP
        ...     table = sub.to_arrow(idle_s=5, stream_id="cam-1")
        >>> table.num_rows, table.column_names[:3]  # doctest: +SKIP
        (472, ['event_id', 'stream_id', 'frame_seq'])
        """
        from .table import DEFAULT_EMOTIONS, events_to_arrow

        frames = self.iter_frames(max_events=max_events, timeout_s=timeout_s, idle_s=idle_s, stream_id=stream_id)
        return events_to_arrow(frames, emotions=DEFAULT_EMOTIONS if emotions is None else emotions)

    def to_pandas(
        self,
        *,
        max_events: int | None = None,
        timeout_s: float | None = None,
        idle_s: float | None = 5.0,
        stream_id: str | None = None,
        emotions: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """:meth:`to_arrow` as a pandas DataFrame (same columns and stop rules).

        >>> with Subscriber("127.0.0.1:9092", "expnet.expressions") as sub:  # doctest: +SKIP
        ...     df = sub.to_pandas(idle_s=5)
        >>> df.groupby("stream_id").emotion.value_counts()  # doctest: +SKIP
        """
        from .table import DEFAULT_EMOTIONS, events_to_pandas

        frames = self.iter_frames(max_events=max_events, timeout_s=timeout_s, idle_s=idle_s, stream_id=stream_id)
        return events_to_pandas(frames, emotions=DEFAULT_EMOTIONS if emotions is None else emotions)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
