"""Scenario ``bottlenecks``: A/B runs of the pipeline with candidate fixes, alternating in one run.

Each variant is the ``pipeline`` scenario's broker run with a different worker environment or setting; the
variants run in turn (A, B, C, ..., A, B, C, ...) so load changes on a shared machine hit them alike, and each
variant's median faces/s is divided by the baseline's: the before/after ratio of a fix, measured in the same run.

Variants (each maps to a proposed patch):

* ``baseline``: the current code and defaults.
* ``omp_passive``: ``OMP_WAIT_POLICY=PASSIVE``: yuface's OpenMP threads sleep instead of spinning after each call.
* ``omp_1thread``: ``OMP_NUM_THREADS=1``: yuface detects on one thread.
* ``omp_passive+max_side_480`` / ``_320``: as omp_passive, and the detector downscales frames to 480 / 320 px
  (default 640): the smallest face it finds grows by the same factor.
* ``omp_passive+ort_1thread``: as omp_passive, ONNX Runtime on one thread (the other core left to the broker).

More variants come from ``extra_variants`` (``--variant NAME:KEY=VALUE,...`` on the command line): a worker
environment each. ``PYTHONPATH=DIR`` runs the worker from a patched copy of the package (``DIR/expnet_stream``,
``DIR/expnet_stream_plugins`` and a ``sitecustomize.py`` that drops the editable-install finder), so a patch can
be measured against an unpatched copy of the same snapshot before it is applied.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .common import BenchError, Progress, cpu_count, median, new_result, ratio
from .data import DEFAULT_MODEL, QUICK_MODEL, default_video, resolve, video_info
from .harness import BrokerBench, StreamSpec
from .pipeline import STAGES, run_metrics

log = logging.getLogger(__name__)

PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
VARIANTS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "baseline": ({}, {}),
    "omp_passive": (PASSIVE, {}),
    "omp_1thread": ({"OMP_NUM_THREADS": "1"}, {}),
    "omp_passive+max_side_480": (PASSIVE, {"detector_options": {"max_side": 480}}),
    "omp_passive+max_side_320": (PASSIVE, {"detector_options": {"max_side": 320}}),
    "omp_passive+ort_1thread": (PASSIVE, {"threads": 1}),
}


def run(
    quick: bool = False,
    *,
    progress: bool = True,
    workdir: Path,
    variants: list[str] | None = None,
    extra_variants: dict[str, dict[str, str]] | None = None,
    video: str | None = None,
    onnx: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    model = QUICK_MODEL if quick else DEFAULT_MODEL
    table = {**VARIANTS, **{k: (env, {}) for k, env in (extra_variants or {}).items()}}
    names = variants or (["baseline", "omp_passive"] if quick else list(VARIANTS))
    names += [n for n in (extra_variants or {}) if n not in names]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise BenchError(f"unknown variants {unknown}; built-in: {', '.join(VARIANTS)}")
    streams, packets, rounds = (1, 36, 1) if quick else (2, 160, 2)
    video = video or str(default_video())
    params = {
        "model": model,
        "video": video_info(video),
        "variants": {n: {"env": table[n][0], "settings": table[n][1]} for n in names},
        "streams": streams,
        "packets_per_stream": packets,
        "rounds": rounds,
        "max_batch": 16,
    }
    result = new_result("bottlenecks", quick, params)
    model, onnx_path = resolve(model, onnx)
    result["params"]["model"], result["params"]["onnx"] = model, str(onnx_path)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with (
        Progress("bottlenecks", total=rounds * len(names), enabled=progress) as bar,
        BrokerBench(workdir / "bottlenecks") as bb,
    ):
        for r in range(rounds):
            for name in names:
                env, settings = table[name]
                opts: dict[str, Any] = {"threads": cpu_count(), "max_batch": 16, **settings}
                res = bb.run(
                    [StreamSpec(video, f"ab-{i}", packets) for i in range(streams)],
                    onnx_path,
                    partitions=2,
                    timeout_s=90 if quick else 400,
                    env=env,
                    progress=bar,
                    **opts,
                )
                runs[name].append(run_metrics(res))
                bar.advance(f"round {r + 1} {name}")
    base = median([m["faces_per_s"] for m in runs["baseline"] if m["faces_per_s"]]) if "baseline" in runs else None
    rows: dict[str, dict[str, Any]] = {}
    for name, ms in runs.items():
        fps = median([m["faces_per_s"] for m in ms if m["faces_per_s"]])
        rows[name] = {
            "faces_per_s": fps,
            "frames_per_s": median([m["frames_per_s"] for m in ms if m["frames_per_s"]]),
            "vs_baseline": ratio(fps, base),
            "stage_share_of_wall": {
                s: median([m["stage_share_of_wall"][s] or 0.0 for m in ms]) for s in (*STAGES, "other")
            },
            "detect_ms_per_frame": median(
                [1000 * m["stage_seconds"].get("detect", 0.0) / m["frames"] for m in ms if m["frames"]]
            ),
            "stage_ms_per_frame": {
                s: median([1000 * m["stage_seconds"].get(s, 0.0) / m["frames"] for m in ms if m["frames"]])
                for s in STAGES
            },
        }
    result["samples"] = {"runs": runs}
    result["summary"] = {"variants": rows}
    result["notes"] += ["ratios are per-variant medians over alternating rounds divided by the baseline's"]
    return result
