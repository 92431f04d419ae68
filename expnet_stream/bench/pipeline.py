"""Scenario ``pipeline``: end-to-end frames/s through the real broker against the sum of the bare stage costs.

N streams of the real face video are ingested as fast as possible into the embedded broker; one worker process
(the production :class:`~expnet_stream.worker.worker.Worker`, default settings: the default detector and detection
schedule, ONNX Runtime on all cores, cross-stream batches of 16) turns them into events that a subscriber reads back.
Throughput is counted from the worker's first handled record to the last event's publish time.

In the same run, before, between and after the pipeline runs ("bare slots"), each stage is timed alone in this
process on the same frames (every stream is the same ``packets_per_stream`` packets of the video, so one stream's
frames stand for all of them):

* **decode**: :class:`~expnet_stream.video.decode.StreamDecoder` (PyAV + the worker's BGR conversion) over the
  stream's input messages, exactly as the worker's decode stage calls it (``decode`` per packet, ``flush`` at the end);
* **detect**: the worker's detector (same settings) on exactly the frames the worker's tracker-driven schedule
  detects on. Which frames those are is found once, before the first slot, by replaying the stream through the same
  :class:`~expnet_stream.worker.pipeline.Pipeline` with the worker's settings and a detector wrapper that records the
  frames it is called with (the schedule is deterministic: frame index plus triggers that depend on the detections);
  the worker's count of detected frames (its detection reasons) is checked against it. One frame per detector call
  here; the worker may batch the frames of several streams in one call;
* **crop**: :func:`~expnet_stream.faces.crop.crop_faces` with the model's contract on the boxes the worker crops
  (detected or tracker-predicted, from the replay's frame events), on the freshly decoded frames;
* **infer**: ``contract.normalize`` + ``engine.infer`` at the same batch size and threads on the video's face crops
  (faces/s; seconds = the run's faces / that rate).

``bound_frames_per_s = 1 / (sum of the four bare seconds per frame)``;
``stage_sum_efficiency = pipeline frames/s / bound_frames_per_s`` (the issue's target: >= 0.9). The gap
(pipeline seconds per frame minus the bound's) splits exactly into each stage's overhead (its time inside the worker
minus its bare time), ``publish`` (no bare counterpart) and ``other`` (the worker's wall time outside the five
stages: polls, msgpack, commits, tracking, waiting). ``engine_efficiency = pipeline faces/s / bare engine faces/s``
is the previous headline ratio, kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..aggregate.settings import TrackerSettings
from ..config.settings import DetectorSettings, WorkerSettings, load_settings
from ..engines import create_engine
from ..errors import DecodeError
from ..events.schema import FrameEvent, VideoPacket
from ..faces.crop import crop_faces
from ..faces.detections import Detections
from ..faces.detector import BGRImage, FaceDetector
from ..models.contract import PreprocessContract
from ..video.decode import StreamDecoder
from ..worker.local import run_local
from ..worker.runtime import build_detector, build_engine
from .common import BenchError, Progress, cpu_count, median, new_result, ratio, wall_shares
from .data import (
    DEFAULT_MODEL,
    QUICK_MODEL,
    Message,
    batch_of,
    contract_of,
    default_video,
    face_crops,
    resolve,
    stream_messages,
    video_info,
)
from .harness import BrokerBench, RunResult, StreamSpec, worker_overrides

log = logging.getLogger(__name__)

STAGES = ("decode", "detect", "crop", "infer", "publish")
BOUND_STAGES = ("decode", "detect", "crop", "infer")
"""The stages whose bare costs add up to the bound (publish has no bare counterpart: it is part of the gap)."""
GAP_PARTS = (*STAGES, "other")


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
    shares = wall_shares(stage_s, (elapsed or 0.0) * workers, STAGES)
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
        # detector calls (one may hold frames of several streams) and frames detected (the schedule's reasons)
        "detect_calls": sum(int(w.get("stages", {}).get("detect", {}).get("calls", 0)) for w in run.workers),
        "detect_frames": sum(_sum_counts([w.get("detect_reasons") or {} for w in run.workers]).values()),
        "infer_mean_batch": ratio(
            run.faces, sum(int(w.get("stages", {}).get("infer", {}).get("calls", 0)) for w in run.workers)
        ),
        "detect_reasons": _sum_counts([w.get("detect_reasons") or {} for w in run.workers]),
        "packets_ingested": run.packets_ingested,
        "ingest_seconds": run.ingest_seconds,
    }


def _sum_counts(counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + int(v)
    return out


# ------------------------------------------------------------------------------------------------ bare stages
class _RecordingDetector(FaceDetector):
    """Passes every call to ``inner`` and keeps the frames it was called with (which frames the schedule picks)."""

    name = "recording"

    def __init__(self, inner: FaceDetector) -> None:
        super().__init__()
        self.inner = inner
        self.frames: list[BGRImage] = []

    def detect(self, frame_bgr: BGRImage) -> Detections:
        self.frames.append(frame_bgr)
        return self.inner.detect(frame_bgr)


@dataclass
class BareInputs:
    """What the bare stages run on: one stream of the run (every stream is the same packets of the same video)."""

    messages: list[Message]
    detect_frames: list[BGRImage] = field(default_factory=list)
    """the decoded frames the worker's detection schedule runs the detector on, in order"""
    boxes: list[npt.NDArray[np.float32]] = field(default_factory=list)
    """per decoded frame, in order: the boxes the worker crops (detected or tracker-predicted; (0, 4) for none)"""
    detect_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return len(self.boxes)

    @property
    def faces(self) -> int:
        return sum(len(b) for b in self.boxes)


