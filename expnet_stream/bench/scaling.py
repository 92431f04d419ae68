"""Scenario ``scaling``: streams per worker at a sampling rate, and 1 vs 2 worker processes.

Streams per worker: ``k`` streams of the real face video (24 fps, every frame decoded) ingested in real time, the
worker sampling ``sample_fps`` frames per second per stream, so the offered load is ``k * sample_fps`` frames/s of
detection and inference plus ``k * 24`` frames/s of decoding. ``k`` grows until the worker falls behind: it keeps
up while it finishes the frames within ``keep_up_ratio`` of the ingest duration and the p95 latency of the last
third of the frames is not more than ``growth_limit_s`` above that of the first third (latency that keeps growing is
a queue without bound). The largest ``k`` that keeps up is the streams-per-worker figure.

1 vs 2 processes: the same backlog (fast ingest) processed by one worker (ONNX Runtime on every core) and by two
workers of one consumer group (one ORT thread each), alternating A, B, A, B. Ratio = B frames/s / A frames/s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .common import Progress, cpu_count, median, new_result, percentile, ratio
from .data import DEFAULT_MODEL, QUICK_MODEL, balanced_stream_ids, default_video, resolve, video_info
from .harness import BrokerBench, RunResult, StreamSpec
from .pipeline import run_metrics

log = logging.getLogger(__name__)

KEEP_UP_RATIO = 0.95
GROWTH_LIMIT_S = 1.0


def keeps_up(res: RunResult, ingest_s: float) -> dict[str, Any]:
    """Whether a realtime run kept up with its offered load, and the numbers behind the verdict."""
    frames = sorted(res.frames, key=lambda f: f.capture_time)
    if not frames:
        return {"keeps_up": False, "reason": "no events"}
    lat = [f.receive_time - f.capture_time for f in frames]
    third = max(1, len(lat) // 3)
    first, last = percentile(lat[:third], 95) or 0.0, percentile(lat[-third:], 95) or 0.0
    finish = max(f.publish_time for f in frames) - frames[0].capture_time
    ratio_done = ratio(ingest_s, finish) or 0.0
    ok = ratio_done >= KEEP_UP_RATIO and (last - first) <= GROWTH_LIMIT_S and not res.timed_out
    return {
        "keeps_up": ok,
        "ingest_over_processing_time": ratio_done,
        "p95_first_third_s": first,
        "p95_last_third_s": last,
        "p50_ms": 1000 * (percentile(lat, 50) or 0.0),
        "p95_ms": 1000 * (percentile(lat, 95) or 0.0),
        "frames": len(frames),
        "timed_out": res.timed_out,
    }


def run(
    quick: bool = False,
    *,
    progress: bool = True,
    workdir: Path,
    worker_env: dict[str, str] | None = None,
    sample_fps: float = 5.0,
    video: str | None = None,
    onnx: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    model = QUICK_MODEL if quick else DEFAULT_MODEL
    video = video or str(default_video())
    info = video_info(video)
    seconds = 3.0 if quick else 12.0
    packets = int(seconds * float(info["fps"]))
    ladder = (1, 2) if quick else (1, 2, 3, 4, 6, 8, 12, 16)
    ab_rounds = 1 if quick else 2
    backlog_streams, backlog_packets = (2, 24) if quick else (4, 120)
    threads = cpu_count()
    params = {
        "model": model,
        "video": info,
        "sample_fps": sample_fps,
        "seconds_per_level": seconds,
        "ladder": list(ladder),
        "keep_up_ratio": KEEP_UP_RATIO,
        "growth_limit_s": GROWTH_LIMIT_S,
        "processes_backlog_streams": backlog_streams,
        "processes_backlog_packets": backlog_packets,
        "processes_rounds": ab_rounds,
        "worker_env": worker_env or {},
    }
    result = new_result("scaling", quick, params)
    model, onnx_path = resolve(model, onnx)
    result["params"]["model"], result["params"]["onnx"] = model, str(onnx_path)
    levels: list[dict[str, Any]] = []
    ab: dict[str, list[dict[str, Any]]] = {"1 process": [], "2 processes": []}
    partitions = 4
    with (
        Progress("scaling", total=len(ladder) + 2 * ab_rounds, enabled=progress) as bar,
        BrokerBench(workdir / "scaling") as bb,
    ):
        for k in ladder:
            ids = balanced_stream_ids(k, partitions, prefix=f"sc{k}-")
            res = bb.run(
                [StreamSpec(video, sid, packets) for sid in ids],
                onnx_path,
                partitions=partitions,
                realtime=True,
                timeout_s=seconds + (30 if quick else 90),
                env=worker_env,
                progress=bar,
                sample_fps=sample_fps,
                threads=threads,
            )
            verdict = keeps_up(res, seconds)
            verdict.update(
                streams=k, offered_frames_per_s=k * sample_fps, stages=run_metrics(res)["stage_share_of_wall"]
            )
            levels.append(verdict)
            bar.advance(f"{k} streams: {'ok' if verdict['keeps_up'] else 'behind'}")
            if not verdict["keeps_up"]:
                break
        ids = balanced_stream_ids(backlog_streams, partitions, prefix="ab-")
        specs = [StreamSpec(video, sid, backlog_packets) for sid in ids]
        for r in range(ab_rounds):
            for name, workers, t in (("1 process", 1, threads), ("2 processes", 2, max(1, threads // 2))):
                res = bb.run(
                    specs,
                    onnx_path,
                    workers=workers,
                    partitions=partitions,
                    timeout_s=60 if quick else 300,
                    env=worker_env,
                    progress=bar,
                    threads=t,
                )
                m = run_metrics(res)
                m["intra_op_threads"] = t
                ab[name].append(m)
                bar.advance(f"{name} round {r + 1}")
    ok = [lv["streams"] for lv in levels if lv["keeps_up"]]
    one = median([m["frames_per_s"] for m in ab["1 process"] if m["frames_per_s"]])
    two = median([m["frames_per_s"] for m in ab["2 processes"] if m["frames_per_s"]])
    result["samples"] = {"levels": levels, "processes": ab}
    result["summary"] = {
        "streams_per_worker": max(ok) if ok else 0,
        "first_failing_streams": next((lv["streams"] for lv in levels if not lv["keeps_up"]), None),
        "sample_fps": sample_fps,
        "one_process_frames_per_s": one,
        "two_processes_frames_per_s": two,
        "two_vs_one_process": ratio(two, one),
    }
    if not any(not lv["keeps_up"] for lv in levels):
        result["notes"].append(f"the worker kept up at every tried level up to {ladder[-1]} streams")
    result["notes"] += [
        "each process of the 2-process run has intra_op_threads = cores / 2; the 1-process run uses every core",
        "a machine with N cores shared by broker, ingest and subscriber: the 2-process gain is bounded by them",
    ]
    return result
