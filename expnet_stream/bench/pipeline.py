"""Scenario ``pipeline``: end-to-end faces/s and frames/s through the real broker, next to the bare engine.

N streams of the real face video are ingested as fast as possible into the embedded broker; one worker process
(the production :class:`~expnet_stream.worker.worker.Worker`, default settings: the default detector and detection
schedule, ONNX Runtime on all cores,
cross-stream batches of 16) turns them into events that a subscriber reads back. Throughput is counted from the
worker's first handled record to the last event's publish time. In the same run, before and after each pipeline
run, the bare engine processes the same kind of crops (the video's faces, cut by the same detector and crop rule)
at the same batch size and thread count, with ``contract.normalize`` included as in the worker's ``infer`` stage.

``pipeline efficiency = pipeline faces/s / bare engine faces/s``. Below 1 the worker spends time outside the
engine; the per-stage wall-time shares (decode, detect, crop, infer, publish, and ``other``: polling, msgpack,
commits, Python) say where.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..aggregate.settings import TrackerSettings
from ..config.settings import DetectorSettings
from ..engines import create_engine
from .common import Progress, cpu_count, median, new_result, ratio
from .data import (
    DEFAULT_MODEL,
    QUICK_MODEL,
    batch_of,
    contract_of,
    default_video,
    face_crops,
    resolve,
    video_info,
)
from .harness import BrokerBench, RunResult, StreamSpec

log = logging.getLogger(__name__)

STAGES = ("decode", "detect", "crop", "infer", "publish")


def bare_engine_fps(onnx: Path, crops: Any, batch: int, *, threads: int | None, calls: int) -> list[float]:
    """faces/s of ``normalize + infer`` on ``batch`` crops (the worker's infer stage without the worker)."""
    engine = create_engine("onnxruntime", onnx, max_batch=batch, intra_op_threads=threads)
    contract = engine.contract
    out: list[float] = []
    try:
        engine.infer(contract.normalize(batch_of(crops, batch)))  # warm-up
        for i in range(calls):
            raw = batch_of(crops, batch, start=i * batch)
            t0 = time.perf_counter()
            engine.infer(contract.normalize(raw))
            out.append(batch / (time.perf_counter() - t0))
    finally:
        engine.close()
    return out


def run_metrics(run: RunResult) -> dict[str, Any]:
    """Throughput, stage shares of the workers' wall time and CPU use of one broker run."""
    elapsed = run.elapsed_s
    frames = len(run.frames)
    stage_s = run.stage_seconds()
    workers = max(1, len(run.workers))
    wall = (elapsed or 0.0) * workers
    shares = {s: ratio(stage_s.get(s, 0.0), wall) for s in STAGES}
    known = sum(v for v in shares.values() if v is not None)
    shares["other"] = max(0.0, 1.0 - known) if wall else None
    cpu = sum(w.get("cpu_s_from_first_record") or 0.0 for w in run.workers)
    infer_s = stage_s.get("infer", 0.0)
    return {
        "frames": frames,
        "faces": run.faces,
        "frames_decoded": run.frames_decoded,
        "streams_completed": len(run.summaries),
        "timed_out": run.timed_out,
        "elapsed_s": elapsed,
        "frames_per_s": ratio(frames, elapsed),
        "faces_per_s": ratio(run.faces, elapsed),
        "decoded_frames_per_s": ratio(run.frames_decoded, elapsed),
        "stage_seconds": stage_s,
        "stage_share_of_wall": shares,
        "infer_stage_faces_per_s": ratio(run.faces, infer_s),
        "worker_cpu_cores_used": ratio(cpu, elapsed),
        "dead_letters": [w.get("dead_letters") for w in run.workers],
        "packets_ingested": run.packets_ingested,
        "ingest_seconds": run.ingest_seconds,
    }


def run(
    quick: bool = False,
    *,
    progress: bool = True,
    workdir: Path,
    worker_env: dict[str, str] | None = None,
    video: str | None = None,
    onnx: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    model = QUICK_MODEL if quick else DEFAULT_MODEL
    streams = 1 if quick else 4
    max_packets = 36 if quick else 160
    repeats = 1 if quick else 2
    max_batch = 16
    threads = cpu_count()
    video = video or str(default_video())
    params = {
        "model": model,
        "video": video_info(video),
        "streams": streams,
        "packets_per_stream": max_packets,
        "repeats": repeats,
        "max_batch": max_batch,
        "max_wait_ms": 40.0,
        "engine": "onnxruntime",
        "intra_op_threads": threads,
        "detector": DetectorSettings().name,
        "detect_every_n": TrackerSettings().detect_every_n,
        "workers": 1,
        "ingest": "as fast as possible (messages encoded before the run)",
        "worker_env": worker_env or {},
    }
    result = new_result("pipeline", quick, params)
    model, onnx_path = resolve(model, onnx)
    result["params"]["model"], result["params"]["onnx"] = model, str(onnx_path)
    contract = contract_of(onnx_path)
    crops = face_crops(contract, video=video, n_frames=8 if quick else 32)
    bare_calls = 3 if quick else 12
    runs: list[dict[str, Any]] = []
    bare: list[float] = []
    specs = [StreamSpec(video, f"pipe-{i}", max_packets) for i in range(streams)]
    with (
        Progress("pipeline", total=2 * repeats + 1, enabled=progress) as bar,
        BrokerBench(workdir / "pipeline") as bb,
    ):
        bare += bare_engine_fps(onnx_path, crops, max_batch, threads=threads, calls=bare_calls)
        bar.advance("bare engine")
        for r in range(repeats):
            res = bb.run(
                specs,
                onnx_path,
                partitions=max(2, streams),
                timeout_s=60 if quick else 300,
                env=worker_env,
                progress=bar,
                max_batch=max_batch,
                threads=threads,
            )
            runs.append(run_metrics(res))
            bar.advance(f"pipeline run {r + 1}")
            bare += bare_engine_fps(onnx_path, crops, max_batch, threads=threads, calls=bare_calls)
            bar.advance("bare engine")
    result["samples"] = {"runs": runs, "bare_engine_faces_per_s": bare}
    result["summary"] = summarize(runs, bare)
    result["notes"] += [
        "elapsed = first record handled by the worker -> last frame event published",
        "bare engine = contract.normalize + engine.infer at the same batch size and threads, same crops' source",
        "stage shares are fractions of the worker's wall time; 'other' = poll, record decode, commits, Python",
    ]
    return result


def summarize(runs: list[dict[str, Any]], bare: list[float]) -> dict[str, Any]:
    faces = median([r["faces_per_s"] for r in runs if r["faces_per_s"]])
    frames = median([r["frames_per_s"] for r in runs if r["frames_per_s"]])
    bare_fps = median(bare)
    shares = {
        s: median([r["stage_share_of_wall"][s] for r in runs if r["stage_share_of_wall"][s] is not None])
        for s in (*STAGES, "other")
    }
    eff = ratio(faces, bare_fps)
    outside = {k: v for k, v in shares.items() if k != "infer" and v is not None}
    limiting = max(outside, key=lambda k: outside[k]) if outside else None
    return {
        "pipeline_faces_per_s": faces,
        "pipeline_frames_per_s": frames,
        "bare_engine_faces_per_s": bare_fps,
        "pipeline_efficiency": eff,
        "stage_share_of_wall": shares,
        "infer_stage_vs_bare": ratio(
            median([r["infer_stage_faces_per_s"] for r in runs if r["infer_stage_faces_per_s"]]), bare_fps
        ),
        "worker_cpu_cores_used": median([r["worker_cpu_cores_used"] for r in runs if r["worker_cpu_cores_used"]]),
        "limiting_stage": limiting,
        "limiting_stage_share": outside.get(limiting) if limiting else None,
        "efficiency_ok": eff is not None and eff >= 0.9,
    }
