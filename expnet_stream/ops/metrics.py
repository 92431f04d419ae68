"""Prometheus metrics of one worker, in a registry of its own (tests and the demo run several workers per process).

Every name is ``expnet_*`` with its unit in the name (``_seconds``, ``_messages``, ``_faces``; counters end in
``_total``). Labels are bounded on purpose:

* ``partition``: the input-topic partition (at most the topic's partition count). Streams are **not** a label: a
  fleet sees an unbounded, churning set of stream ids and a series per stream would grow the TSDB without limit;
  per-stream numbers travel in the ``stream_summary`` events instead.
* ``stage``: ``decode``, ``detect``, ``crop``, ``infer``, ``publish``.
* ``reason``: the fixed dead-letter and drop reasons the worker emits.
* ``type``: ``frame`` or ``summary``; ``status``: the :class:`WorkerStatus` values.

A worker is told apart by the scrape target (pod / instance labels), not by a label of its own.

Example:
    >>> m = WorkerMetrics()
    >>> m.frame_decoded(3); m.observe_stage("infer", 0.012); m.dead_letter("bad_message")
    >>> b"expnet_frames_decoded_total{partition=\\"3\\"} 1.0" in m.render()
    True
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .status import WorkerStatus

log = logging.getLogger(__name__)

STAGES = ("decode", "detect", "crop", "infer", "publish")
"""Pipeline stages timed by ``expnet_stage_seconds`` (the same names as ``worker.stages.STAGES``)."""

STAGE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS_FACES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

METRIC_NAMES = (
    "expnet_records_total",
    "expnet_frames_decoded_total",
    "expnet_frames_skipped_total",
    "expnet_frames_replayed_total",
    "expnet_frames_dropped_total",
    "expnet_faces_total",
    "expnet_batch_size_faces",
    "expnet_stage_seconds",
    "expnet_frame_to_event_seconds",
    "expnet_events_published_total",
    "expnet_dead_letters_total",
    "expnet_commits_total",
    "expnet_commit_failures_total",
    "expnet_consumer_lag_messages",
    "expnet_assigned_partitions",
    "expnet_paused_partitions",
    "expnet_open_streams",
    "expnet_queued_frames",
    "expnet_engine_info",
    "expnet_worker_status",
)
"""Every series family this module exports (histograms add ``_bucket``/``_sum``/``_count``)."""


class PipelineObserver(Protocol):
    """What the pipeline reports (implemented by :class:`WorkerMetrics`; the pipeline does not need prometheus)."""

    def frame_decoded(self, partition: int, n: int = 1) -> None: ...

    def frame_skipped(self, partition: int, n: int = 1) -> None: ...

    def frame_replayed(self, partition: int, n: int = 1) -> None: ...

    def frame_dropped(self, partition: int, reason: str, n: int = 1) -> None: ...

    def faces(self, n: int) -> None: ...

    def batch(self, faces: int) -> None: ...

    def observe_stage(self, stage: str, seconds: float) -> None: ...


class _StatusCollector(Collector):
    """``expnet_worker_status{status=...}``: 1 for the current status, read at scrape time."""

    def __init__(self, current: Callable[[], WorkerStatus]) -> None:
        self._current = current

    def _family(self, current: WorkerStatus | None) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(
            "expnet_worker_status", "Worker lifecycle status (1 for the current one)", labels=["status"]
        )
        for s in WorkerStatus:
            fam.add_metric([s.value], 1.0 if s is current else 0.0)
        return fam

    def describe(self) -> Iterator[Metric]:
        yield self._family(None)

    def collect(self) -> Iterator[Metric]:
        yield self._family(self._current())


class WorkerMetrics:
    """The metrics of one worker and the calls the worker makes to move them.

    Every call is O(1): labelled children are bound once and cached, so the hot path is one dict lookup plus the
    client's own lock. Call from the worker thread (kafka-python's rebalance callbacks included); scraping from the
    health server's thread is safe.

    Args:
        registry: where to register; a new :class:`CollectorRegistry` when ``None`` (never the global one, so
            several workers in one process and repeated tests do not collide).
        status_provider: read at scrape time for ``expnet_worker_status`` (e.g. ``lambda: health.status``);
            without it the value set by :meth:`status` is exported.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        status_provider: Callable[[], WorkerStatus] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._status_value = WorkerStatus.STARTING
        self._records = Counter("expnet_records", "Input records consumed", ["partition"], registry=r)
        self._decoded = Counter("expnet_frames_decoded", "Video frames decoded", ["partition"], registry=r)
        self._skipped = Counter(
            "expnet_frames_skipped",
            "Decoded frames not analysed because of the sampling rate (sampling.fps)",
            ["partition"],
            registry=r,
        )
        self._replayed = Counter(
            "expnet_frames_replayed",
            "Frames re-decoded after an assignment to resume a stream at its keyframe, not published again",
            ["partition"],
            registry=r,
        )
        self._dropped = Counter(
            "expnet_frames_dropped",
            "Input that never became a frame event, by reason (before_keyframe: packets that cannot be decoded "
            "before a stream's first keyframe; they are also dead-lettered)",
            ["partition", "reason"],
            registry=r,
        )
        self._faces = Counter("expnet_faces", "Faces detected and sent to the engine", registry=r)
        self._batch = Histogram(
            "expnet_batch_size_faces",
            "Faces per engine call",
            buckets=BATCH_BUCKETS_FACES,
            registry=r,
        )
        self._stage = Histogram(
            "expnet_stage_seconds",
            "Wall time per call of each pipeline stage",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self._latency = Histogram(
            "expnet_frame_to_event_seconds",
            "Packet capture time (set by the ingest) to event publish time; includes queueing in Kafka",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._events = Counter("expnet_events_published", "Events produced to the output topic", ["type"], registry=r)
        self._dlq = Counter(
            "expnet_dead_letters", "Input records sent to the dead-letter topic", ["reason"], registry=r
        )
        self._dlq_unsent = Counter(
            "expnet_dead_letters_unsent",
            "Dead letters the broker did not take (logged; the record's offset is released all the same)",
            registry=r,
        )
        self._step_cuts = Counter(
            "expnet_step_cuts",
            "Poll rounds cut short by max_step_s (their remaining records are fetched again)",
            registry=r,
        )
        self._decoders_evicted = Counter(
            "expnet_decoders_evicted",
            "Decoders closed to stay within decode.memory_mb (their streams resume at their next keyframe)",
            registry=r,
        )
        self._decoder_memory = Gauge(
            "expnet_decoder_memory_bytes",
            "Estimated memory of the open decoders (against decode.memory_mb)",
            registry=r,
        )
        self._commits = Counter("expnet_commits", "Successful offset commits", registry=r)
        self._commit_failures = Counter("expnet_commit_failures", "Failed offset commits (retried)", registry=r)
        self._lag = Gauge(
            "expnet_consumer_lag_messages",
            "High watermark seen by the consumer minus its position, per assigned partition",
            ["partition"],
            registry=r,
        )
        self._assigned = Gauge("expnet_assigned_partitions", "Input partitions assigned to this worker", registry=r)
        self._paused = Gauge("expnet_paused_partitions", "Assigned partitions paused by backpressure", registry=r)
        self._streams = Gauge("expnet_open_streams", "Streams with an open decoder on this worker", registry=r)
        self._queued = Gauge("expnet_queued_frames", "Frames waiting for their engine batch", registry=r)
        self._engine = Info("expnet_engine", "The loaded model and inference engine", registry=r)
        r.register(_StatusCollector(status_provider or (lambda: self._status_value)))
        self._stage_children = {s: self._stage.labels(stage=s) for s in STAGES}
        self._events_children = {t: self._events.labels(type=t) for t in ("frame", "summary")}
        self._per_partition: dict[tuple[int, str], Counter] = {}
        self._lag_children: dict[int, Gauge] = {}

    # ---------------------------------------------------------------- helpers
    def _part(self, metric: Counter, name: str, partition: int) -> Counter:
        key = (partition, name)
        child = self._per_partition.get(key)
        if child is None:
            child = self._per_partition[key] = metric.labels(partition=str(partition))
        return child

    # ---------------------------------------------------------------- input and pipeline
    def record(self, partition: int, n: int = 1) -> None:
        """``n`` input records consumed from ``partition``."""
        self._part(self._records, "records", partition).inc(n)

    def frame_decoded(self, partition: int, n: int = 1) -> None:
        self._part(self._decoded, "decoded", partition).inc(n)

    def frame_skipped(self, partition: int, n: int = 1) -> None:
        """Decoded but not analysed (sampling)."""
        self._part(self._skipped, "skipped", partition).inc(n)

    def frame_replayed(self, partition: int, n: int = 1) -> None:
        """Re-decoded to resume a stream after an assignment; its event was published by the previous owner."""
        self._part(self._replayed, "replayed", partition).inc(n)

    def frame_dropped(self, partition: int, reason: str, n: int = 1) -> None:
        """Input that will never produce a frame event (``before_keyframe``; a small fixed set of reasons)."""
        self._dropped.labels(partition=str(partition), reason=reason).inc(n)

    def faces(self, n: int) -> None:
        if n:
            self._faces.inc(n)

    def batch(self, faces: int) -> None:
        """One engine call with ``faces`` face crops."""
        self._batch.observe(faces)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One call of a pipeline stage took ``seconds`` (unknown stage names get their own series)."""
        child = self._stage_children.get(stage)
        if child is None:
            child = self._stage_children[stage] = self._stage.labels(stage=stage)
        child.observe(seconds)

    # ---------------------------------------------------------------- output and delivery
    def event_published(self, kind: str = "frame", latency_s: float | None = None) -> None:
        """An event was produced; ``latency_s`` = publish time minus capture time (frame events; clamped at 0)."""
        child = self._events_children.get(kind)
        if child is None:
            child = self._events_children[kind] = self._events.labels(type=kind)
        child.inc()
        if latency_s is not None:
            self._latency.observe(latency_s if latency_s > 0.0 else 0.0)

    def dead_letter(self, reason: str) -> None:
        self._dlq.labels(reason=reason).inc()

    def dead_letter_unsent(self, n: int = 1) -> None:
        self._dlq_unsent.inc(n)

    def step_cut(self) -> None:
        self._step_cuts.inc()

    def decoders(self, memory_bytes: int, evicted: int) -> None:
        """The open decoders' estimated memory, and decoders evicted since the last call."""
        self._decoder_memory.set(memory_bytes)
        if evicted:
            self._decoders_evicted.inc(evicted)

    def commit(self, ok: bool = True) -> None:
        (self._commits if ok else self._commit_failures).inc()

    # ---------------------------------------------------------------- gauges
    def lag(self, partition: int, messages: int) -> None:
        """Consumer lag of an assigned partition: ``highwater - position`` (never negative)."""
        child = self._lag_children.get(partition)
        if child is None:
            child = self._lag_children[partition] = self._lag.labels(partition=str(partition))
        child.set(messages if messages > 0 else 0)

    def assigned(self, partitions: Iterable[int]) -> None:
        """The current assignment (after assign/revoke/lost); lag series of partitions no longer held are removed."""
        keep = set(partitions)
        self._assigned.set(len(keep))
        for p in [p for p in self._lag_children if p not in keep]:
            del self._lag_children[p]
            with contextlib.suppress(KeyError):  # already gone
                self._lag.remove(str(p))

    def paused(self, partitions: int) -> None:
        self._paused.set(partitions)

    def open_streams(self, n: int) -> None:
        self._streams.set(n)

    def queued(self, frames: int) -> None:
        self._queued.set(frames)

    def engine_info(self, model_id: str, engine: str, trained: bool) -> None:
        """Expose the loaded model as ``expnet_engine_info{model_id, engine, trained} 1``."""
        self._engine.info({"model_id": model_id, "engine": engine, "trained": "true" if trained else "false"})

    def status(self, status: WorkerStatus) -> None:
        """Set the exported status (only used when no ``status_provider`` was given)."""
        self._status_value = status

    # ---------------------------------------------------------------- exposition
    def render(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)
