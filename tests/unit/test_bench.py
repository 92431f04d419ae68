"""Pure pieces of the benchmarks: statistics, result schema, stream ids, the expression fit, verdicts, the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from expnet_stream.bench.common import (
    RESULT_KEYS,
    RESULT_SCHEMA,
    check_result,
    finish_result,
    latency_summary,
    median,
    new_result,
    percentile,
    ratio,
    rounded,
    time_repeats,
    write_json,
)
from expnet_stream.bench.crowd import face_counts
from expnet_stream.bench.data import balanced_stream_ids, batch_of, grid_cells, tile_frame
from expnet_stream.bench.expression_fit import DLIB68_TO_MP478, ExpressionFitter
from expnet_stream.bench.harness import FrameRecord, RunResult
from expnet_stream.bench.pipeline import BOUND_STAGES, gap_breakdown, run_metrics, stage_bound, summarize
from expnet_stream.bench.scaling import keeps_up
from expnet_stream.errors import ConfigError

pytestmark = pytest.mark.unit


def test_percentile_and_median() -> None:
    assert percentile([], 50) is None
    assert median([5.0]) == 5.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5


def test_ratio_guards() -> None:
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(None, 3.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None
    assert ratio(float("nan"), 1.0) is None


def test_latency_summary_in_ms() -> None:
    s = latency_summary([0.010] * 98 + [0.5, 1.0])
    assert s["n"] == 100
    assert s["p50_ms"] == pytest.approx(10.0)
    assert s["max_ms"] == pytest.approx(1000.0)
    assert s["p99_ms"] is not None and s["p99_ms"] > s["p95_ms"]  # type: ignore[operator]
    assert latency_summary([])["p50_ms"] is None


def test_rounded_recurses() -> None:
    assert rounded({"a": [1.23456, {"b": 2.0000001}], "c": "x"}, 2) == {"a": [1.23, {"b": 2.0}], "c": "x"}
    assert rounded(float("inf")) == float("inf")


def test_time_repeats_counts_calls() -> None:
    calls = []
    out = time_repeats(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(out) == 3 and len(calls) == 5
    assert all(t >= 0 for t in out)


def test_result_schema_round_trip(tmp_path: Path) -> None:
    result = new_result("demo", True, {"x": 1})
    result["samples"]["a"] = [1.0, 2.0]
    result["summary"]["m"] = 1.5
    result = finish_result(result)
    assert check_result(result) == []
    assert result["seconds"] is not None and "_t0" not in result
    path = write_json(result, tmp_path / "demo.json")
    back = json.loads(path.read_text())
    assert back["schema"] == RESULT_SCHEMA
    assert set(RESULT_KEYS) <= set(back)
    assert back["machine"]["cores"] >= 1 and "numpy" in back["versions"]


def test_check_result_reports_problems() -> None:
    problems = check_result({"scenario": "x", "schema": "other", "params": []})
    assert any("missing key 'summary'" in p for p in problems)
    assert any("schema" in p for p in problems)
    assert "params must be an object" in problems


def test_balanced_stream_ids_spread_over_partitions() -> None:
    from kafka.partitioner.default import murmur2

    ids = balanced_stream_ids(8, 4, prefix="t-")
    parts = [(murmur2(i.encode()) & 0x7FFFFFFF) % 4 for i in ids]
    assert sorted(parts) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(set(ids)) == 8


def test_batch_of_cycles() -> None:
    crops = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)
    assert batch_of(crops, 6, start=3).ravel().tolist() == [3, 0, 1, 2, 3, 0]


def test_expression_fit_recovers_coefficients_under_pose() -> None:
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(478, 3))
    comps = 0.05 * rng.normal(size=(29, 478, 3))
    fitter = ExpressionFitter(mean, comps, np.ones(29), ridge=1e-8, iterations=5)
    truth = 0.5 * rng.normal(size=29)
    angle = 0.3
    rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    pts = 40.0 * (fitter.shape(truth) @ rot.T)[:, :2] + np.array([120.0, 90.0])
    res = fitter.fit(pts)
    assert res.coeffs.shape == (29,)
    assert res.rms_px < 0.5
    assert np.abs(res.coeffs - truth).max() < 0.1


def test_expression_fit_checks_shapes() -> None:
    from expnet_stream.errors import ModelError

    assert len(DLIB68_TO_MP478) == 68 and max(DLIB68_TO_MP478) < 478
    with pytest.raises(ModelError):
        ExpressionFitter(np.zeros((478, 3)), np.zeros((29, 470, 3)), np.ones(29))
    fitter = ExpressionFitter(np.zeros((478, 3)), np.zeros((29, 478, 3)), np.ones(29))
    with pytest.raises(ValueError, match="68, 2"):
        fitter.fit(np.zeros((5, 2)))


def test_project_basis_fitter_loads() -> None:
    fitter = ExpressionFitter.from_project_basis()
    assert fitter.basis.shape == (29, 68, 3)


def _run(latencies: list[float], *, span: float = 10.0, faces: int = 1) -> RunResult:
    n = len(latencies)
    frames = [
        FrameRecord("s", faces, capture_time=100.0 + span * i / max(1, n - 1), publish_time=0.0, receive_time=0.0)
        for i in range(n)
    ]
    frames = [
        FrameRecord(f.stream_id, f.faces, f.capture_time, f.capture_time + lat * 0.9, f.capture_time + lat)
        for f, lat in zip(frames, latencies, strict=True)
    ]
    run = RunResult(frames=frames, streams=1)
    run.workers = [
        {
            "t_first_record": 100.0,
            "stage_seconds": {"decode": 1.0, "detect": 2.0, "crop": 0.5, "infer": 5.0, "publish": 0.5},
            "cpu_s_from_first_record": 12.0,
            "dead_letters": {},
        }
    ]
    return run


def test_keeps_up_verdicts() -> None:
    steady = keeps_up(_run([0.05] * 60), ingest_s=10.0)
    assert steady["keeps_up"] is True
    growing = keeps_up(_run([0.05 + 0.1 * i for i in range(60)]), ingest_s=10.0)
    assert growing["keeps_up"] is False
    assert growing["p95_last_third_s"] > growing["p95_first_third_s"]
    assert keeps_up(RunResult(), ingest_s=10.0)["keeps_up"] is False


def test_run_metrics_and_summary() -> None:
    run = _run([0.05] * 11, span=10.0, faces=2)
    m = run_metrics(run)
    assert m["frames"] == 11 and m["faces"] == 22
    assert m["elapsed_s"] == pytest.approx(10.0 + 0.045)
    assert m["stage_share_of_wall"]["infer"] == pytest.approx(5.0 / m["elapsed_s"])
    assert m["stage_share_of_wall"]["other"] == pytest.approx(1 - 9.0 / m["elapsed_s"])
    s = summarize([m], bare=[4.0, 4.4, 4.2])
    assert s["engine_efficiency"] == pytest.approx(m["faces_per_s"] / 4.2)
    assert s["limiting_stage"] == "detect"
    assert s["efficiency_ok"] is None  # no bare stage timings: no verdict on the target


def test_stage_bound_and_gap_breakdown() -> None:
    bare = {"decode": 0.002, "detect": 0.008, "crop": 0.001, "infer": 0.014}
    assert stage_bound(bare) == pytest.approx(40.0)
    assert stage_bound({**bare, "detect": None}) is None
    assert stage_bound(dict.fromkeys(BOUND_STAGES, 0.0)) is None
    inside = {"decode": 3.0, "detect": 7.0, "crop": 1.0, "infer": 20.0, "publish": 1.0}
    g = gap_breakdown(40.0, inside, {k: 1000 * v for k, v in bare.items()})
    assert g["total"] == pytest.approx(40.0 - 25.0)
    parts = g["parts"]
    assert parts["detect"] == pytest.approx(-1.0)  # faster inside than bare: a negative part
    assert parts["infer"] == pytest.approx(6.0) and parts["publish"] == pytest.approx(1.0)
    assert parts["other"] == pytest.approx(40.0 - 32.0)
    assert sum(parts.values()) == pytest.approx(g["total"])  # the parts add up to the gap
    assert sum(g["shares"].values()) == pytest.approx(1.0)
    assert g["largest"] == "other"


def test_summary_stage_sum_efficiency() -> None:
    runs = [run_metrics(_run([0.05] * 11, span=10.0, faces=2)), run_metrics(_run([0.05] * 11, span=20.0, faces=2))]
    for r in runs:
        r["detect_calls"], r["detect_frames"], r["streams_completed"] = 3, 4, 1
    bare_stages = [{"decode": 10.0, "detect": 50.0, "crop": 10.0}, {"decode": 30.0, "detect": 70.0, "crop": 10.0}]
    s = summarize(runs, bare=[4.0, 5.0, 6.0], bare_stages=bare_stages, detect_calls_per_stream=4)
    bare = s["bare_ms_per_frame"]
    assert bare["decode"] == pytest.approx(20.0) and bare["detect"] == pytest.approx(60.0)
    assert bare["infer"] == pytest.approx(1000 * 2 / 5.0)  # faces per frame / bare engine faces/s
    assert s["bound_frames_per_s"] == pytest.approx(1 / (0.02 + 0.06 + 0.01 + 0.4))
    assert s["stage_sum_efficiency"] == pytest.approx(s["pipeline_frames_per_s"] / s["bound_frames_per_s"])
    assert s["engine_efficiency"] == pytest.approx(s["pipeline_faces_per_s"] / 5.0)
    assert s["efficiency_ok"] is (s["stage_sum_efficiency"] >= 0.9)
    # pooled over both runs: 22 frames, 8.5 s of stages per run, wall = both elapsed times
    wall = 1000 * (runs[0]["elapsed_s"] + runs[1]["elapsed_s"]) / 22
    assert s["pipeline_ms_per_frame"]["wall"] == pytest.approx(wall)
    assert s["pipeline_ms_per_frame"]["infer"] == pytest.approx(1000 * 10.0 / 22)
    gap = s["gap_ms_per_frame"]
    assert gap["total"] == pytest.approx(wall - 1000 / s["bound_frames_per_s"])
    assert sum(gap["parts"].values()) == pytest.approx(gap["total"])
    assert s["stage_sum_efficiency_adjacent_per_run"] is None  # the slots have no engine rates
    slots = [{"decode": 10.0, "detect": 50.0, "crop": 10.0, "engine_faces_per_s": f} for f in (4.0, 5.0, 6.0)]
    adj = summarize(runs, bare=[4.0, 5.0, 6.0], bare_stages=slots)["stage_sum_efficiency_adjacent_per_run"]
    # run 0 between slots at 4 and 5 faces/s, run 1 between 5 and 6: bound = 1 / (0.07 s + 2 faces / mean rate)
    assert adj == pytest.approx([runs[i]["frames_per_s"] * (0.07 + 2 / f) for i, f in enumerate((4.5, 5.5))])
    assert s["detect_calls_worker"] == [3, 3]
    assert s["detect_frames_worker"] == [4, 4] and s["detect_frames_bare_schedule"] == [4, 4]


def test_grid_cells_cover_the_frame() -> None:
    for grid, (w, h) in [(3, (1280, 720)), (4, (1280, 720)), (6, (1280, 720)), (1, (64, 48))]:
        cells = grid_cells(grid, w, h)
        assert len(cells) == grid * grid
        cover = np.zeros((h, w), np.int32)
        for x0, y0, x1, y1 in cells:
            cover[y0:y1, x0:x1] += 1
            assert abs((x1 - x0) - w / grid) < 1 and abs((y1 - y0) - h / grid) < 1
        assert (cover == 1).all()  # every pixel in exactly one cell
    assert grid_cells(2, 10, 10)[1] == (5, 0, 10, 5)  # row by row


def test_tile_frame_places_each_tile_in_its_cell() -> None:
    from expnet_stream.bench.common import BenchError

    tiles = [np.full((36, 64, 3), 10 * (k + 1), np.uint8) for k in range(9)]
    out = tile_frame(tiles, 3, 1280, 720)
    assert out.shape == (720, 1280, 3) and out.dtype == np.uint8
    for k, (x0, y0, x1, y1) in enumerate(grid_cells(3, 1280, 720)):
        assert (out[y0:y1, x0:x1] == 10 * (k + 1)).all()
    with pytest.raises(BenchError, match="needs 9 tiles"):
        tile_frame(tiles[:4], 3, 1280, 720)
    with pytest.raises(BenchError):
        grid_cells(0, 1280, 720)


def test_face_counts_against_tiles() -> None:
    from types import SimpleNamespace as NS

    def frame(n: int, small: int = 0) -> NS:
        return NS(faces=[NS(quality=["small_face"] if i < small else []) for i in range(n)])

    c = face_counts([frame(16, 4), frame(12), frame(16)], 16)  # type: ignore[list-item]
    assert c["faces_per_frame"] == pytest.approx(44 / 3)
    assert c["tile_recall"] == pytest.approx(44 / 48)
    assert c["frames_with_every_tile"] == pytest.approx(2 / 3)
    assert c["faces_per_frame_min"] == 12 and c["small_face_share"] == pytest.approx(4 / 44)
    assert face_counts([], 9)["tile_recall"] is None


def test_crowd_is_a_scenario_with_a_chart() -> None:
    from expnet_stream.bench import SCENARIOS
    from expnet_stream.bench.charts import CHARTS

    assert "crowd" in SCENARIOS and "crowd" in CHARTS


def test_bench_cli_registers_and_parses_env() -> None:
    from expnet_stream.cli.bench_cmd import _env_pairs, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "pipeline", "--quick", "--out", "x", "--worker-env", "OMP_WAIT_POLICY=PASSIVE"])
    assert args.scenario == "pipeline" and args.quick and args.out == "x"
    assert _env_pairs(args.worker_env) == {"OMP_WAIT_POLICY": "PASSIVE"}
    with pytest.raises(ConfigError):
        _env_pairs(["nope"])


def test_unknown_scenario_is_refused(tmp_path: Path) -> None:
    from expnet_stream.bench import BenchError, run_scenario

    with pytest.raises(BenchError, match="unknown scenario"):
        run_scenario("nope", tmp_path)


def test_charts_render_small_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from expnet_stream.bench.charts import chart_pipeline

    result = new_result("pipeline", True, {})
    result["summary"] = summarize([run_metrics(_run([0.05] * 11))], bare=[4.0])
    path = chart_pipeline(finish_result(result), tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < 150_000


def test_charts_pipeline_bound_and_crowd(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from expnet_stream.bench.charts import chart_crowd, chart_pipeline
    from expnet_stream.bench.crowd import summarize as crowd_summary

    result = new_result("pipeline", True, {})
    bare_stages = [{"decode": 10.0, "detect": 50.0, "crop": 10.0}]
    result["summary"] = summarize([run_metrics(_run([0.05] * 11))], bare=[4.0], bare_stages=bare_stages)
    path = chart_pipeline(finish_result(result), tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 150_000

    shares = {"decode": 0.1, "detect": 0.3, "crop": 0.05, "infer": 0.5, "publish": 0.0, "other": 0.05}
    one = {
        "frames": 10,
        "faces": 90,
        "seconds": 1.0,
        "frames_per_s": 10.0,
        "faces_per_s": 90.0,
        "detect_calls": 4,
        "stage_seconds": {"detect": 0.3},
        "stage_share_of_wall": shares,
    }
    samples = {"3x3 default": [one], "3x3 every frame": [{**one, "detect_calls": 10, "frames_per_s": 8.0}]}
    counts = {k: {"faces_per_frame": 9.0, "tile_recall": 1.0} for k in samples}
    result = new_result("crowd", True, {})
    result["summary"] = crowd_summary(samples, counts, (3,))
    assert result["summary"]["default_vs_every_frame"]["3x3"] == pytest.approx(10 / 8)
    assert result["summary"]["table"]["3x3 default"]["detect_ms_per_call"] == pytest.approx(75.0)
    path = chart_crowd(finish_result(result), tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 150_000
