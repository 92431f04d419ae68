"""Runs worker processes against the embedded broker and measures what comes out.

One :class:`BrokerBench` (a context manager) owns one embedded Tansu broker on 127.0.0.1 for a scenario; each
:meth:`BrokerBench.run` uses fresh topics and a fresh consumer group, starts worker processes
(:mod:`.worker_proc`), waits until they hold partitions, ingests streams (as fast as possible from messages
encoded beforehand, or paced in real time by the packets' timestamps), collects every event with a subscriber
and stops the workers (SIGTERM: drain, publish, commit) once every stream's summary arrived or the time is up.
Every wait is bounded; workers are killed if they do not stop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from ..client import Subscriber
from ..config.settings import DetectorSettings, WorkerSettings, load_settings
from ..errors import ExpNetError
from ..events.codec import encode
from ..events.schema import FrameEvent, StreamSummary
from ..kafka.broker import EmbeddedBroker
from ..kafka.topics import ensure_topics
from ..video.ingest import iter_stream_messages
from .common import BenchError, Progress
from .data import Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    """One input stream: a video file ingested under ``stream_id`` (at most ``max_packets`` packets)."""

    video: str
    stream_id: str
    max_packets: int | None = None


@dataclass(frozen=True)
class FrameRecord:
    """What the benchmarks keep of a frame event."""

    stream_id: str
    faces: int
    capture_time: float
    publish_time: float
    receive_time: float


@dataclass
class RunResult:
    frames: list[FrameRecord] = field(default_factory=list)
    summaries: list[StreamSummary] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    streams: int = 0
    packets_ingested: int = 0
    ingest_seconds: float = 0.0
    timed_out: bool = False

    @property
    def faces(self) -> int:
        return sum(f.faces for f in self.frames)

    @property
    def t_first_record(self) -> float | None:
        ts = [w["t_first_record"] for w in self.workers if w.get("t_first_record")]
        return min(ts) if ts else None

    @property
    def t_last_publish(self) -> float | None:
        return max((f.publish_time for f in self.frames), default=None)

    @property
    def elapsed_s(self) -> float | None:
        """First record handled by any worker -> last frame event published."""
        a, b = self.t_first_record, self.t_last_publish
        return None if a is None or b is None or b <= a else b - a

    @property
    def frames_decoded(self) -> int:
        return sum(s.frames_decoded for s in self.summaries)

    def stage_seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for w in self.workers:
            for k, v in w.get("stage_seconds", {}).items():
                out[k] = out.get(k, 0.0) + float(v)
        return out


def worker_overrides(
    bootstrap: str,
    prefix: str,
    onnx: Path,
    *,
    partitions: int,
    threads: int | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 40.0,
    sample_fps: float | None = None,
    detector: str | None = None,
    detector_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Worker settings of a benchmark run (fast group joins, no metrics server); ``detector`` None = the default."""
    return {
        "group_id": f"{prefix}-workers",
        "kafka": {
            "bootstrap": bootstrap,
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 500,
            "max_poll_records": 32,
        },
        "topics": {
            "input": f"{prefix}.video",
            "expressions": f"{prefix}.expr",
            "emotions": f"{prefix}.emo",
            "dlq": f"{prefix}.dlq",
            "input_partitions": partitions,
        },
        "detector": {"name": detector or DetectorSettings().name, "options": detector_options or {}},
        "model": {"onnx": str(onnx), "engine": "onnxruntime", "threads": threads},
        "batch": {"max_batch": max_batch, "max_wait_ms": max_wait_ms},
        "sampling": {"fps": sample_fps},
        "commit_interval_ms": 250,
        "shutdown_deadline_s": 20,
        "ops": {"metrics_port": 0},
    }


