"""Timeline plot from a `run`-style output file made here: valid PNG, with and without emotions, jsonl and msgpack."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from expnet_stream.aggregate import WindowAggregator, WindowSpec
from expnet_stream.aggregate.plot import load_events, plot_timeline
from expnet_stream.errors import ConfigError, SchemaError
from expnet_stream.events.aggregate_schema import EmotionAggregate
from expnet_stream.events.codec import encode, to_jsonable
from expnet_stream.events.schema import Face, FrameEvent, StreamSummary, pack_coeffs

pytestmark = pytest.mark.unit

pytest.importorskip("matplotlib", reason="the timeline plot needs matplotlib (pip install 'expnet-stream[plot]')")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["neutral", "happy", "sad", "surprise"]


def frame_events(n: int = 60, *, emotions: bool, stream: str = "cam") -> list[FrameEvent]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        t = i / 20
        faces = []
        boxes = [(100 + i, 80, 180 + i, 160)] + ([(400, 80, 470, 150)] if 10 <= i < 40 else [])
        for b in boxes:
            probs = None
            if emotions:
                p = rng.dirichlet(np.ones(4))
                p[1 if t < 1.5 else 3] += 2
                probs = dict(zip(LABELS, (p / p.sum()).tolist(), strict=True))
            faces.append(
                Face(
                    track_id=-1,
                    box=b,
                    score=0.9,
                    coeffs=pack_coeffs(np.sin(t) + 0.05 * rng.standard_normal(29)),
                    emotions=probs,
                )
            )
        out.append(
            FrameEvent(
                event_id=f"{stream}:{i}",
                stream_id=stream,
                frame_seq=i,
                pts=i,
                time_base=(1, 20),
                pts_time=t,
                capture_time=0.0,
                publish_time=0.0,
                width=640,
                height=480,
                model_id="expnet_resnet18@UNTRAINED-test",
                model_trained=False,
                basis_id="none/untrained",
                faces=faces,
            )
        )
    return out


def write_jsonl(path: Path, events: list) -> Path:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(to_jsonable(e)) + "\n" for e in events))
    return path


def test_timeline_png_with_emotions(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "run.jsonl", frame_events(emotions=True))
    events = load_events(src)
    assert len(events) == 60 and isinstance(events[0], FrameEvent)
    summary = plot_timeline(events, "cam", tmp_path / "t.png", bin_s=0.5, dpi=40)
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG_MAGIC
    assert summary.has_emotions and summary.windows == 6 and summary.windows_from == "frames"
    assert summary.tracks == [0, 1] and summary.tracks_assigned_offline
    assert summary.jitter_raw is not None and summary.jitter_smoothed is not None
    assert summary.jitter_smoothed < summary.jitter_raw


def test_timeline_without_emotions_says_so(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "run.jsonl", frame_events(emotions=False))
    summary = plot_timeline(load_events(src), None, tmp_path / "t.png", dpi=40)
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG_MAGIC
    assert not summary.has_emotions and "no emotions in the events" in summary.notes
    assert "untrained model" in summary.notes


def test_timeline_from_msgpack_with_aggregates(tmp_path: Path) -> None:
    frames = frame_events(emotions=True)
    agg = WindowAggregator([WindowSpec.tumbling(1.0)], frames[0].model_id, labels=LABELS, per_track=False)
    aggs = []
    for ev in frames:
        c = np.array([f.coefficients for f in ev.faces])
        e = np.array([[f.emotions[k] for k in LABELS] for f in ev.faces if f.emotions])
        aggs += agg.on_frame("cam", ev.pts_time, [-1] * len(ev.faces), c, e)
    aggs += agg.flush("cam")
    summary_ev = StreamSummary(
        event_id="cam:summary",
        stream_id="cam",
        packets=60,
        packets_skipped=0,
        frames_decoded=60,
        frames_sampled=60,
        frames_with_faces=60,
        faces=90,
        model_id="m",
        publish_time=0.0,
    )
    src = tmp_path / "run.msgpack"
    src.write_bytes(b"".join(encode(e) for e in [*frames, *aggs, summary_ev]))
    events = load_events(src)
    assert len(events) == 60 + 3 + 1
    summary = plot_timeline(events, "cam", tmp_path / "t.png", dpi=40)
    assert summary.windows_from == "aggregates" and summary.windows == 3
    # the same aggregates written as JSON lines (coefficients as base64 bytes or as float lists) read back
    back = load_events(write_jsonl(tmp_path / "agg.jsonl", aggs))
    assert len(back) == len(aggs)
    for b, a in zip(back, aggs, strict=True):
        assert isinstance(b, EmotionAggregate)
        assert b.model_dump(exclude={"coeff_mean", "coeff_std"}) == a.model_dump(exclude={"coeff_mean", "coeff_std"})
        np.testing.assert_allclose(b.mean_coefficients, a.mean_coefficients, atol=1e-5)
        np.testing.assert_allclose(b.std_coefficients, a.std_coefficients, atol=1e-5)


def test_cli_register_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from expnet_stream.cli.timeline_cmd import register

    src = write_jsonl(tmp_path / "run.jsonl", frame_events(emotions=False, n=30))
    parser = argparse.ArgumentParser(prog="expnet-stream")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["timeline", str(src), "--stream", "cam", "--out", str(tmp_path / "o.png"), "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 30 and report["emotions"] is False
    assert (tmp_path / "o.png").read_bytes()[:8] == PNG_MAGIC


def test_errors_name_the_problem(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "run.jsonl", frame_events(emotions=False, n=5))
    with pytest.raises(ConfigError, match="no frame events for stream 'other'"):
        plot_timeline(load_events(src), "other", tmp_path / "t.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"v": 1, "type": "frame", "stream_id": "x"}\n')
    with pytest.raises(SchemaError, match=r"bad\.jsonl:1"):
        load_events(bad)
    with pytest.raises(ConfigError):
        load_events(tmp_path / "missing.jsonl")
