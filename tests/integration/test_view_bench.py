"""`expnet-stream bench view --quick` end to end on the embedded broker (a worker process, the view command, an
MJPEG client): the files and their fields, not the timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expnet_stream.bench import run_scenario
from expnet_stream.models.weights import default_model_path
from tests.conftest import make_face_video

pytestmark = pytest.mark.integration


def test_view_bench_quick(tmp_path: Path) -> None:
    video = tmp_path / "faces.mp4"
    make_face_video(video, n_frames=100, blank_frames=2, size=(640, 360), gop=25)
    result, json_path, png_path = run_scenario(
        "view", tmp_path / "out", quick=True, progress=False, video=str(video), onnx=default_model_path()
    )
    assert json_path == tmp_path / "out" / "view.json" and png_path.stat().st_size > 1000
    data = json.loads(json_path.read_text())
    assert data["summary"]["watched_streams"] == result["summary"]["watched_streams"] == 1
    summary = data["summary"]
    assert summary["watched_streams"] == 1 and summary["capacity_frames_per_s"] > 0
    half = data["samples"]["half_load"]
    (stream,) = half["streams"]
    assert stream["error"] is None and stream["pictures"] >= 5, stream
    assert stream["pictures_with_faces"] >= 1  # drawn from the worker's events
    assert 0 < stream["delay"]["p50_ms"] < 5000 and len(stream["delays_ms"]) == stream["pictures"]
    assert half["view_cpu_s"] > 0 and not half["ingest_errors"]
    assert set(summary["meets"]) == {"pictures_per_s", "delay_p95_s", "cpu_share_per_stream"}
