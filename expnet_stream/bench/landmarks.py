"""Scenario ``landmarks``: per-face cost of ExpNet vs landmark fitting, on the same face crops.

The ExpNet paper's claim is speed at equal accuracy: regressing 29 expression coefficients from pixels instead of
detecting landmarks and fitting a 3D morphable model to them. Per face (detection excluded: every method gets the
worker's crops of the real face video) this scenario times:

* ``expnet``: ``contract.normalize`` + ONNX Runtime, batch 1 and batch 16 (the worker's batching), for the worker's
  model and (full mode) the paper's ResNet-101;
* ``mediapipe``: the project's labeller (MediaPipe FaceLandmarker, 478 landmarks + 52 blendshapes; IMAGE mode, which
  runs its own BlazeFace on the crop: the Tasks API cannot skip it) + the basis encoder to 29 coefficients;
* ``dlib68_fit``: dlib's 68-point shape predictor (from ``face-recognition-models``) on the known face box inside the
  crop + a 3DMM-style least-squares expression fit (:mod:`.expression_fit`) of the project's basis.

Rounds are interleaved (each round times every method over all crops). Ratios are ``cost(method) / cost(expnet)``.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..engines import create_engine
from ..errors import ExpNetError
from .common import Progress, cpu_count, median, new_result, ratio
from .data import DEFAULT_MODEL, QUICK_MODEL, contract_of, face_crops, model_onnx
from .expression_fit import ExpressionFitter

log = logging.getLogger(__name__)

DLIB_INSTALL = 'pip install "dlib-bin==20.0.1.post1" "face-recognition-models==0.3.0"'
Crops = npt.NDArray[np.uint8]


def dlib_predictor_path() -> Path | None:
    """The 68-point model of ``face-recognition-models`` (found without importing it: it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / "models" / "shape_predictor_68_face_landmarks.dat"
        if p.is_file():
            return p
    return None


def _expnet_method(onnx: Path, batch: int, threads: int) -> Callable[[Crops], int]:
    engine = create_engine("onnxruntime", onnx, max_batch=batch, intra_op_threads=threads)
    contract = engine.contract

    def run(crops: Crops) -> int:
        for i in range(0, len(crops), batch):
            engine.infer(contract.normalize(crops[i : i + batch]))
        return len(crops)

    run(crops_for_warmup(contract.crop_size, batch))
    return run


def _label(model: str, batch: int) -> str:
    """``expnet resnet18 b16``: the name of an ExpNet method in results and charts."""
    return f"expnet {model.removeprefix('expnet_')} b{batch}"


def crops_for_warmup(size: int, n: int) -> Crops:
    return np.zeros((n, size, size, 3), np.uint8)


def _mediapipe_method(stats: dict[str, Any], closers: list[Callable[[], None]]) -> Callable[[Crops], int]:
    from ..models.expression_basis import load_basis
    from ..train.labeller import Labeller

    labeller = Labeller()
    closers.append(labeller.close)
    basis = load_basis()

    def run(crops: Crops) -> int:
        found = 0
        for c in crops:
            ok, lm, bs, _pose = labeller.label_one(c)
            if ok:
                basis.encode(lm[None], bs[None])
                found += 1
        stats["found"] = found
        return len(crops)

    return run


def _dlib_method(crop_size: int, stats: dict[str, Any]) -> Callable[[Crops], int]:
    import dlib

    path = dlib_predictor_path()
    if path is None:
        raise ExpNetError(f"the dlib 68-point model is not installed ({DLIB_INSTALL})")
    predictor = dlib.shape_predictor(str(path))
    fitter = ExpressionFitter.from_project_basis()
    # The crop is the detector box made square and grown 1.5x: the box is its centre third-to-five-sixths.
    lo, hi = round(crop_size / 6), round(5 * crop_size / 6)
    rect = dlib.rectangle(lo, lo, hi, hi)

    def run(crops: Crops) -> int:
        rms = []
        t_pred = t_fit = 0.0
        for c in crops:
            t0 = time.perf_counter()
            rgb = np.ascontiguousarray(c[:, :, ::-1])
            shape = predictor(rgb, rect)
            pts = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
            t1 = time.perf_counter()
            rms.append(fitter.fit(pts).rms_px)
            t_pred, t_fit = t_pred + t1 - t0, t_fit + time.perf_counter() - t1
        stats["fit_rms_px_median"] = float(np.median(rms)) if rms else None
        stats.setdefault("predictor_ms_per_face", []).append(1000 * t_pred / max(1, len(crops)))
        stats.setdefault("fit_ms_per_face", []).append(1000 * t_fit / max(1, len(crops)))
        return len(crops)

    return run


def run(quick: bool = False, *, progress: bool = True, video: str | None = None, **_: Any) -> dict[str, Any]:
    threads = cpu_count()
    model = QUICK_MODEL if quick else DEFAULT_MODEL
    rounds = 2 if quick else 5
    n_frames = 6 if quick else 40
    params = {
        "model": model,
        "paper_model": None if quick else "expnet_resnet101",
        "rounds": rounds,
        "crop_frames": n_frames,
        "intra_op_threads": threads,
        "mediapipe": "train.labeller.Labeller (FaceLandmarker IMAGE mode, blendshapes) + basis.encode",
        "dlib": "shape_predictor_68 on the known box + expression_fit (3 pose/expression alternations)",
    }
    result = new_result("landmarks", quick, params)
    notes: list[str] = result["notes"]
    onnx = model_onnx(model)
    contract = contract_of(onnx)
    crops = face_crops(contract, video=video, n_frames=n_frames)
    methods: dict[str, Callable[[Crops], int]] = {
        _label(model, 1): _expnet_method(onnx, 1, threads),
        _label(model, 16): _expnet_method(onnx, 16, threads),
    }
    if not quick:
        paper = model_onnx("expnet_resnet101")
        methods[_label("expnet_resnet101", 1)] = _expnet_method(paper, 1, threads)
        methods[_label("expnet_resnet101", 16)] = _expnet_method(paper, 16, threads)
    extra: dict[str, dict[str, Any]] = {"mediapipe": {}, "dlib68_fit": {}}
    closers: list[Callable[[], None]] = []
    try:
        methods["mediapipe"] = _mediapipe_method(extra["mediapipe"], closers)
    except (ExpNetError, ImportError, OSError) as exc:
        notes.append(f"MediaPipe labeller not measured: {exc}")
    try:
        methods["dlib68_fit"] = _dlib_method(contract.crop_size, extra["dlib68_fit"])
    except (ExpNetError, ImportError, OSError, RuntimeError) as exc:
        notes.append(f"dlib-68 + fit not measured: {exc} ({DLIB_INSTALL})")
    samples: dict[str, list[float]] = {k: [] for k in methods}
    try:
        with Progress("landmarks", total=rounds * len(methods), enabled=progress) as bar:
            for r in range(rounds):
                for name, fn in methods.items():
                    t0 = time.perf_counter()
                    n = fn(crops)
                    samples[name].append(1000.0 * (time.perf_counter() - t0) / n)
                    bar.advance(f"round {r + 1} {name}")
    finally:
        for close in closers:
            close()
    dl = extra["dlib68_fit"]
    for key in ("predictor_ms_per_face", "fit_ms_per_face"):
        if key in dl:
            dl[key] = median(dl[key])
    ms = {k: median(v) for k, v in samples.items()}
    b1, b16 = ms[_label(model, 1)], ms[_label(model, 16)]
    result["samples"] = {"ms_per_face": samples}
    result["summary"] = {
        "ms_per_face": ms,
        "faces": len(crops),
        "cost_ratio_vs_expnet_b1": {k: ratio(v, b1) for k, v in ms.items()},
        "cost_ratio_vs_expnet_b16": {k: ratio(v, b16) for k, v in ms.items()},
        "mediapipe": extra["mediapipe"],
        "dlib68_fit": extra["dlib68_fit"],
    }
    if not quick:
        p1 = ms.get(_label("expnet_resnet101", 1))
        result["summary"]["cost_ratio_vs_paper_expnet_b1"] = {k: ratio(v, p1) for k, v in ms.items()}
    notes += [
        "detection excluded for every method; MediaPipe's IMAGE mode still runs its own BlazeFace inside the crop",
        f"crops are {contract.crop_size} px ExpNet crops (box grown 1.5x) of the real face video",
        "the ExpNet weights are untrained: cost does not depend on weights; accuracy is not compared here",
    ]
    return result
