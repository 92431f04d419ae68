"""A newcomer's first hour, as a user runs it: from an empty folder, with no config file, `ingest` and `worker`
serve a subscriber (the packaged defaults: topic names, group, the shipped model and detector)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from expnet_stream.cli.main import main
from expnet_stream.client import Subscriber
from expnet_stream.events.schema import FrameEvent, StreamSummary
from expnet_stream.kafka.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def _first_hour(
    tmp_path: Path, video: Path, stream_id: str, ingest_after_s: float = 0.0
) -> tuple[list[Any], float, str]:
    """`worker` with no config on its own broker, then (after ``ingest_after_s``) `ingest` of ``video``; returns the
    events a subscriber got up to the stream's summary, the seconds from the ingest's start to the first event, and
    the worker's stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPNET_")}
    # the default metrics port may be taken by another test on this machine: the only setting the test changes
    env["EXPNET_OPS__METRICS_PORT"] = "0"
    events: list[Any] = []
    first_event_s = math.inf
    # its own broker: the default topic names and group must not meet other tests' data
    with EmbeddedBroker() as broker:
        worker = subprocess.Popen(
            [sys.executable, "-m", "expnet_stream.cli.main", "worker", "--bootstrap", broker.bootstrap],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(ingest_after_s)
            assert worker.poll() is None, "the worker runs (without its topic, when started first)"
            t0 = time.monotonic()
            assert main(["ingest", str(video), "--stream-id", stream_id, "--bootstrap", broker.bootstrap]) == 0
            with Subscriber(broker.bootstrap, "expnet.expressions") as sub:
                for item in sub.iter(timeout_s=120, idle_s=60):
                    first_event_s = min(first_event_s, time.monotonic() - t0)
                    events.append(item.event)
                    if isinstance(item.event, StreamSummary):
                        break
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-2000:]
    return events, first_event_s, err


def test_ingest_and_worker_without_a_config_serve_a_subscriber(
    tmp_path: Path, face_video: tuple[Path, list[bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    video, has_face = face_video
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    events, _, err = _first_hour(tmp_path, video, "cam")
    frames = [e for e in events if isinstance(e, FrameEvent)]
    assert isinstance(events[-1], StreamSummary), err[-2000:]
    assert [f.frame_seq for f in frames] == list(range(len(has_face)))
    assert frames[0].model_trained and frames[0].model_id.startswith("expnet_lite18")  # the shipped model
    assert sum(bool(f.faces) for f in frames) >= 0.9 * sum(has_face)


def test_a_worker_started_before_its_topic_exists_serves_a_stream_ingested_later(
    tmp_path: Path, face_video: tuple[Path, list[bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start order does not matter: the worker first on a fresh broker (no input topic yet), `ingest` 10 s later; the
    worker serves it at once (before: it never found the topic the ingester auto-created, for 330 s)."""
    video, has_face = face_video
    monkeypatch.chdir(tmp_path)
    events, first_event_s, err = _first_hour(tmp_path, video, "late", ingest_after_s=10.0)
    frames = [e for e in events if isinstance(e, FrameEvent)]
    print(f"any order: first event {first_event_s:.1f} s after the ingest started")
    assert events and isinstance(events[-1], StreamSummary), err[-2000:]
    assert [f.frame_seq for f in frames] == list(range(len(has_face)))
    assert first_event_s < 30.0, "found the topic within seconds, not minutes"
