"""Topic creation for the demo, tests and first start of a fleet."""

from __future__ import annotations

import contextlib
import logging
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from ..config.settings import KafkaSettings, TopicSettings
from ..errors import BrokerError

log = logging.getLogger(__name__)


def ensure_topics(
    kafka: KafkaSettings, topics: TopicSettings, *, output_partitions: int | None = None, timeout_s: float = 15.0
) -> None:
    """Create the input, expressions, emotions, dead-letter and worker-state topics when missing."""
    create_topics(
        kafka,
        {
            topics.input: topics.input_partitions,
            topics.state: topics.input_partitions,
            topics.expressions: output_partitions or topics.input_partitions,
            topics.emotions: output_partitions or topics.input_partitions,
            topics.dlq: 1,
        },
        timeout_s=timeout_s,
    )


def create_topics(kafka: KafkaSettings, wanted: dict[str, int], *, timeout_s: float = 15.0) -> None:
    """Create the topics of ``wanted`` (name -> partitions) that are missing; raise BrokerError if it cannot."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(**kafka.client_kwargs(), client_id=f"{kafka.client_id}-admin")
        except KafkaError as exc:
            last_exc = exc
            time.sleep(0.2)
            continue
        try:
            existing = set(admin.list_topics())
            missing = [NewTopic(name, n, 1) for name, n in wanted.items() if name not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(missing)
                log.info("created topics %s", [t.name for t in missing])
            return
        except KafkaError as exc:
            last_exc = exc
            time.sleep(0.2)
        finally:
            admin.close()
    raise BrokerError(f"could not create topics at {kafka.bootstrap}: {last_exc}")
