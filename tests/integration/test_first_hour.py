"""A newcomer's first hour, as a user runs it: from an empty folder, with no config file, `ingest` and `worker`
serve a subscriber (the packaged defaults: topic names, group, the shipped model and detector)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from expnet_stream.cli.main import main
from expnet_stream.client import Subscriber
from expnet_stream.events.schema import FrameEvent, StreamSummary
from expnet_stream.kafka.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_ingest_and_worker_without_a_config_serve_a_subscriber(
    tmp_path: Path, face_video: tuple[Path, list[bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    video, has_face = face_video
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPNET_")}
    # the default metrics port may be taken by another test on this machine: the only setting the test changes
    env["EXPNET_OPS__METRICS_PORT"] = "0"
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
            assert main(["ingest", str(video), "--stream-id", "cam", "--bootstrap", broker.bootstrap]) == 0
            with Subscriber(broker.bootstrap, "expnet.expressions") as sub:
                events = []
                for item in sub.iter(timeout_s=120, idle_s=60):
                    events.append(item.event)
                    if isinstance(item.event, StreamSummary):
                        break
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
    frames = [e for e in events if isinstance(e, FrameEvent)]
    assert isinstance(events[-1], StreamSummary), err[-2000:]
    assert [f.frame_seq for f in frames] == list(range(len(has_face)))
    assert frames[0].model_trained and frames[0].model_id.startswith("expnet_lite18")  # the shipped model
    assert sum(bool(f.faces) for f in frames) >= 0.9 * sum(has_face)
    assert worker.returncode == 0, err[-2000:]
