"""Results as a table from a topic: `tail --out x.parquet` and `Subscriber.to_pandas()` on a real broker and worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaProducer

from expnet_stream.cli.main import main
from expnet_stream.client import Subscriber
from expnet_stream.events.codec import encode
from expnet_stream.events.schema import FrameEvent, StreamSummary
from expnet_stream.kafka.broker import EmbeddedBroker
from expnet_stream.kafka.topics import ensure_topics
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.runtime import build_detector, build_engine
from expnet_stream.worker.worker import Worker
from tests.conftest import broker_settings, make_face_video

pd = pytest.importorskip("pandas", reason="results as a table need pandas (the `table` extra)")
pytest.importorskip("pyarrow", reason="results as a table need pyarrow (the `table` extra)")

from expnet_stream.table import column_names, events_to_pandas  # noqa: E402

pytestmark = pytest.mark.integration

ORDER = ["stream_id", "frame_seq", "face_index"]


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(ORDER, na_position="first").reset_index(drop=True)


def test_tail_out_parquet_and_to_pandas_give_the_published_rows(
    broker: EmbeddedBroker,
    topic_prefix: str,
    small_onnx: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clip = tmp_path / "cam.mp4"
    make_face_video(clip, n_frames=16, blank_frames=4)
    settings = broker_settings(broker, topic_prefix, small_onnx)
    ensure_topics(settings.kafka, settings.topics)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for stream_id in ("cam-a", "cam-b"):
        for m in iter_stream_messages(str(clip), stream_id):
            producer.send(settings.topics.input, key=stream_id.encode(), value=encode(m))
    producer.flush()
    producer.close()
    worker = Worker(settings, build_detector(settings), build_engine(settings))
    try:
        worker.run(max_seconds=120, until=lambda w: w.stats.summaries >= 2)
    finally:
        worker.close()
    topic = settings.topics.expressions

    with Subscriber(broker.bootstrap, topic) as sub:
        published = [r.event for r in sub.iter(timeout_s=30, idle_s=2)]
    frames = [e for e in published if isinstance(e, FrameEvent)]
    assert len(frames) == 32 and sum(isinstance(e, StreamSummary) for e in published) == 2
    n_faces = sum(len(f.faces) for f in frames)
    faceless = sum(1 for f in frames if not f.faces)
    assert n_faces >= 16 and faceless >= 8, "faces on the face frames, none on the 4 blank ones of each stream"
    expected = _sorted(events_to_pandas(published))
    assert len(expected) == n_faces + faceless

    out = tmp_path / "x.parquet"
    argv = ["tail", topic, "--bootstrap", broker.bootstrap, "--from-beginning", "--idle", "2", "--timeout", "30"]
    assert main([*argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "", "with --out nothing is printed"
    assert f"wrote {n_faces + faceless} rows (32 frames, {n_faces} faces) to {out}" in captured.err
    from_tail = pd.read_parquet(out)
    assert list(from_tail.columns) == column_names()
    pd.testing.assert_frame_equal(_sorted(from_tail), expected)

    with Subscriber(broker.bootstrap, topic) as sub:
        df = sub.to_pandas(idle_s=2, timeout_s=30)
    pd.testing.assert_frame_equal(_sorted(df), expected)

    # the stop rules and the stream filter
    with Subscriber(broker.bootstrap, topic) as sub:
        one = sub.to_arrow(stream_id="cam-b", max_events=5, timeout_s=30)
    assert set(one.column("stream_id").to_pylist()) == {"cam-b"}
    assert len(set(one.column("frame_seq").to_pylist())) == 5
    assert main([*argv, "--max", "3", "--out", str(tmp_path / "three.parquet")]) == 0
    assert "3 frames" in capsys.readouterr().err
    # --config: the settings' kafka section connects (bootstrap here; SASL/SSL/mTLS the same way)
    cfg = tmp_path / "kafka.yaml"
    cfg.write_text(f"kafka:\n  bootstrap: {broker.bootstrap}\n")
    by_config = ["tail", topic, "--config", str(cfg), "--from-beginning", "--idle", "2", "--timeout", "30"]
    assert main([*by_config, "--max", "2", "--out", str(tmp_path / "two.parquet")]) == 0
    assert "2 frames" in capsys.readouterr().err
