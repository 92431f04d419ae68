"""Soak (issue 12), bounded to 3 minutes: 2 workers, 8 streams, kill -9 at four marks of progress, hostile records mixed
into the input, one ingester killed mid-stream. Prints the figures the release note quotes."""

from __future__ import annotations

import random
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from kafka import KafkaConsumer, TopicPartition

from expnet_stream.config.settings import load_settings
from expnet_stream.events.schema import DeadLetter, FrameEvent, StreamSummary
from expnet_stream.kafka.broker import EmbeddedBroker
from expnet_stream.kafka.topics import ensure_topics
from tests.conftest import make_face_video
from tests.integration.fleet_util import Collector, rss_mb, start_ingester, start_worker, stop, worker_config
from tests.integration.test_fleet import _check_complete_and_ordered, _produce, _streams

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HOSTILE = [  # (field, value) put into an otherwise valid packet; each must be dead-lettered
    ("time_base", [1, 0]),
    ("time_base", [0, 1]),
    ("time_base", [-5, 25]),
    ("width", 10**7),
    ("height", -3),
    ("pts", 2**63 - 1),
    ("dts", -(2**63)),
    ("seq", -1),
    ("capture_time", float("nan")),
    ("codec", ""),
    ("extradata", b"\x00" * (1024 * 1024 + 1)),
    ("stream_id", ""),
    ("v", 9),
    ("type", "teleport"),
]


