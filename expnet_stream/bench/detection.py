"""Scenario ``detection``: the detection schedule and detector, side by side on the same clip (issue 14).

``expnet-stream run``'s pipeline (:func:`~expnet_stream.worker.local.run_local`, no broker) on the sample face video
with the shipped model (ONNX Runtime, one thread), in alternating repeats of:

* ``before``: the previous defaults, ``yuface`` on every frame;
* ``every frame``: the default detector on every frame;
* ``default``: the product defaults (the default detector, tracker-driven detection with triggers);
* ``refine``: the defaults with ``refine_predicted`` (the detector on a small square around each predicted box);
* ``n=N``, ``n=N refine``: ``detect_every_n`` N, without and with refining (``--quick``: none).

Reported: median frames/s and the ratio to ``before`` (same run); faces on the frames where ``before`` and where
``every frame`` find one; the mean absolute coefficient difference of the first face to those references; the top
emotion agreement; the clip's own frame-to-frame coefficient jitter; stage shares and detector calls.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..aggregate.settings import TrackerSettings
from ..config.settings import DetectorSettings, WorkerSettings, load_settings
from ..engines.base import Engine
from ..events.schema import Face, FrameEvent
from ..faces.detector import FaceDetector
from ..worker.local import run_local
from ..worker.pipeline import EmotionClassifier
from ..worker.runtime import build_runtime
from .common import Progress, median, new_result, ratio
from .data import default_video, video_info


def _first(e: FrameEvent) -> Face | None:
    return e.faces[0] if e.faces else None


def _jitter(frames: list[FrameEvent]) -> float | None:
    out, prev = [], None
    for e in frames:
        f = _first(e)
        if f is not None and prev is not None:
            out.append(float(np.abs(f.coefficients - prev.coefficients).mean()))
        prev = f
    return statistics.mean(out) if out else None


def frame_collector(out: list[FrameEvent]) -> Callable[[object], None]:
    """An ``on_event`` for :func:`~expnet_stream.worker.local.run_local` that keeps the frame events in ``out``."""

    def on_event(event: object) -> None:
        if isinstance(event, FrameEvent):
            out.append(event)

    return on_event


Variant = tuple[WorkerSettings, FaceDetector, Engine, EmotionClassifier | None]


def build_variants(configs: dict[str, dict[str, Any]], common: dict[str, Any]) -> dict[str, Variant]:
    """Settings (the packaged defaults with each config's and ``common``'s overrides), detector, engine and emotion
    output of every variant, built before any is timed."""
    built = {}
    for name, over in configs.items():
        settings = load_settings(None, {**over, **common})
        rt = build_runtime(settings)
        built[name] = (settings, rt.detector, rt.engine, rt.emotion_head)
    return built


def _top(f: Face | None) -> str | None:
    return max(f.emotions, key=lambda k: f.emotions[k]) if f is not None and f.emotions else None  # type: ignore[index]


def _compare(frames: list[FrameEvent], ref: list[FrameEvent]) -> dict[str, Any]:
    by = {e.frame_seq: e for e in ref}
    both = [
        (_first(by[e.frame_seq]), _first(e)) for e in frames if e.faces and e.frame_seq in by and by[e.frame_seq].faces
    ]
    ref_faces = sum(1 for e in ref if e.faces)
    diffs = [float(np.abs(a.coefficients - b.coefficients).mean()) for a, b in both if a is not None and b is not None]
    return {
        "faces_on_reference_face_frames": ratio(len(both), ref_faces),
        "mean_abs_coeff_diff": statistics.mean(diffs) if diffs else None,
        "top_emotion_agreement": statistics.mean(_top(a) == _top(b) for a, b in both) if both else None,
    }


def run(
    quick: bool = False, *, progress: bool = True, workdir: Path, video: str | None = None, **_: Any
) -> dict[str, Any]:
    video = video or str(default_video())
    repeats = 1 if quick else 3
    max_packets = 48 if quick else None
    default_det = DetectorSettings().name
    configs: dict[str, dict[str, Any]] = {
        "before": {"detector": {"name": "yuface"}, "temporal": {"tracker": {"detect_every_n": 1}}},
        "every frame": {"temporal": {"tracker": {"detect_every_n": 1}}},
        "default": {},
        "refine": {"temporal": {"tracker": {"refine_predicted": True}}},
    }
    if not quick:
        configs["n=6"] = {"temporal": {"tracker": {"detect_every_n": 6}}}
        configs["n=6 refine"] = {"temporal": {"tracker": {"detect_every_n": 6, "refine_predicted": True}}}
    params = {
        "video": video_info(video),
        "packets": max_packets,
        "repeats": repeats,
        "default_detector": default_det,
        "default_detect_every_n": TrackerSettings().detect_every_n,
        "configs": configs,
        "model": "the shipped default model, ONNX Runtime, 1 thread",
    }
    result = new_result("detection", quick, params)
    built = build_variants(configs, {"model": {"threads": 1}})
    fps: dict[str, list[float]] = {name: [] for name in configs}
    last: dict[str, tuple[list[FrameEvent], Any]] = {}
    with Progress("detection", total=repeats * len(configs), enabled=progress) as bar:
        for _rep in range(repeats):
            for name, (settings, detector, engine, head) in built.items():
                frames: list[FrameEvent] = []
                res = run_local(
                    [(video, "bench")],
                    settings,
                    detector,
                    engine,
                    frame_collector(frames),
                    max_packets=max_packets,
                    emotion_head=head,
                )
                fps[name].append(len(frames) / res.seconds)
                last[name] = (frames, res)
                bar.advance()
    runs: dict[str, Any] = {}
    for name, (frames, res) in last.items():
        st = res.stages
        total = sum(st.seconds.values()) or 1.0
        runs[name] = {
            "frames": len(frames),
            "frames_per_s": fps[name],
            "frames_per_s_median": median(fps[name]),
            "vs_before": _compare(frames, last["before"][0]),
            "vs_every_frame": _compare(frames, last["every frame"][0]),
            "detect_calls": st.calls.get("detect", 0),
            "stage_share": {k: v / total for k, v in st.seconds.items()},
        }
    result["samples"] = {"runs": runs}
    base = median(fps["before"])
    result["summary"] = {
        "speedup_default_vs_before": ratio(median(fps["default"]), base),
        "frames_per_s": {name: median(v) for name, v in fps.items()},
        "jitter_before": _jitter(last["before"][0]),
        "jitter_every_frame": _jitter(last["every frame"][0]),
        "default_faces_on_every_frame_face_frames": runs["default"]["vs_every_frame"]["faces_on_reference_face_frames"],
        "default_coeff_diff_vs_every_frame": runs["default"]["vs_every_frame"]["mean_abs_coeff_diff"],
        "default_coeff_diff_vs_before": runs["default"]["vs_before"]["mean_abs_coeff_diff"],
        "default_top_emotion_agreement_vs_before": runs["default"]["vs_before"]["top_emotion_agreement"],
    }
    return result
