"""Run a named scenario, write ``<out>/<scenario>.json`` and ``<out>/<scenario>.png``."""

from __future__ import annotations

import importlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .charts import CHARTS
from .common import DEFAULT_OUT, BenchError, check_result, finish_result, write_json

log = logging.getLogger(__name__)

SCENARIOS: dict[str, str] = {
    "engine": "bare faces/s per engine and model variant over batch sizes, on real face crops",
    "pipeline": "end-to-end frames/s through the broker vs the sum of the bare stage costs (decode, detect, crop, "
    "infer) and vs the bare engine; where the gap goes",
    "decode": "PyAV decode fps inside the worker vs bare StreamDecoder and av.open on the same packets",
    "latency": "p50/p95/p99 frame-to-event latency at 25/50/90 % of capacity, realtime ingest",
    "landmarks": "per-face cost: ExpNet vs MediaPipe labeller vs dlib-68 + 3DMM expression fit, same crops",
    "scaling": "streams per worker until it falls behind at 5 fps sampling; 1 vs 2 worker processes",
    "bottlenecks": "A/B pipeline runs of candidate fixes (OpenMP wait policy, detector size, ORT threads)",
    "detection": "`run` on the clip: previous defaults vs the detector on every frame vs tracker-driven detection",
    "crowd": "many small faces: the clip tiled 3x3/4x4/6x6 into 1280x720 through `run`, default vs every-frame "
    "detection",
    "view": "the live view at half load: pictures/s per watched stream, capture-to-picture delay, the view's CPU",
}
ALL = ("engine", "pipeline", "decode", "latency", "landmarks", "scaling")
"""What ``bench all`` runs (``bottlenecks`` is run on its own)."""


def _scenario(name: str) -> Callable[..., dict[str, Any]]:
    if name not in SCENARIOS:
        raise BenchError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)} or 'all'")
    module = importlib.import_module(f".{name}", __package__)
    fn: Callable[..., dict[str, Any]] = module.run
    return fn


def run_scenario(
    name: str,
    out_dir: Path | None = None,
    *,
    quick: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> tuple[dict[str, Any], Path, Path]:
    """Run one scenario; returns ``(result, json_path, png_path)``. Extra kwargs go to the scenario."""
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    fn = _scenario(name)
    with tempfile.TemporaryDirectory(prefix=f"expnet-bench-{name}-") as tmp:
        log.info("bench scenario=%s quick=%s out=%s", name, quick, out)
        result = finish_result(fn(quick=quick, progress=progress, workdir=Path(tmp), **kwargs))
    problems = check_result(result)
    if problems:
        raise BenchError(f"scenario {name} produced a malformed result: {problems}")
    json_path = write_json(result, out / f"{name}.json")
    png_path = CHARTS[name](result, out / f"{name}.png")
    return result, json_path, png_path
