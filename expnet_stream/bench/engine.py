"""Scenario ``engine``: bare faces/s of each engine and model variant over batch sizes, on real face crops.

The crops are what the worker feeds the engine: the sample video's frames, the ``yuface`` detector, the model's
crop rule. Each timed call is ``engine.infer`` on an already normalised batch (the bare engine); the cost of
``contract.normalize`` (227 -> 224 resize, mean subtraction, HWC -> CHW) is measured apart, per face. Timings are
interleaved: every round visits every (engine, variant, batch) once, so a change of machine load hits all of them
alike and ratios between them stay fair.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import create_engine
from ..engines.base import Engine
from ..errors import EngineError
from .common import Progress, cpu_count, median, new_result, ratio
from .data import QUICK_MODEL, batch_of, contract_of, face_crops, model_onnx, resolve, shipped_onnx

log = logging.getLogger(__name__)

BATCHES = (1, 4, 8, 16, 32)
FULL_VARIANTS = ("expnet_resnet18.s112", "expnet_resnet18", "expnet_resnet34", "expnet_resnet50", "expnet_resnet101")
TORCH_VARIANTS = ("expnet_resnet18.s112", "expnet_resnet18")


def _engines(variant: str, onnx: Path, with_torch: bool, threads: int, notes: list[str]) -> dict[str, Engine]:
    out: dict[str, Engine] = {
        "onnxruntime": create_engine("onnxruntime", onnx, max_batch=max(BATCHES), intra_op_threads=threads)
    }
    if with_torch:
        try:
            out["torch-cpu"] = create_engine(
                "torch", onnx, max_batch=max(BATCHES), device="cpu", intra_op_threads=threads
            )
        except EngineError as exc:
            notes.append(f"torch engine for {variant} not measured: {exc}")
    return out


def run(
    quick: bool = False,
    *,
    progress: bool = True,
    video: str | None = None,
    onnx: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    threads = cpu_count()
    variants: tuple[str, ...] = (QUICK_MODEL,) if quick else FULL_VARIANTS
    paths: dict[str, Path | None] = dict.fromkeys(variants)
    if onnx is not None:
        name, path = resolve(variants[0], onnx)
        variants, paths = (name,), {name: path}
    elif not quick and (shipped := shipped_onnx()) is not None:  # the worker's default model (trained weights)
        name = f"{contract_of(shipped).model_name} (shipped)"
        variants, paths = (name, *variants), {name: shipped, **paths}
    batches = (1, 4) if quick else BATCHES
    rounds = 2 if quick else 5
    torch_variants = () if quick else TORCH_VARIANTS
    n_frames = 8 if quick else 48
    result = new_result(
        "engine",
        quick,
        {
            "variants": list(variants),
            "batches": list(batches),
            "rounds": rounds,
            "intra_op_threads": threads,
            "torch_variants": list(torch_variants),
            "crop_frames": n_frames,
            "timed": "engine.infer on normalised batches (bare engine); normalize timed apart",
        },
    )
    notes: list[str] = result["notes"]
    engines: dict[tuple[str, str], Engine] = {}
    inputs: dict[tuple[str, int], np.ndarray] = {}
    normalize_ms: dict[str, list[float]] = {}
    crops_n: dict[str, int] = {}
    for v in variants:
        path = paths[v] or model_onnx(v)
        for kind, eng in _engines(v, path, v in torch_variants, threads, notes).items():
            engines[(kind, v)] = eng
        contract = contract_of(path)
        crops = face_crops(contract, video=video, n_frames=n_frames)
        crops_n[v] = len(crops)
        for b in batches:
            raw = batch_of(crops, b)
            t0 = time.perf_counter()
            inputs[(v, b)] = contract.normalize(raw)
            normalize_ms.setdefault(v, []).append(1000 * (time.perf_counter() - t0) / b)
    keys = [(kind, v, b) for (kind, v) in engines for b in batches]
    samples: dict[str, list[float]] = {f"{k}|{v}|{b}": [] for k, v, b in keys}
    with Progress("engine", total=len(keys) * (rounds + 1), enabled=progress) as bar:
        for kind, v, b in keys:  # warm-up: first call of a shape allocates
            engines[(kind, v)].infer(inputs[(v, b)])
            bar.advance(f"warm-up {kind} {v} b={b}")
        for r in range(rounds):
            for kind, v, b in keys:
                x = inputs[(v, b)]
                t0 = time.perf_counter()
                engines[(kind, v)].infer(x)
                samples[f"{kind}|{v}|{b}"].append(b / (time.perf_counter() - t0))
                bar.advance(f"round {r + 1}/{rounds} {kind} {v} b={b}")
    for eng in engines.values():
        eng.close()
    table: dict[str, dict[str, Any]] = {}
    for kind, v, b in keys:
        fps = median(samples[f"{kind}|{v}|{b}"])
        row = table.setdefault(f"{kind}|{v}", {"engine": kind, "variant": v, "faces_per_s": {}, "ms_per_face": {}})
        row["faces_per_s"][str(b)] = fps
        row["ms_per_face"][str(b)] = 1000.0 / fps if fps else None
    for row in table.values():
        fps = row["faces_per_s"]
        best_b = max(fps, key=lambda k: fps[k] or 0.0)
        row["best_batch"] = int(best_b)
        row["best_vs_batch1"] = ratio(fps[best_b], fps.get("1"))
    base = table.get(f"onnxruntime|{variants[0]}")
    for row in table.values():
        if base is not None:
            row["vs_first_variant_at_best"] = ratio(max(row["faces_per_s"].values()), max(base["faces_per_s"].values()))
    for v in variants:
        t_ort = table.get(f"onnxruntime|{v}")
        t_torch = table.get(f"torch-cpu|{v}")
        if t_ort and t_torch:
            t_torch["vs_onnxruntime_at_best"] = ratio(
                max(t_torch["faces_per_s"].values()), max(t_ort["faces_per_s"].values())
            )
    result["samples"] = {"faces_per_s": samples, "normalize_ms_per_face": normalize_ms}
    result["summary"] = {
        "table": table,
        "normalize_ms_per_face": {v: median(x) for v, x in normalize_ms.items()},
        "crops": crops_n,
    }
    notes.append("faces/s = batch / wall time of one engine.infer call; medians over rounds")
    notes.append("weights are the untrained seed-0 init: speed does not depend on the weight values")
    return result
