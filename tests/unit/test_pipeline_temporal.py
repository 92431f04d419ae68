"""The pipeline with the temporal stage: track ids and smoothed coefficients in frame events, aggregates emitted
in order (before the stream summary), windows closed on revoke; raw coefficients unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expnet_stream import plugin_registry
from expnet_stream.aggregate import StreamTemporal, TemporalSettings
from expnet_stream.engines.onnxruntime_engine import OrtEngine
from expnet_stream.events.aggregate_schema import EmotionAggregate
from expnet_stream.events.schema import FrameEvent, StreamSummary
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.pipeline import Pipeline, Source
from tests.conftest import make_face_video

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("temporal") / "a.mp4"
    make_face_video(path, n_frames=30, blank_frames=4)
    return path


def _pipeline(onnx: Path, temporal: StreamTemporal | None) -> tuple[Pipeline, list[object]]:
    engine = OrtEngine(onnx, max_batch=8, intra_op_threads=1)
    events: list[object] = []
    pipe = Pipeline(
        plugin_registry.create("face_detector", "yunet"),
        engine,
        emit=lambda ev, _s: events.append(ev),
        done=lambda _s: None,
        max_batch=8,
        max_wait_ms=1e9,
        temporal=temporal,
    )
    return pipe, events


def test_pipeline_emits_tracks_smoothed_and_aggregates(small_onnx: Path, video: Path) -> None:
    settings = TemporalSettings.model_validate(  # detection on every frame: the raw coefficients must not move
        {"windows": [{"kind": "tumbling", "size_s": 0.4}], "allowed_lateness_s": 0.0, "tracker": {"detect_every_n": 1}}
    )
    pipe, events = _pipeline(small_onnx, StreamTemporal(settings, "m"))
    for i, msg in enumerate(iter_stream_messages(str(video), "cam")):
        pipe.handle(msg, Source(0, i))
        pipe.pump()
    pipe.pump(force=True)
    frames = [e for e in events if isinstance(e, FrameEvent)]
    aggs = [e for e in events if isinstance(e, EmotionAggregate)]
    assert len(frames) == 30
    faces = [f for e in frames for f in e.faces]
    assert faces and {f.track_id for f in faces} == {0}
    assert all(f.coeffs_smoothed is not None for f in faces)
    # aggregates: every frame once in the stream windows; all of them before the summary
    assert sum(a.frames for a in aggs if a.track_id == -1) == 30
    assert isinstance(events[-1], StreamSummary)
    assert {a.closed_by for a in aggs} == {"watermark", "end_of_stream"}

    # without the temporal stage: same raw coefficients, no track ids, no aggregates
    plain, plain_events = _pipeline(small_onnx, None)
    for i, msg in enumerate(iter_stream_messages(str(video), "cam")):
        plain.handle(msg, Source(0, i))
    plain.pump(force=True)
    plain_faces = [f for e in plain_events if isinstance(e, FrameEvent) for f in e.faces]
    assert {f.track_id for f in plain_faces} == {-1}
    assert not any(isinstance(e, EmotionAggregate) for e in plain_events)
    for f, g in zip(faces, plain_faces, strict=True):
        np.testing.assert_allclose(f.coefficients, g.coefficients, atol=1e-4)


def test_close_windows_on_revoke(small_onnx: Path, video: Path) -> None:
    pipe, events = _pipeline(small_onnx, StreamTemporal(TemporalSettings(), "m"))
    msgs = list(iter_stream_messages(str(video), "cam"))[:-1]  # no end of stream
    for i, msg in enumerate(msgs):
        pipe.handle(msg, Source(3, i))
    pipe.pump(force=True)
    assert not any(isinstance(e, EmotionAggregate) for e in events)
    assert pipe.close_windows({1}) == 0  # another partition: nothing
    n = pipe.close_windows({3})
    revoked = [e for e in events if isinstance(e, EmotionAggregate)]
    assert n == len(revoked) > 0 and {a.closed_by for a in revoked} == {"revoke"}
    assert pipe.close_windows({3}) == 0  # never twice


def test_detect_every_n_carries_tracks_between_detections(small_onnx: Path, video: Path) -> None:
    """tracker.detect_every_n=3: the detector runs on every third sampled frame and when a trigger fires; frames
    between get the track's predicted box (flagged 'predicted') with the same track id."""
    settings = TemporalSettings.model_validate({"tracker": {"detect_every_n": 3}})
    pipe, events = _pipeline(small_onnx, StreamTemporal(settings, "m"))
    for i, msg in enumerate(iter_stream_messages(str(video), "cam")):
        pipe.handle(msg, Source(0, i))
        pipe.pump()
    pipe.pump(force=True)
    frames = [e for e in events if isinstance(e, FrameEvent)]
    assert len(frames) == 30
    reasons = pipe.detect_reasons
    assert reasons["schedule"] == 10  # frames 0, 3, ..., 27; triggers add the rest
    assert pipe.stages.calls["detect"] == sum(reasons.values()) < 30
    # the face appears at frame 4, where x264 put a keyframe (its own scene-cut detection): detected there, not at
    # the next scheduled frame
    with_face = [e.frame_seq for e in frames if e.faces]
    assert with_face == list(range(4, 30)) and reasons["keyframe"] >= 1
    detected = {e.frame_seq for e in frames if e.faces and "predicted" not in e.faces[0].quality}
    assert {s for s in range(6, 30) if s % 3 == 0} <= detected and len(detected) < 26
    assert {f.track_id for e in frames for f in e.faces} == {0}