def bare_inputs(video: str, max_packets: int | None, settings: WorkerSettings, detector: FaceDetector) -> BareInputs:
    """Replay one stream through the worker's :class:`Pipeline` (same settings, no broker) with a recording
    detector: the frames the schedule detects on and the boxes it crops, per frame."""
    inputs = BareInputs(stream_messages(video, "bare", max_packets))
    rec = _RecordingDetector(detector)
    engine = build_engine(settings)
    events: list[FrameEvent] = []
    try:
        # `run`'s pipeline: built as the Worker builds it (worker_proc passes no emotion head), batching by size
        # only; the schedule and the boxes do not depend on when batches run
        res = run_local(
            [(video, "bare")],
            settings,
            rec,
            engine,
            lambda ev: events.append(ev) if isinstance(ev, FrameEvent) else None,
            max_packets=max_packets,
        )
    finally:
        engine.close()
    if settings.sampling.fps is not None:  # pragma: no cover - the scenario samples every frame
        raise BenchError("bare stages assume every decoded frame is sampled")
    inputs.detect_frames = rec.frames
    inputs.boxes = [np.asarray([f.box for f in e.faces], np.float32).reshape(-1, 4) for e in events]
    inputs.detect_reasons = res.detect_reasons
    return inputs


def bare_stage_seconds(inputs: BareInputs, detector: FaceDetector, contract: PreprocessContract) -> dict[str, float]:
    """Seconds of decode, detect and crop alone on one stream's frames (the worker's calls, nothing else)."""
    decoder = StreamDecoder("bare")
    images: list[BGRImage] = []
    t0 = time.perf_counter()
    for msg in inputs.messages:
        if isinstance(msg, VideoPacket):
            try:
                images.extend(f.image for f in decoder.decode(msg))
            except DecodeError:
                continue
    images.extend(f.image for f in decoder.flush())
    t1 = time.perf_counter()
    for frame in inputs.detect_frames:
        detector.detect(frame)
    t2 = time.perf_counter()
    if len(images) != inputs.frames:
        raise BenchError(f"bare decode gave {len(images)} frames, the worker's pipeline {inputs.frames}")
    for image, boxes in zip(images, inputs.boxes, strict=True):
        if len(boxes):  # a known roll (any value) takes the levelling path of a contract that levels the eyes
            crop_faces(image, boxes, contract, np.zeros(len(boxes), np.float32))
    t3 = time.perf_counter()
    return {"decode": t1 - t0, "detect": t2 - t1, "crop": t3 - t2}


def stage_bound(bare_s_per_frame: Mapping[str, float | None]) -> float | None:
    """frames/s if the stages cost exactly their bare time and nothing else: ``1 / sum(bare s/frame)``.

    >>> stage_bound({"decode": 0.002, "detect": 0.008, "crop": 0.001, "infer": 0.014})
    40.0
    """
    parts = [bare_s_per_frame.get(s) for s in BOUND_STAGES]
    if any(v is None for v in parts):
        return None
    return ratio(1.0, sum(v for v in parts if v is not None))


