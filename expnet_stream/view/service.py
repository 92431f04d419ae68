"""The view's parts wired together: the stream table, the event feed, the watched pictures and the client bounds.
Its web app is :mod:`.app`; :mod:`.server` runs both."""

from __future__ import annotations

import logging

from ..config.settings import WorkerSettings
from .feed import EventFeed, view_group_id
from .hub import ClientLimit, Fanout
from .picture import Pictures
from .settings import ViewSettings
from .state import StreamTable

log = logging.getLogger(__name__)

__all__ = ["ViewService"]


class ViewService:
    """Everything the web app reads: ``table`` (streams), ``fanout`` (events to pages), ``pictures`` (watched
    streams) and ``clients`` (the push-connection bound). :meth:`start` starts the event consumer."""

    def __init__(self, worker: WorkerSettings, settings: ViewSettings) -> None:
        self.worker = worker
        self.settings = settings
        self.group_id = view_group_id(settings.group_id)
        if self.group_id == worker.group_id:
            from ..errors import ConfigError

            raise ConfigError(f"the view's group {self.group_id!r} is the fleet's: give the view a group of its own")
        self.table = StreamTable(settings.max_streams, settings.forget_after_s, settings.idle_after_s)
        self.fanout = Fanout()
        self.clients = ClientLimit(settings.max_clients)
        self.pictures = Pictures(worker.kafka, worker.topics.input, settings, group_id=self.group_id)
        self.feed = EventFeed(
            worker.kafka,
            [worker.topics.expressions, worker.topics.emotions],
            self.table,
            self.fanout,
            group_id=self.group_id,
            backfill_records=settings.backfill_records,
            on_frame=self.pictures.on_frame,
        )

    def start(self) -> ViewService:
        self.feed.start()
        log.info(
            "view group=%s topics=%s,%s input=%s",
            self.group_id,
            self.worker.topics.expressions,
            self.worker.topics.emotions,
            self.worker.topics.input,
        )
        return self

    def stop(self) -> None:
        self.pictures.stop()
        self.feed.stop()

    def status(self) -> dict[str, object]:
        return {
            "group_id": self.group_id,
            "streams": len(self.table),
            "watched": self.pictures.watched(),
            "clients": self.clients.count,
            "max_clients": self.settings.max_clients,
            "max_watched": self.settings.max_watched,
            "events": self.feed.events,
            "events_refused": dict(self.table.refused),
            "ready": self.feed.ready.is_set(),
        }
