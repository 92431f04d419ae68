"""`expnet-stream annotate --bootstrap`: a stream's published frame events, read from the expressions topic of a real
broker, drawn on the video it was ingested from."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from expnet_stream.cli.main import main
from expnet_stream.kafka.broker import EmbeddedBroker
from expnet_stream.kafka.topics import ensure_topics
from expnet_stream.models.weights import default_model_path
from expnet_stream.worker.runtime import build_detector, build_emotion_head, build_engine
from expnet_stream.worker.worker import Worker
from tests.conftest import broker_settings

pytestmark = pytest.mark.integration


def test_annotate_from_the_topic_after_a_worker_run(
    broker: EmbeddedBroker,
    topic_prefix: str,
    face_video: tuple[Path, list[bool]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    video, has_face = face_video
    settings = broker_settings(broker, topic_prefix, default_model_path(), topics={"input_partitions": 1})
    ensure_topics(settings.kafka, settings.topics)
    ingest = ["ingest", str(video), "--stream-id", "cam", "--bootstrap", broker.bootstrap]
    assert main([*ingest, "--topic", settings.topics.input]) == 0
    engine = build_engine(settings)
    worker = Worker(settings, build_detector(settings), engine, emotion_head=build_emotion_head(settings, engine))
    try:
        worker.run(max_seconds=120, until=lambda w: w.stats.summaries >= 1)
    finally:
        worker.close()
    assert worker.stats.summaries == 1
    capsys.readouterr()

    out = tmp_path / "from-topic.mp4"
    topic = ["--bootstrap", broker.bootstrap, "--topic", settings.topics.expressions, "--idle", "5"]
    rc = main(["annotate", str(video), "--out", str(out), *topic, "--stream-id", "cam", "--no-progress", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with av.open(str(out)) as c:
        n_out = sum(1 for _ in c.decode(video=0))
    assert report["frames_written"] == n_out == len(has_face)
    assert report["events"] == report["frames_with_events"] == len(has_face) and report["events_unmatched"] == 0
    assert report["faces_drawn"] >= sum(has_face) - 2 and report["source"].startswith(settings.topics.expressions)

    rc = main(["annotate", str(video), "--out", str(tmp_path / "x.mp4"), *topic, "--stream-id", "other", "--idle", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no frame events for stream 'other'" in err and "streams seen: cam" in err
    assert not (tmp_path / "x.mp4").exists()
