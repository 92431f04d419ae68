"""The `expnet-stream` commands as a user runs them: ingest, tail, run, demo, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expnet_stream.cli.main import main
from expnet_stream.client import Subscriber
from expnet_stream.events.schema import StreamEnd, StreamStart, VideoPacket
from expnet_stream.kafka.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_ingest_publishes_start_packets_end_with_extradata_on_keyframes(
    broker: EmbeddedBroker, topic_prefix: str, face_video: tuple[Path, list[bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    video, has_face = face_video
    topic = f"{topic_prefix}.video"
    rc = main(
        [
            "ingest",
            str(video),
            str(video),
            "--stream-id",
            "s1",
            "--stream-id",
            "s2",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            topic,
            "--create-topics",
        ]
    )
    assert rc == 0
    with Subscriber(broker.bootstrap, topic, dedupe=False) as sub:
        assert sub._consumer.config["fetch_max_wait_ms"] == 20  # bounds the delivery hop on Tansu (bench latency)
        got = [r.event for r in sub.iter(timeout_s=20, idle_s=3)]
    for sid in ("s1", "s2"):
        msgs = [m for m in got if getattr(m, "stream_id", None) == sid]
        assert isinstance(msgs[0], StreamStart) and msgs[0].codec == "h264" and msgs[0].extradata
        assert isinstance(msgs[-1], StreamEnd) and msgs[-1].packets == len(has_face)
        packets = [m for m in msgs if isinstance(m, VideoPacket)]
        assert [p.seq for p in packets] == list(range(len(has_face)))
        assert packets[0].keyframe
        assert all((p.extradata is not None) == p.keyframe for p in packets)
    assert "36 packets" in capsys.readouterr().err


def test_run_writes_one_event_per_frame_without_a_broker(
    tmp_path: Path, small_onnx: Path, face_video: tuple[Path, list[bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    video, has_face = face_video
    cfg = tmp_path / "w.yaml"
    cfg.write_text(f"model:\n  onnx: {small_onnx}\n")
    out = tmp_path / "events.jsonl"
    assert main(["run", str(video), "--config", str(cfg), "--out", str(out), "--json"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    frames = [x for x in lines if x["type"] == "frame"]
    assert len(frames) == len(has_face) and lines[-1]["type"] == "stream_summary"
    assert all(len(f["coeffs"]) == 29 for fr in frames for f in fr["faces"])
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["frame_events"] == len(has_face) and summary["model_trained"] is False


def test_demo_json_summary_on_a_face_video(
    tmp_path: Path, small_onnx: Path, face_video: tuple[Path, list[bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's demo path (embedded broker, ingest, worker, subscriber) on a generated face video."""
    video, has_face = face_video
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(
        "kafka:\n  session_timeout_ms: 3000\n  heartbeat_interval_ms: 500\n"
        f"model:\n  onnx: {small_onnx}\nbatch:\n  max_batch: 8\n  max_wait_ms: 20\n"
    )
    rc = main(["demo", str(video), "--config", str(cfg), "--json", "--fast", "--streams", "2", "--timeout", "120"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0, summary
    assert summary["ok"] is True and summary["streams_completed"] == 2
    assert summary["events_received"] == summary["frames_sampled"] == summary["events_published"] == 2 * len(has_face)
    assert summary["frames_ingested"] == 2 * len(has_face)
    assert summary["faces"] >= 0.9 * 2 * sum(has_face)
    assert summary["model_trained"] is False and "UNTRAINED" in summary["warning"]
    assert summary["latency_s"]["p50"] is not None and summary["throughput_frames_per_s"] > 0
    assert summary["aggregates_received"] > 0
    assert set(summary["stages"]) == {"decode", "detect", "crop", "infer", "publish"}


def test_schema_check_passes_on_the_committed_schemas() -> None:
    assert main(["schema", "--check"]) == 0


def test_config_show_masks_secrets(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPNET_KAFKA__SASL_PASSWORD", "s3cr3t-value")
    assert main(["config", "show", "--config", "configs/worker.yaml"]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t-value" not in out and "**********" in out and "yunet" in out


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("batch:\n  max_batch: -3\n")
    assert main(["config", "show", "--config", str(cfg)]) == 2
    assert "batch.max_batch" in capsys.readouterr().err