def gap_breakdown(wall: float, inside: Mapping[str, float], bare: Mapping[str, float]) -> dict[str, Any]:
    """Split the pipeline's time per frame beyond the bound (any one unit: ``wall`` per frame, the stages' time per
    frame ``inside`` the worker and ``bare``): each bound stage's overhead (inside minus bare), ``publish`` (all of
    it) and ``other`` (wall time outside the five stages). The parts add up to the gap (``total``) exactly;
    ``shares`` are fractions of it (a negative part: the stage ran faster inside than bare).

    >>> g = gap_breakdown(50.0, {"decode": 3.0, "detect": 10.0, "crop": 1.0, "infer": 30.0, "publish": 1.0},
    ...                   {"decode": 2.0, "detect": 8.0, "crop": 1.0, "infer": 29.0})
    >>> g["total"], {k: round(v, 3) for k, v in g["shares"].items()}, g["largest"]
    (10.0, {'decode': 0.1, 'detect': 0.2, 'crop': 0.0, 'infer': 0.1, 'publish': 0.1, 'other': 0.5}, 'other')
    """
    parts = {s: inside.get(s, 0.0) - bare[s] for s in BOUND_STAGES}
    parts["publish"] = inside.get("publish", 0.0)
    parts["other"] = wall - sum(inside.get(s, 0.0) for s in STAGES)
    gap = wall - sum(bare[s] for s in BOUND_STAGES)
    positive = {k: v for k, v in parts.items() if v > 0}
    return {
        "total": gap,
        "parts": parts,
        "shares": {k: ratio(v, gap) for k, v in parts.items()},
        "largest": max(positive, key=lambda k: positive[k]) if positive else None,
    }


# ------------------------------------------------------------------------------------------------ the scenario
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
        "bare_stages": "decode, detect, crop on one stream's frames (all streams are the same packets) in this "
        "process; infer = bare engine faces/s; timed in each bare slot (before, between and after the pipeline runs)",
    }
    result = new_result("pipeline", quick, params)
    model, onnx_path = resolve(model, onnx)
    result["params"]["model"], result["params"]["onnx"] = model, str(onnx_path)
    contract = contract_of(onnx_path)
    crops = face_crops(contract, video=video, n_frames=8 if quick else 32)
    bare_calls = 3 if quick else 12
    runs: list[dict[str, Any]] = []
    bare: list[float] = []
    # per bare slot: ms per frame of decode, detect, crop and the slot's median bare engine faces/s
    bare_stages: list[dict[str, float]] = []
    specs = [StreamSpec(video, f"pipe-{i}", max_packets) for i in range(streams)]
    # the measured worker's settings (its detector and tracker settings are what matter here)
    wsettings = load_settings(
        None, worker_overrides("127.0.0.1:9", "bare", onnx_path, partitions=1, threads=threads, max_batch=max_batch)
    )
    detector = build_detector(wsettings)

    def bare_slot() -> None:
        sec = bare_stage_seconds(inputs, detector, contract)
        engine_fps = bare_engine_fps(onnx_path, crops, max_batch, threads=threads, calls=bare_calls)
        bare.extend(engine_fps)
        bare_stages.append(
            {**{k: 1000 * v / inputs.frames for k, v in sec.items()}, "engine_faces_per_s": median(engine_fps) or 0.0}
        )

    try:
        with (
            Progress("pipeline", total=2 * repeats + 2, enabled=progress) as bar,
            BrokerBench(workdir / "pipeline") as bb,
        ):
            inputs = bare_inputs(video, max_packets, wsettings, detector)
            bar.advance("detection schedule")
            bare_slot()
            bar.advance("bare stages")
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
                bare_slot()
                bar.advance("bare stages")
    finally:
        detector.close()
    result["samples"] = {
        "runs": runs,
        "bare_engine_faces_per_s": bare,
        "bare_stage_ms_per_frame": bare_stages,
        "schedule": {
            "frames_per_stream": inputs.frames,
            "faces_per_stream": inputs.faces,
            "detect_calls_per_stream": len(inputs.detect_frames),
            "detect_reasons_per_stream": inputs.detect_reasons,
        },
    }
    result["summary"] = summarize(runs, bare, bare_stages, detect_calls_per_stream=len(inputs.detect_frames))
    result["notes"] += [
        "elapsed = first record handled by the worker -> last frame event published",
        "bare engine = contract.normalize + engine.infer at the same batch size and threads, same crops' source",
        "stage shares are fractions of the worker's wall time; 'other' = poll, record decode, commits, Python",
        "bare decode/detect/crop: one stream's frames (all streams are the same packets), in the benchmark process; "
        "detect on exactly the frames the worker's schedule detects on (found by replaying the stream through the "
        "worker's Pipeline with the same settings; detect_frames_worker, the worker's detection reasons, vs "
        "detect_frames_bare_schedule checks it); one frame per detector call (detect_calls_worker counts the worker's "
        "calls, which may batch frames of several streams); "
        "crop on the boxes the worker crops (detected or predicted)",
        "bound_frames_per_s = 1 / sum of the medians of the bare seconds per frame (decode, detect, crop; infer = the "
        "pipeline's faces per frame / median bare engine faces/s); stage_sum_efficiency = median pipeline frames/s / "
        "bound",
        "gap breakdown (ms per frame) from the pooled runs (sum of seconds / sum of frames), so its parts add up "
        "exactly to pooled wall per frame - 1000 / bound",
    ]
    return result