class _Collector(threading.Thread):
    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="bench-subscriber", daemon=True)
        self.sub = Subscriber(bootstrap, topic, dedupe=True)
        self.frames: list[FrameRecord] = []
        self.summaries: list[StreamSummary] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for item in self.sub.poll(0.1):
                ev = item.event
                if isinstance(ev, FrameEvent):
                    rec = FrameRecord(ev.stream_id, len(ev.faces), ev.capture_time, ev.publish_time, item.receive_time)
                    self.frames.append(rec)
                elif isinstance(ev, StreamSummary):
                    self.summaries.append(ev)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self.sub.close()


class BrokerBench:
    """An embedded broker plus the machinery to run measured worker processes against it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker: EmbeddedBroker | None = None

    def __enter__(self) -> BrokerBench:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker().start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    @property
    def bootstrap(self) -> str:
        if self.broker is None:
            raise BenchError("the benchmark broker is not running")
        return self.broker.bootstrap

    # ------------------------------------------------------------------------------------------------ workers
    def _start_worker(
        self, cfg: dict[str, Any], name: str, env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "worker_id": name}))
        out, ready, logf = (self.workdir / f"{name}.{ext}" for ext in ("stats.json", "ready", "log"))
        for p in (out, ready):
            p.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "expnet_stream.bench.worker_proc", "--config", str(path), "--out", str(out)]
        cmd += ["--ready", str(ready), "--max-seconds", "900"]
        with logf.open("wb") as fh:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=fh,
                env={**os.environ, **env},
                cwd=self.workdir,  # not the caller's folder: a PYTHONPATH tree in ``env`` must win over it
                start_new_session=True,
            )
        return proc, out

    @staticmethod
    def _stop_worker(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("worker pid=%d did not stop in %.0f s; killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait(timeout=10)

    # ------------------------------------------------------------------------------------------------ a run
    def run(
        self,
        streams: list[StreamSpec],
        onnx: Path,
        *,
        workers: int = 1,
        partitions: int = 4,
        realtime: bool = False,
        timeout_s: float = 300.0,
        env: dict[str, str] | None = None,
        progress: Progress | None = None,
        **settings: Any,
    ) -> RunResult:
        """Ingest ``streams`` into fresh topics and process them with ``workers`` worker processes."""
        prefix = f"b{uuid.uuid4().hex[:8]}"
        cfg = worker_overrides(self.bootstrap, prefix, onnx, partitions=partitions, **settings)
        ws: WorkerSettings = load_settings(None, cfg)
        ensure_topics(ws.kafka, ws.topics)
        encoded = None if realtime else [_encode_stream(s) for s in streams]
        collector = _Collector(self.bootstrap, ws.topics.expressions)
        collector.start()
        procs = [self._start_worker(cfg, f"{prefix}-w{i}", env or {}) for i in range(workers)]
        result = RunResult(streams=len(streams))
        try:
            self._wait_ready(procs, prefix, timeout_s=min(90.0, timeout_s))
            t0 = time.monotonic()
            ingest = _Ingest(ws, streams, encoded)
            ingest.start()
            end = time.monotonic() + timeout_s
            while len(collector.summaries) < len(streams):
                if time.monotonic() > end:
                    result.timed_out = True
                    log.warning("run %s timed out after %.0f s", prefix, timeout_s)
                    break
                dead = [(p, out) for p, out in procs if p.poll() is not None]
                if dead:
                    p, out = dead[0]
                    raise BenchError(f"worker exited with code {p.returncode}: {_log_tail(out)}")
                if ingest.errors:
                    raise BenchError(f"ingest failed: {ingest.errors[0]}")
                if progress is not None:
                    progress.status(f"{len(collector.frames)} events, {len(collector.summaries)}/{len(streams)} done")
                time.sleep(0.1)
            # every frame event precedes its stream's summary; allow stragglers of other partitions a moment
            expected = sum(s.frames_sampled for s in collector.summaries)
            settle = time.monotonic() + 5.0
            while len(collector.frames) < expected and time.monotonic() < settle:
                time.sleep(0.05)
            if len(collector.frames) < expected:
                log.warning(
                    "run %s: %d frame events of %d sampled frames arrived", prefix, len(collector.frames), expected
                )
            ingest.join(timeout=max(1.0, end - time.monotonic()))
            result.packets_ingested = ingest.packets
            result.ingest_seconds = ingest.seconds
            log.debug("run %s done in %.1f s", prefix, time.monotonic() - t0)
        finally:
            for proc, _ in procs:
                self._stop_worker(proc)
            collector.stop()
        for _, out in procs:
            if not out.is_file():
                raise BenchError(f"worker wrote no stats ({out}); see its log next to it")
            result.workers.append(json.loads(out.read_text()))
        result.frames = collector.frames
        result.summaries = collector.summaries
        return result

    def _wait_ready(self, procs: list[tuple[subprocess.Popen[bytes], Path]], prefix: str, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        readies = [out.with_name(out.name.replace(".stats.json", ".ready")) for _, out in procs]
        while not all(r.is_file() for r in readies):
            if time.monotonic() > end:
                raise BenchError(f"workers of {prefix} did not join their group within {timeout_s:.0f} s")
            for p, out in procs:
                if p.poll() is not None:
                    raise BenchError(f"worker exited with code {p.returncode} before joining: {_log_tail(out)}")
            time.sleep(0.05)
        if len(procs) > 1:
            time.sleep(1.0)  # let the last rebalance settle so every member holds its share


def _log_tail(stats_path: Path, chars: int = 1500) -> str:
    log_path = stats_path.with_name(stats_path.name.replace(".stats.json", ".log"))
    try:
        return log_path.read_text(errors="replace")[-chars:].strip() or "(empty log)"
    except OSError:
        return "(no log)"


def _encode_stream(spec: StreamSpec) -> list[bytes]:
    return [encode(m) for m in iter_stream_messages(spec.video, spec.stream_id, max_packets=spec.max_packets)]


class _Ingest(threading.Thread):
    """Publishes every stream: pre-encoded messages as fast as possible, or one paced thread per stream."""

    def __init__(self, ws: WorkerSettings, streams: list[StreamSpec], encoded: list[list[bytes]] | None) -> None:
        super().__init__(name="bench-ingest", daemon=True)
        self.ws, self.streams, self.encoded = ws, streams, encoded
        self.errors: list[str] = []
        self.packets = 0
        self.seconds = 0.0

    def run(self) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        t0 = time.monotonic()
        producer = KafkaProducer(
            **self.ws.kafka.client_kwargs(),
            acks="all",
            linger_ms=0,  # a packet goes out at once (a live frame waits for nothing); packets still go together
            # while a request is in flight
            max_request_size=self.ws.max_packet_bytes,
            max_in_flight_requests_per_connection=1,
        )
        topic = self.ws.topics.input
        try:
            if self.encoded is not None:
                for spec, values in zip(self.streams, self.encoded, strict=True):
                    for v in values:
                        producer.send(topic, key=spec.stream_id.encode(), value=v)
                    self.packets += max(0, len(values) - 2)
            else:
                threads = [threading.Thread(target=self._paced, args=(producer, s), daemon=True) for s in self.streams]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            producer.flush()
        except KafkaError as exc:
            self.errors.append(str(exc))
        finally:
            producer.close(timeout=10)
            self.seconds = time.monotonic() - t0

    def _paced(self, producer: Any, spec: StreamSpec) -> None:
        from kafka.errors import KafkaError

        try:
            n = 0
            msg: Message
            for msg in iter_stream_messages(spec.video, spec.stream_id, realtime=True, max_packets=spec.max_packets):
                producer.send(self.ws.topics.input, key=spec.stream_id.encode(), value=encode(msg))
                n += 1
            self.packets += max(0, n - 2)
        except (ExpNetError, KafkaError, OSError) as exc:
            self.errors.append(f"{spec.stream_id}: {exc}")
