"""Helpers for fleet tests: worker processes, an event collector, RSS readings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer

from expnet_stream.events.codec import decode


def worker_config(tmp: Path, name: str, bootstrap: str, prefix: str, onnx: Path, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "group_id": f"{prefix}-fleet",
        "worker_id": name,
        "kafka": {
            "bootstrap": bootstrap,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_records": 16,
        },
        "topics": {
            "input": f"{prefix}.video",
            "expressions": f"{prefix}.expr",
            "emotions": f"{prefix}.emo",
            "dlq": f"{prefix}.dlq",
            "state": f"{prefix}.state",
            "input_partitions": 3,
        },
        "model": {"onnx": str(onnx), "threads": 1},
        "batch": {"max_batch": 8, "max_wait_ms": 20},
        "commit_interval_ms": 200,
        "shutdown_deadline_s": 20,
        "ops": {"metrics_port": 0},
    }
    for key, value in extra.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_worker(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EXPNET_LOG": "info"}
    return subprocess.Popen(
        [sys.executable, "-m", "expnet_stream.cli.main", "worker", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env=env,
        start_new_session=True,
    )


def start_ingester(video: Path, stream_id: str, bootstrap: str, topic: str) -> subprocess.Popen[bytes]:
    """`expnet-stream ingest --realtime` of one video as a separate process (to be killed mid-stream)."""
    cmd = [sys.executable, "-m", "expnet_stream.cli.main", "ingest", str(video), "--stream-id", stream_id]
    cmd += ["--realtime", "--bootstrap", bootstrap, "--topic", topic]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


class Collector:
    """Reads a topic from the beginning in a thread; keeps (partition, offset, event) in arrival order."""

    def __init__(self, bootstrap: str, topic: str, isolation_level: str = "read_uncommitted") -> None:
        self.items: list[tuple[int, int, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            isolation_level=isolation_level,
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=200).values():
                with self._lock:
                    self.items.extend((r.partition, r.offset, decode(r.value)) for r in records)

    def events(self) -> list[Any]:
        with self._lock:
            return [e for _, _, e in self.items]

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.events()):
                return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()