def summarize(
    runs: list[dict[str, Any]],
    bare: list[float],
    bare_stages: list[dict[str, float]] | None = None,
    *,
    detect_calls_per_stream: int | None = None,
) -> dict[str, Any]:
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
    out: dict[str, Any] = {
        "pipeline_faces_per_s": faces,
        "pipeline_frames_per_s": frames,
        "bare_engine_faces_per_s": bare_fps,
        "engine_efficiency": eff,
        "stage_share_of_wall": shares,
        "infer_stage_vs_bare": ratio(
            median([r["infer_stage_faces_per_s"] for r in runs if r["infer_stage_faces_per_s"]]), bare_fps
        ),
        "worker_cpu_cores_used": median([r["worker_cpu_cores_used"] for r in runs if r["worker_cpu_cores_used"]]),
        "limiting_stage": limiting,
        "limiting_stage_share": outside.get(limiting) if limiting else None,
    }
    if not bare_stages:
        out["efficiency_ok"] = None
        return out
    n_frames = sum(r["frames"] for r in runs)
    wall = sum(r["elapsed_s"] or 0.0 for r in runs)
    face_per_frame = ratio(sum(r["faces"] for r in runs), n_frames)
    bare_ms: dict[str, float | None] = {
        s: median([b[s] for b in bare_stages if b.get(s) is not None]) for s in ("decode", "detect", "crop")
    }
    infer_s = ratio(face_per_frame, bare_fps) if face_per_frame is not None else None
    bare_ms["infer"] = None if infer_s is None else 1000 * infer_s
    bound = stage_bound({k: None if v is None else v / 1000 for k, v in bare_ms.items()})
    stage_eff = ratio(frames, bound)
    pipe_ms = (
        {s: 1000 * sum(r["stage_seconds"].get(s, 0.0) for r in runs) / n_frames for s in STAGES} if n_frames else {}
    )
    gap = (
        gap_breakdown(1000 * wall / n_frames, pipe_ms, {k: v for k, v in bare_ms.items() if v is not None})
        if n_frames and wall and bound is not None
        else None
    )
    calls = [r.get("detect_calls") for r in runs]
    adjacent: list[float | None] = []
    if len(bare_stages) == len(runs) + 1 and all(b.get("engine_faces_per_s") for b in bare_stages):
        # each run against the bare slots just before and after it (the mean of the two)
        for i, r in enumerate(runs):
            pair = bare_stages[i : i + 2]
            ms = {k: sum(b[k] for b in pair) / 2 for k in ("decode", "detect", "crop")}
            fps = sum(b["engine_faces_per_s"] for b in pair) / 2
            ms["infer"] = 1000 * (ratio(r["faces"], r["frames"]) or 0.0) / fps
            adjacent.append(ratio(r["frames_per_s"], stage_bound({k: v / 1000 for k, v in ms.items()})))
    out.update(
        {
            "bare_ms_per_frame": bare_ms,
            "bound_frames_per_s": bound,
            "stage_sum_efficiency": stage_eff,
            "stage_sum_efficiency_per_run": [ratio(r["frames_per_s"], bound) for r in runs],
            "stage_sum_efficiency_adjacent_per_run": adjacent or None,
            "pipeline_ms_per_frame": {**pipe_ms, "wall": 1000 * wall / n_frames if n_frames else None},
            "stage_vs_bare": {s: ratio(pipe_ms.get(s), bare_ms[s]) for s in BOUND_STAGES},
            "gap_ms_per_frame": gap,
            "largest_gap_part": gap["largest"] if gap else None,
            "infer_mean_batch": median([r["infer_mean_batch"] for r in runs if r.get("infer_mean_batch")]),
            "detect_calls_worker": calls,
            "detect_frames_worker": [r.get("detect_frames") for r in runs],
            "detect_frames_bare_schedule": None
            if detect_calls_per_stream is None
            else [detect_calls_per_stream * r["streams_completed"] for r in runs],
            "efficiency_ok": stage_eff is not None and stage_eff >= 0.9,
        }
    )
    return out
