"""Scenario ``latency``: p50/p95/p99 frame-to-event latency at 25 %, 50 % and 90 % of measured capacity.

1. Capacity: two streams of the real face video ingested as fast as possible; frames/s the worker turns into events.
2. For each load level ``f``: two streams ingested in real time (paced by the packets' timestamps) from a copy of
   the video re-encoded at ``f * capacity / 2`` frames per second, so the offered load is ``f * capacity`` frames/s
   and the worker decodes only frames it processes (as with a camera at that frame rate).

Latency of a frame = subscriber receive time - the ingest time of the packet that completed the frame
(``capture_time``). It includes broker hops, the batch wait (``max_wait_ms``) and B-frame reordering (none in the
re-encoded copies). ``publish_latency`` stops at the worker's publish time instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .common import Progress, cpu_count, latency_summary, new_result, ratio
from .data import DEFAULT_MODEL, QUICK_MODEL, default_video, paced_copy, resolve, video_info
from .harness import BrokerBench, StreamSpec
from .pipeline import run_metrics

log = logging.getLogger(__name__)

LEVELS = (0.25, 0.5, 0.9)


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
    streams = 2
    seconds = 4.0 if quick else 20.0
    cap_packets = 36 if quick else 160
    video = video or str(default_video())
    params = {
        "model": model,
        "video": video_info(video),
        "streams": streams,
        "levels": list(LEVELS),
        "seconds_per_level": seconds,
        "capacity_packets_per_stream": cap_packets,
        "max_batch": 16,
        "max_wait_ms": 40.0,
        "intra_op_threads": cpu_count(),
        "worker_env": worker_env or {},
    }
    result = new_result("latency", quick, params)
    model, onnx_path = resolve(model, onnx)
    result["params"]["model"], result["params"]["onnx"] = model, str(onnx_path)
    levels: list[dict[str, Any]] = []
    common: dict[str, Any] = {
        "env": worker_env,
        "partitions": 2,
        "threads": cpu_count(),
        "max_batch": 16,
        "max_wait_ms": 40.0,
    }
    with Progress("latency", total=1 + len(LEVELS), enabled=progress) as bar, BrokerBench(workdir / "latency") as bb:
        cap_run = bb.run(
            [StreamSpec(video, f"cap-{i}", cap_packets) for i in range(streams)],
            onnx_path,
            timeout_s=60 if quick else 240,
            progress=bar,
            **common,
        )
        capacity = run_metrics(cap_run)
        cap_fps = capacity["frames_per_s"] or 1.0
        bar.advance(f"capacity {cap_fps:.1f} frames/s")
        for level in LEVELS:
            fps = max(0.5, level * cap_fps / streams)
            copy = paced_copy(video, fps, workdir / "paced", max_seconds=seconds)
            res = bb.run(
                [StreamSpec(str(copy), f"lat{int(level * 100)}-{i}") for i in range(streams)],
                onnx_path,
                realtime=True,
                timeout_s=seconds + (60 if quick else 120),
                progress=bar,
                **common,
            )
            lat = [f.receive_time - f.capture_time for f in res.frames]
            pub = [f.publish_time - f.capture_time for f in res.frames]
            span = (
                (max(f.capture_time for f in res.frames) - min(f.capture_time for f in res.frames)) if res.frames else 0
            )
            levels.append(
                {
                    "level": level,
                    "stream_fps": fps,
                    "offered_frames_per_s": fps * streams,
                    "achieved_frames_per_s": ratio(len(res.frames), span) if span else None,
                    "frames": len(res.frames),
                    "streams_completed": len(res.summaries),
                    "frames_sampled": sum(x.frames_sampled for x in res.summaries),
                    "timed_out": res.timed_out,
                    "latency": latency_summary(lat),
                    "publish_latency": latency_summary(pub),
                    "latencies_ms": [round(1000 * x, 2) for x in lat],
                    "stage_share_of_wall": run_metrics(res)["stage_share_of_wall"],
                }
            )
            bar.advance(f"level {level:.0%}")
    result["samples"] = {"capacity_run": capacity, "levels": levels}
    result["summary"] = {
        "capacity_frames_per_s": cap_fps,
        "levels": {
            f"{int(lv['level'] * 100)}%": {
                "offered_frames_per_s": lv["offered_frames_per_s"],
                "p50_ms": lv["latency"]["p50_ms"],
                "p95_ms": lv["latency"]["p95_ms"],
                "p99_ms": lv["latency"]["p99_ms"],
                "frames": lv["frames"],
            }
            for lv in levels
        },
    }
    if len(levels) == len(LEVELS) and levels[0]["latency"]["p50_ms"]:
        result["summary"]["p99_90_vs_25"] = ratio(levels[-1]["latency"]["p99_ms"], levels[0]["latency"]["p99_ms"])
    result["notes"] += [
        "latency = subscriber receive time - ingest time of the frame's packet; realtime ingest (timestamp-paced)",
        "offered load set by re-encoding the video at level * capacity / streams fps (same duration and content)",
    ]
    return result