class Monitor(threading.Thread):
    """Samples the group's committed offsets (never backwards), the lag, and each worker's RSS every 0.5 s."""

    def __init__(self, bootstrap: str, group: str, topic: str, procs: list[subprocess.Popen[bytes]]) -> None:
        super().__init__(daemon=True)
        # the group's id, to read its commits; it never subscribes or polls, so it never joins the group
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        # reads the input to learn each partition's end from fetch responses (Tansu's ListOffsets "latest" answers
        # the last batch's base offset + 1, not the log end, so end_offsets() under-reports)
        self.reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        self.group, self.topic, self.procs = group, topic, procs
        self.backwards: list[tuple[int, int, int]] = []
        self.lag: list[int] = [0]
        self.rss: dict[int, list[tuple[float, float]]] = {}
        self.last: dict[int, int] = {}
        self.stopped = threading.Event()
        self.errors = 0
        self.detail: dict[int, Any] = {}

    def committed(self, parts: list[TopicPartition]) -> dict[int, int]:
        out = {}
        for tp in parts:
            off = self.consumer.committed(tp)
            if off is not None and off >= 0:
                out[tp.partition] = off
        return out

    def run(self) -> None:
        parts = [TopicPartition(self.topic, p) for p in sorted(self.consumer.partitions_for_topic(self.topic) or [])]
        self.reader.assign(parts)
        self.reader.seek_to_beginning(*parts)
        while not self.stopped.wait(0.2):
            now = time.monotonic()
            for proc in list(self.procs):
                if proc.poll() is None:
                    self.rss.setdefault(proc.pid, []).append((now, rss_mb(proc.pid)))
            try:
                self.reader.poll(timeout_ms=300, max_records=2000)
                ends = {tp: self.reader.highwater(tp) or 0 for tp in parts}
                committed = self.committed(parts)
            except Exception:  # a broker hiccup during a rebalance: sample again
                self.errors += 1
                continue
            for p, off in committed.items():
                if off < self.last.get(p, -1):
                    self.backwards.append((p, self.last[p], off))
                self.last[p] = max(off, self.last.get(p, -1))
            self.lag.append(sum(ends[tp] - committed.get(tp.partition, 0) for tp in parts))
            self.detail = {tp.partition: (committed.get(tp.partition), ends[tp]) for tp in parts}

    def close(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        self.consumer.close()
        self.reader.close()


def test_soak_kill9_hostile_records_and_a_killed_ingester(
    broker: EmbeddedBroker, tmp_path: Path, small_onnx: Path, topic_prefix: str
) -> None:
    rng = random.Random(12)
    video = tmp_path / "soak.mp4"
    make_face_video(video, n_frames=200, blank_frames=0, size=(240, 180), gop=10)
    extra: dict[str, Any] = {
        "kafka": {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500},
        "idle": {"wall_s": 3.0},
        "topics": {"input_partitions": 4},
    }
    cfgs = [
        worker_config(tmp_path, f"soak-{i}", broker.bootstrap, topic_prefix, small_onnx, **extra) for i in range(12)
    ]
    settings = load_settings(cfgs[0])
    ensure_topics(settings.kafka, settings.topics)
    ids = [f"s{i}" for i in range(8)]
    messages, pts = _streams(video, ids)
    template = msgpack.unpackb(messages[1][1])  # a real packet of s0
    hostile = [msgpack.packb({**template, f: v}, use_bin_type=True) for f, v in HOSTILE]
    for i, value in enumerate(hostile):  # spread over the input, keyed like the streams
        messages.insert(rng.randrange(len(messages)), (ids[i % len(ids)], value))
    out = Collector(broker.bootstrap, settings.topics.expressions)
    dlq = Collector(broker.bootstrap, settings.topics.dlq)
    procs = [start_worker(cfgs[i], tmp_path / f"w{i}.log") for i in range(2)]
    next_cfg = 2
    monitor = Monitor(broker.bootstrap, settings.group_id, settings.topics.input, procs)
    monitor.start()
    kills = 0
    t0 = time.monotonic()
    ingester = start_ingester(video, "cut", broker.bootstrap, settings.topics.input)
    try:
        _produce(broker.bootstrap, settings.topics.input, [(k, v) for k, v in messages])
        time.sleep(1.5)
        ingester.send_signal(signal.SIGKILL)  # "cut" never gets its stream_end
        ingester.wait(timeout=10)

        def finished() -> bool:
            summaries = {e.stream_id for e in out.events() if isinstance(e, StreamSummary)}
            letters = sum(isinstance(e, DeadLetter) for e in dlq.events())
            return summaries >= {*ids, "cut"} and letters >= len(hostile) and monitor.lag[-1] == 0

        # kill -9 by progress, not by the clock: at these shares of the frames published, whatever the machine's speed
        total = sum(len(v) for v in pts.values())
        kill_at = [0.1, 0.25, 0.4, 0.55]
        while time.monotonic() - t0 < 170 and not finished():
            published = sum(isinstance(e, FrameEvent) for e in out.events())
            if kills < len(kill_at) and published >= kill_at[kills] * total and next_cfg < len(cfgs):
                victim = rng.choice([p for p in procs if p.poll() is None])
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                kills += 1
                procs.append(start_worker(cfgs[next_cfg], tmp_path / f"w{next_cfg}.log"))
                next_cfg += 1
            time.sleep(0.25)
        took = time.monotonic() - t0
        done = finished()
    finally:
        monitor.close()
        for p in procs:
            stop(p, signal.SIGTERM, timeout=30)
        if ingester.poll() is None:
            ingester.kill()
        out.close()
        dlq.close()
    events = out.events()
    n_summaries = sum(isinstance(e, StreamSummary) for e in events)
    assert done, f"not finished in {took:.0f} s: lag={monitor.lag[-1]} {monitor.detail} summaries={n_summaries}"
    dups = _check_complete_and_ordered(events, pts)  # 0 frames lost, first occurrences in order
    letters = [e for e in dlq.events() if isinstance(e, DeadLetter)]
    hostile_letters = [e for e in letters if e.value in hostile or e.reason == "invalid_fields"]
    assert len({(e.source_partition, e.source_offset) for e in hostile_letters}) == len(hostile)
    cut = [e for e in events if isinstance(e, StreamSummary) and e.stream_id == "cut"]
    assert cut and cut[0].end_reason == "idle"
    assert len(monitor.lag) > 50 and max(monitor.lag) > 0, "the monitor saw the commits move"
    assert not monitor.backwards, f"commits moved backwards: {monitor.backwards}"
    assert kills == len(kill_at), f"{kills} kills of {len(kill_at)}: the fleet finished without passing every mark"
    peaks = []
    for pid, samples in monitor.rss.items():
        born = samples[0][0]
        steady = [r for t, r in samples if t - born >= 5]  # after loading the model and joining the group
        if len(steady) >= 10:  # lived long enough to have a steady level
            level = statistics.median(steady)
            peaks.append((pid, level, max(steady)))
            assert max(steady) <= 1.2 * level, f"worker {pid}: RSS peak {max(steady):.0f} MB vs steady {level:.0f} MB"
    assert peaks, "no worker lived long enough to measure a steady RSS"
    reasons: dict[str, int] = {}
    for e in letters:
        reasons[e.reason] = reasons.get(e.reason, 0) + 1
    print(
        f"soak: {took:.0f} s, records={len(messages)}+cut, kills={kills}, duplicates={sum(dups.values())}, "
        f"dlq={reasons}, max_lag={max(monitor.lag)}, lag_samples={len(monitor.lag)}, sample_errors={monitor.errors}, "
        f"rss(steady/peak MB)={[(round(lv), round(pk)) for _, lv, pk in peaks]}"
    )
