"""Consumer lag per partition from what the consumer already knows (no extra broker round trip).

kafka-python (3.0.x) keeps the high watermark of each assigned partition from the last fetch response
(``consumer.highwater(tp)``, ``None`` before the first fetch) and the position of the next record to fetch
(``consumer.position(tp, timeout_ms=0)``). Their difference is the number of records on the broker this member has
not fetched yet. It is lag as the *consumer* sees it: records fetched but not yet processed and committed are not
counted (those are ``expnet_queued_frames``), and the committed-offset lag the KEDA scaler uses can be a little larger.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from kafka.errors import KafkaError

log = logging.getLogger(__name__)


class _LagSource(Protocol):
    def highwater(self, partition: Any) -> int | None: ...

    def position(self, partition: Any, timeout_ms: int | None = None) -> int | None: ...


def partition_lag(consumer: _LagSource, partitions: Iterable[Any]) -> dict[int, int]:
    """``{partition: highwater - position}`` for the partitions whose both offsets are known.

    Call it from the thread that polls (kafka-python consumers are not thread-safe), e.g. every few seconds with
    ``consumer.assignment()``. Partitions revoked in the meantime, or not fetched yet, are left out.
    """
    out: dict[int, int] = {}
    for tp in partitions:
        try:
            high = consumer.highwater(tp)
            if high is None:
                continue
            pos = consumer.position(tp, timeout_ms=0)
        except KafkaError as exc:  # IllegalStateError (revoked meanwhile), KafkaTimeoutError, ...
            log.debug("lag unavailable topic=%s partition=%s: %s", getattr(tp, "topic", "?"), tp, exc)
            continue
        if pos is None:
            continue
        out[int(tp.partition)] = max(0, int(high) - int(pos))
    return out
