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
    assert 0 < s["pipeline_efficiency"] < 10
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
