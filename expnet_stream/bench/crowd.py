"""Scenario ``crowd``: many small faces per frame (issue 14).

The sample face video tiled into a grid: ``g`` x ``g`` scaled-down copies of the 640x360 clip side by side in one
1280x720 frame (:func:`~expnet_stream.bench.data.tiled_copy`; tile ``k`` starts ``k / g**2`` of the way into the clip,
so the tiles show different moments), H.264 (libx264, a keyframe a second), cached in ``<cache>/bench``. The clip has
one face in every frame, so a frame holds ``g**2`` faces.

Each copy goes through ``expnet-stream run``'s pipeline (:func:`~expnet_stream.worker.local.run_local`, no broker)
with the product defaults (default detector, tracker-driven detection, the shipped model and its emotion output,
ONNX Runtime on all cores, batches of 16) and with the default detector on every frame (``detect_every_n`` 1),
in alternating repeats. Reported: frames/s and faces/s (medians), faces found per frame against the number of tiles,
faces flagged ``small_face``, detector calls, the detector's share of the wall time and every stage's share (``other``
= outside the stages: demux, tracking, events).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..config.settings import DetectorSettings
from ..events.schema import FrameEvent
from ..worker.local import run_local
from ..worker.stages import STAGES
from .common import Progress, median, new_result, ratio, wall_shares
from .data import cache_root, default_video, tiled_copy, video_info
from .detection import build_variants, frame_collector

SIZE = (1280, 720)
GRIDS = (3, 4, 6)
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "every frame": {"temporal": {"tracker": {"detect_every_n": 1}}},
}


def face_counts(frames: list[FrameEvent], tiles: int) -> dict[str, Any]:
    """Faces found per frame against the ``tiles`` faces each frame holds.

    >>> from types import SimpleNamespace as NS
    >>> f = lambda n, small=0: NS(faces=[NS(quality=["small_face"] if i < small else []) for i in range(n)])
    >>> round(face_counts([f(9, 2), f(8), f(9)], 9)["tile_recall"], 4)
    0.963
    """
    counts = [len(e.faces) for e in frames]
    small = sum(1 for e in frames for f in e.faces if "small_face" in f.quality)
    faces = sum(counts)
    return {
        "faces_per_frame": statistics.mean(counts) if counts else None,
        "tile_recall": ratio(statistics.mean(counts), tiles) if counts else None,
        "frames_with_every_tile": ratio(sum(1 for c in counts if c >= tiles), len(counts)),
        "faces_per_frame_min": min(counts) if counts else None,
        "small_face_share": ratio(small, faces),
    }


def run(
    quick: bool = False,
    *,
    progress: bool = True,
    workdir: Path,
    video: str | None = None,
    onnx: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    video = video or str(default_video())
    grids = (3,) if quick else GRIDS
    n_frames = 12 if quick else 144
    repeats = 1 if quick else 3
    # quick runs (tests) keep their copies out of the user's cache
    folder = workdir / "crowd" if quick else cache_root() / "bench"
    model = {"model": {"onnx": str(onnx)}} if onnx is not None else {}
    params = {
        "video": video_info(video),
        "grids": [f"{g}x{g}" for g in grids],
        "size": list(SIZE),
        "frames": n_frames,
        "repeats": repeats,
        "configs": CONFIGS,
        "detector": DetectorSettings().name,
        "model": str(onnx) if onnx is not None else "the shipped default model, ONNX Runtime, default threads (all)",
    }
    result = new_result("crowd", quick, params)
    copies = {g: tiled_copy(video, g, folder, frames=n_frames, size=SIZE) for g in grids}
    result["params"]["copies"] = {f"{g}x{g}": video_info(str(p)) for g, p in copies.items()}
    built = build_variants(CONFIGS, model)
    result["params"]["model_id"] = next(iter(built.values()))[2].model_id
    samples: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, Any]] = {}
    try:
        with Progress("crowd", total=repeats * len(grids) * len(CONFIGS), enabled=progress) as bar:
            for _rep in range(repeats):
                for g, path in copies.items():
                    for name, (settings, detector, engine, head) in built.items():
                        key = f"{g}x{g} {name}"
                        frames: list[FrameEvent] = []
                        res = run_local(
                            [(str(path), "crowd")],
                            settings,
                            detector,
                            engine,
                            frame_collector(frames),
                            emotion_head=head,
                        )
                        faces = sum(len(e.faces) for e in frames)
                        stage_s = dict(res.stages.seconds)
                        samples.setdefault(key, []).append(
                            {
                                "frames": len(frames),
                                "faces": faces,
                                "seconds": res.seconds,
                                "frames_per_s": ratio(len(frames), res.seconds),
                                "faces_per_s": ratio(faces, res.seconds),
                                "detect_calls": res.stages.calls.get("detect", 0),
                                "stage_seconds": stage_s,
                                "stage_share_of_wall": wall_shares(stage_s, res.seconds, STAGES),
                            }
                        )
                        counts[key] = face_counts(frames, g * g)
                        bar.advance(key)
    finally:
        for _settings, detector, engine, _head in built.values():
            detector.close()
            engine.close()
    result["samples"] = {"runs": samples, "faces": counts}
    result["summary"] = summarize(samples, counts, grids)
    result["notes"] += [
        f"each frame is {SIZE[0]}x{SIZE[1]} with g x g tiles of the clip (one face per tile); the default detector "
        "scales frames to max_side 640 before detection, so it sees each face at half its size in the frame",
        "detect share and stage shares are fractions of run_local's wall time (medians over repeats); 'other' = "
        "demux (iter_stream_messages), tracking, scene-cut thumbnails, events",
        "faces per frame: from the last repeat (deterministic)",
    ]
    return result


def summarize(
    samples: dict[str, list[dict[str, Any]]], counts: dict[str, dict[str, Any]], grids: tuple[int, ...]
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for key, runs in samples.items():
        shares = {
            s: median([r["stage_share_of_wall"][s] for r in runs if r["stage_share_of_wall"][s] is not None])
            for s in (*STAGES, "other")
        }
        rows[key] = {
            "tiles": int(key.split("x", 1)[0]) ** 2,
            "frames_per_s": median([r["frames_per_s"] for r in runs if r["frames_per_s"]]),
            "faces_per_s": median([r["faces_per_s"] for r in runs if r["faces_per_s"]]),
            "detect_calls": runs[-1]["detect_calls"],
            "frames": runs[-1]["frames"],
            "detect_share_of_wall": shares["detect"],
            "stage_share_of_wall": shares,
            "detect_ms_per_call": median(
                [1000 * r["stage_seconds"]["detect"] / r["detect_calls"] for r in runs if r["detect_calls"]]
            ),
            **counts.get(key, {}),
        }
    speedup = {
        f"{g}x{g}": ratio(
            rows.get(f"{g}x{g} default", {}).get("frames_per_s"),
            rows.get(f"{g}x{g} every frame", {}).get("frames_per_s"),
        )
        for g in grids
    }
    return {"table": rows, "default_vs_every_frame": speedup}
