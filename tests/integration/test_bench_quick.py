"""`expnet-stream bench` scenarios in --quick mode, end to end on the embedded broker: files and fields, no timings.

Performance is never asserted: these runs only prove the scenarios run, stop their processes and write sane results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from expnet_stream.bench import run_scenario
from expnet_stream.bench.common import RESULT_SCHEMA, check_result

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _needs_matplotlib() -> None:
    pytest.importorskip("matplotlib", reason="charts need matplotlib (dev extra)")


def _check_files(out: Path, name: str) -> dict:
    data = json.loads((out / f"{name}.json").read_text())
    assert check_result(data) == [], data
    assert data["schema"] == RESULT_SCHEMA and data["scenario"] == name and data["quick"] is True
    png = (out / f"{name}.png").read_bytes()
    assert png[:8] == PNG and 1_000 < len(png) < 150_000
    return data


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_engine_pipeline_decode_quick(tmp_path: Path, face_video: tuple[Path, list[bool]], small_onnx: Path) -> None:
    video = str(face_video[0])
    env = {"OMP_NUM_THREADS": "1"}  # as the fleet tests: a native detector's OpenMP threads stay out of the way

    run_scenario("engine", tmp_path, quick=True, progress=False, video=video, onnx=small_onnx)
    engine = _check_files(tmp_path, "engine")
    (row,) = engine["summary"]["table"].values()
    assert row["engine"] == "onnxruntime" and row["variant"] == "expnet_resnet18.s112"
    assert all(_positive(v) for v in row["faces_per_s"].values())
    assert set(row["faces_per_s"]) == {"1", "4"}

    run_scenario("pipeline", tmp_path, quick=True, progress=False, video=video, onnx=small_onnx, worker_env=env)
    pipe = _check_files(tmp_path, "pipeline")
    (one,) = pipe["samples"]["runs"]
    assert one["streams_completed"] == 1 and not one["timed_out"]
    assert one["frames"] == len(face_video[1])  # one event per frame, faces or not
    assert one["faces"] >= sum(face_video[1]) - 2
    s = pipe["summary"]
    assert _positive(s["pipeline_faces_per_s"]) and _positive(s["bare_engine_faces_per_s"])
    assert 0 < s["engine_efficiency"] < 10
    assert _positive(s["bound_frames_per_s"]) and 0 < s["stage_sum_efficiency"] < 10
    assert set(s["bare_ms_per_frame"]) == {"decode", "detect", "crop", "infer"}
    assert all(_positive(v) for v in s["bare_ms_per_frame"].values())
    gap = s["gap_ms_per_frame"]
    assert math.isclose(sum(gap["parts"].values()), gap["total"], abs_tol=1e-3)
    # the bare detect stage runs on exactly the frames the worker detected on
    assert s["detect_frames_worker"] == s["detect_frames_bare_schedule"]
    shares = s["stage_share_of_wall"]
    assert set(shares) == {"decode", "detect", "crop", "infer", "publish", "other"}
    assert all(0 <= v <= 1.0001 for v in shares.values())
    assert s["limiting_stage"] in shares

    run_scenario("decode", tmp_path, quick=True, progress=False, video=video, onnx=small_onnx, worker_env=env)
    dec = _check_files(tmp_path, "decode")
    d = dec["summary"]
    for key in ("worker_decode_stage_fps", "stream_decoder_fps", "pyav_fps", "pyav_no_convert_fps"):
        assert _positive(d[key]), key
    assert dec["samples"]["worker_run"]["frames_decoded"] == len(face_video[1])


def test_crowd_quick(tmp_path: Path, face_video: tuple[Path, list[bool]], small_onnx: Path) -> None:
    run_scenario("crowd", tmp_path, quick=True, progress=False, video=str(face_video[0]), onnx=small_onnx)
    data = _check_files(tmp_path, "crowd")
    copy = data["params"]["copies"]["3x3"]
    assert (copy["width"], copy["height"], copy["frames"]) == (1280, 720, data["params"]["frames"])
    rows = data["summary"]["table"]
    assert set(rows) == {"3x3 default", "3x3 every frame"}
    for row in rows.values():
        assert row["frames"] == data["params"]["frames"] and row["tiles"] == 9
        assert _positive(row["faces_per_s"]) and _positive(row["frames_per_s"])
        assert 0 < row["detect_share_of_wall"] < 1 and 0 < row["faces_per_frame"] <= 9
    assert rows["3x3 every frame"]["detect_calls"] == data["params"]["frames"]
    assert rows["3x3 default"]["detect_calls"] < rows["3x3 every frame"]["detect_calls"]
