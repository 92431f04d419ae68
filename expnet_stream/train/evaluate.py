"""``expnet-stream evaluate``: the report of a trained ExpNet (ONNX + contract) against its teacher, the labeller.

1. Fidelity: per-coefficient R² of ExpNet against the labeller's coefficients at full resolution, on the identities
   held out from training (the trainer's split), with the face downscaled to 1, 1/2, 1/4, 1/8 of its size in the
   frame (the frame is resized with INTER_AREA and the scaled box is cropped by :func:`crop_faces`, as in the worker;
   a model that levels the eyes gets the roll YuNet measures on the scaled frame, as in the worker).
   The labeller run on the same downscaled crops is scored the same way (where it finds no face its coefficients are
   taken as 0, the training mean, and its found rate is reported).
2. The paper's protocol on a labelled folder (JAFFE): a linear classifier on features, leave-one-subject-out, at the
   same scales, for ExpNet's coefficients, the labeller's basis coefficients and the labeller's 52 raw blendshapes.
   A face the labeller cannot find counts as a wrong prediction (see :mod:`.probe`). Boxes are the detector boxes of
   the full-resolution images (the face cache's), scaled: detection is excluded from the comparison.
3. Speed per face on this machine: ExpNet on ONNX Runtime (batch 1 and batch 32, emotion output included) vs the
   labeller on the same faces, detection excluded.
4. Emotions (:mod:`.evaluate_emotions`): FER+ and FER2013 test/val (with the lower third masked too), JAFFE
   cross-dataset, and the unlabelled videos through the real pipeline (top-emotion flips per track-second).

JAFFE is a test set only: nothing (basis, epochs, emotion output, temperature) is chosen on it.

Writes ``report.json`` and PNG plots in the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ..errors import ExpNetError
from ..faces.crop import crop_faces
from ..models.contract import PreprocessContract, contract_path_for
from .dataset import holdout_mask
from .labeller import Labeller, default_cache_dir
from .probe import subject_cv_accuracy
from .sources import RuntimeRoll, label_contract, load_face_cache, scale_frame

logger = logging.getLogger(__name__)

__all__ = ["EvalConfig", "evaluate"]

SCALES = (1.0, 0.5, 0.25, 0.125)


@dataclass
class EvalConfig:
    """Options of ``expnet-stream evaluate``."""

    model_path: str
    data_dir: str
    out_dir: str
    cache_dir: str = ""
    scales: tuple[float, ...] = SCALES
    labelled_folder: str = "eval/jaffe"
    fidelity_caches: tuple[str, ...] = ("lfw_expressions", "videos")
    val_fraction: float = 0.1
    max_fidelity_faces: int = 800
    speed_faces: int = 64
    threads: int = 2
    seed: int = 0
    emotion_head_path: str | None = None
    video_fps: float = 10.0
    extra_videos: tuple[str, ...] = ()
    parts: tuple[str, ...] = ("fidelity", "protocol", "speed", "emotions")


class _Expnet:
    def __init__(self, path: str, threads: int) -> None:
        from ..engines.onnxruntime_engine import OrtEngine

        self.contract = PreprocessContract.from_json(contract_path_for(path))
        self.engine = OrtEngine(path, max_batch=64, intra_op_threads=threads)

    def __call__(self, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        # infer_all: the timed cost includes the model's emotion output where it has one (what the worker runs)
        out = [self.engine.infer_all(self.contract.normalize(crops[i : i + 64]))[0] for i in range(0, len(crops), 64)]
        return np.concatenate(out) if out else np.zeros((0, self.contract.num_coeffs), np.float32)


def _r2(pred: npt.NDArray[np.floating], target: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    from .predict import r2_per_coeff

    return r2_per_coeff(pred, target)


def _heldout_frames(cfg: EvalConfig, cache_dir: Path) -> Iterator[tuple[npt.NDArray[np.uint8], Any, Any, Any]]:
    """(frame, box, full-res landmarks, full-res blendshapes) of held-out identities, re-read from the data folder."""
    import av

    roots = {
        "lfw_expressions": Path(cfg.data_dir) / "train" / "lfw_expressions",
        "videos": Path(cfg.data_dir) / "videos" / "unlabeled",
    }
    per_cache = max(1, cfg.max_fidelity_faces // len(cfg.fidelity_caches))
    for name in cfg.fidelity_caches:
        path = cache_dir / "faces" / f"{name}.npz"
        if not path.is_file():
            logger.warning("no face cache %s: skipped in fidelity", path)
            continue
        cache = load_face_cache(path)
        subjects = np.char.add(f"{name}/", cache.subjects.astype(str))
        idx = np.flatnonzero(holdout_mask(subjects, cfg.val_fraction) & cache.full_found.astype(bool))
        if idx.size > per_cache:
            idx = np.sort(np.random.default_rng(cfg.seed).choice(idx, per_cache, replace=False))
        if name == "videos":
            wanted: dict[str, dict[int, int]] = {}
            for i in idx:
                video, frame_no = str(cache.keys[i]).split("#")
                wanted.setdefault(video, {})[int(frame_no)] = int(i)  # frame number -> cache row
            for video, frames in wanted.items():
                with av.open(str(roots[name] / video)) as container:
                    for n, frame in enumerate(container.decode(video=0)):
                        if n in frames:
                            j = frames[n]
                            yield (
                                np.asarray(frame.to_ndarray(format="bgr24"), np.uint8),
                                cache.boxes[j],
                                cache.full_landmarks[j],
                                cache.full_blendshapes[j],
                            )
                        if n >= max(frames):
                            break
        else:
            for i in idx:
                img = cv2.imread(str(roots[name] / str(cache.keys[i])), cv2.IMREAD_COLOR)
                if img is not None:
                    yield np.asarray(img, np.uint8), cache.boxes[i], cache.full_landmarks[i], cache.full_blendshapes[i]


def _fidelity(cfg: EvalConfig, net: _Expnet, labeller: Labeller, basis: Any, cache_dir: Path) -> dict[str, Any]:
    lab_c = label_contract()
    targets: list[npt.NDArray[np.float32]] = []
    face_px: list[float] = []
    exp_out: dict[float, list[npt.NDArray[np.float32]]] = {s: [] for s in cfg.scales}
    lab_out: dict[float, list[npt.NDArray[np.float32]]] = {s: [] for s in cfg.scales}
    lab_found: dict[float, list[bool]] = {s: [] for s in cfg.scales}
    roll_of = RuntimeRoll(net.contract)
    for frame, box, lm, bs in _heldout_frames(cfg, cache_dir):
        targets.append(basis.encode(lm[None], bs[None])[0])
        face_px.append(float(max(box[2] - box[0], box[3] - box[1])))
        for s in cfg.scales:
            fs, bx = scale_frame(frame, box, s)
            exp_out[s].append(net(crop_faces(fs, bx[None], net.contract, roll_of(fs, bx)))[0])
            found, l_lm, l_bs, _ = labeller.label_one(crop_faces(fs, bx[None], lab_c)[0])
            lab_found[s].append(found)
            lab_out[s].append(
                basis.encode(l_lm[None], l_bs[None])[0] if found else np.zeros(basis.num_coeffs, np.float32)
            )
    roll_of.close()
    if not targets:
        raise ExpNetError("no held-out faces for the fidelity report (face caches missing?)")
    t = np.stack(targets)
    out: dict[str, Any] = {"faces": int(t.shape[0]), "median_face_px_full": float(np.median(face_px)), "scales": {}}
    for s in cfg.scales:
        r2_e = _r2(np.stack(exp_out[s]), t)
        found_s = np.asarray(lab_found[s], bool)
        r2_l = _r2(np.stack(lab_out[s]), t)
        out["scales"][str(s)] = {
            "median_face_px": float(np.median(face_px) * s),
            "expnet_r2_mean": float(r2_e.mean()),
            "expnet_r2_per_coeff": [round(float(v), 4) for v in r2_e],
            "labeller_r2_mean": float(r2_l.mean()),
            "labeller_r2_per_coeff": [round(float(v), 4) for v in r2_l],
            "labeller_found_rate": float(found_s.mean()),
            "labeller_r2_mean_found_only": float(_r2(np.stack(lab_out[s])[found_s], t[found_s]).mean())
            if found_s.sum() > 2
            else None,
        }
        logger.info(
            "fidelity scale=%s expnet_r2=%.3f labeller_r2=%.3f found=%.3f", s, r2_e.mean(), r2_l.mean(), found_s.mean()
        )
    return out


def _protocol(
    cfg: EvalConfig, net: _Expnet, labeller: Labeller, basis: Any, cache_dir: Path
) -> tuple[dict[str, Any], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    root = Path(cfg.data_dir) / cfg.labelled_folder
    name = root.name
    cache_path = cache_dir / "faces" / f"{name}.npz"
    if not cache_path.is_file():
        from .sources import build_face_cache, iter_labelled_folder

        build_face_cache(iter_labelled_folder(root), cache_path)
    cache = load_face_cache(cache_path)
    lab_c = label_contract()
    res: dict[str, Any] = {
        "folder": str(cfg.labelled_folder),
        "faces": len(cache),
        "images": cache.meta["images"],
        "scales": {},
    }
    speed_crops = speed_label_crops = np.zeros((0,), np.uint8)
    roll_of = RuntimeRoll(net.contract)
    for s in cfg.scales:
        lc: list[npt.NDArray[np.float32]] = []
        lb: list[npt.NDArray[np.float32]] = []
        found: list[bool] = []
        crops_s: list[npt.NDArray[np.uint8]] = []
        lcrops_s: list[npt.NDArray[np.uint8]] = []
        for i, key in enumerate(cache.keys):
            img = cv2.imread(str(root / str(key)), cv2.IMREAD_COLOR)
            if img is None:
                raise ExpNetError(f"cannot read {root / str(key)}")
            fs, bx = scale_frame(np.asarray(img, np.uint8), cache.boxes[i], s)
            crop = crop_faces(fs, bx[None], net.contract, roll_of(fs, bx))
            lcrop = crop_faces(fs, bx[None], lab_c)[0]
            crops_s.append(crop[0])
            lcrops_s.append(lcrop)
            ok, lm, bs, _ = labeller.label_one(lcrop)
            found.append(ok)
            lc.append(basis.encode(lm[None], bs[None])[0] if ok else np.zeros(basis.num_coeffs, np.float32))
            lb.append(bs)
        ex_arr = net(np.stack(crops_s))
        if s == 1.0:
            speed_crops, speed_label_crops = np.stack(crops_s), np.stack(lcrops_s)
        f = np.asarray(found, bool)
        row: dict[str, Any] = {
            "median_face_px": float(np.median(np.max(cache.boxes[:, 2:] - cache.boxes[:, :2], axis=1)) * s),
            "labeller_found_rate": float(f.mean()),
            "expnet_coeffs": subject_cv_accuracy(ex_arr, cache.labels, cache.subjects).as_dict(),
            "labeller_coeffs": subject_cv_accuracy(np.stack(lc), cache.labels, cache.subjects, found=f).as_dict(),
            "labeller_blendshapes52": subject_cv_accuracy(
                np.stack(lb), cache.labels, cache.subjects, found=f
            ).as_dict(),
        }
        res["scales"][str(s)] = row
        logger.info(
            "protocol scale=%s expnet=%.3f labeller_coeffs=%.3f labeller_blendshapes=%.3f found=%.3f",
            s,
            row["expnet_coeffs"]["accuracy"],
            row["labeller_coeffs"]["accuracy"],
            row["labeller_blendshapes52"]["accuracy"],
            f.mean(),
        )
    roll_of.close()
    return res, speed_crops, speed_label_crops


def _speed(
    net: _Expnet, labeller: Labeller, crops: npt.NDArray[np.uint8], label_crops: npt.NDArray[np.uint8], n: int
) -> dict[str, Any]:
    crops, label_crops = crops[:n], label_crops[:n]
    net(crops[:4])  # warm-up
    t1 = []
    for c in crops:
        t0 = time.perf_counter()
        net(c[None])
        t1.append(time.perf_counter() - t0)
    passes = []
    for _ in range(3):  # median of 3 passes: the machine may be shared
        t0 = time.perf_counter()
        for i in range(0, len(crops), 32):
            net(crops[i : i + 32])
        passes.append((time.perf_counter() - t0) / len(crops) * 1e3)
    batch_ms = float(np.median(passes))
    labeller.label_one(label_crops[0])
    tl, tl_small = [], []
    for lc, c in zip(label_crops, crops, strict=True):
        t0 = time.perf_counter()
        labeller.label_one(lc)
        tl.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        labeller.label_one(c)
        tl_small.append(time.perf_counter() - t0)
    exp_ms, lab_ms = float(np.median(t1) * 1e3), float(np.median(tl) * 1e3)
    return {
        "faces": len(crops),
        "expnet_ms_per_face_batch1_median": exp_ms,
        "expnet_ms_per_face_batch32": batch_ms,
        "labeller_ms_per_face_median_on_256px_crop": lab_ms,
        "labeller_ms_per_face_median_on_model_crop": float(np.median(tl_small) * 1e3),
        "labeller_over_expnet_batch1": lab_ms / exp_ms,
        "labeller_over_expnet_batch32": lab_ms / batch_ms,
        "note": "detection excluded; labeller includes its own face detector (MediaPipe runs it per image)",
    }


def _plots(report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    scales = [float(s) for s in report["fidelity"]["scales"]] if "fidelity" in report else []
    if scales:
        fid = report["fidelity"]["scales"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        axes[0].plot(scales, [fid[str(s)]["expnet_r2_mean"] for s in scales], "o-", label="ExpNet (ONNX)")
        axes[0].plot(scales, [fid[str(s)]["labeller_r2_mean"] for s in scales], "s--", label="labeller (MediaPipe)")
        axes[0].set_xscale("log", base=2)
        axes[0].set_xlabel("face scale")
        axes[0].set_ylabel("mean R² vs labeller at full res")
        axes[0].set_title("fidelity, held-out identities")
        axes[0].legend()
        k = len(fid[str(scales[0])]["expnet_r2_per_coeff"])
        for s in scales:
            axes[1].plot(range(k), fid[str(s)]["expnet_r2_per_coeff"], ".-", label=f"ExpNet x{s:g}")
        axes[1].set_xlabel("coefficient")
        axes[1].set_ylabel("R²")
        axes[1].set_ylim(-0.5, 1.0)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "fidelity.png", dpi=90)
        plt.close(fig)
        written.append("fidelity.png")
    if "protocol" in report:
        pro: dict[str, Any] = report["protocol"]["scales"]
        ss = [float(s) for s in pro]
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for key, lab, st in (
            ("expnet_coeffs", "ExpNet coefficients", "o-"),
            ("labeller_coeffs", "labeller coefficients", "s--"),
            ("labeller_blendshapes52", "labeller 52 blendshapes", "^:"),
        ):
            ax.plot(ss, [pro[str(s)][key]["accuracy"] for s in ss], st, label=lab)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("face scale")
        ax.set_ylabel("accuracy (leave-one-subject-out)")
        ax.set_title(f"emotion separation, {report['protocol']['folder']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "protocol.png", dpi=90)
        plt.close(fig)
        written.append("protocol.png")
    if "speed" in report:
        sp = report["speed"]
        fig, ax = plt.subplots(figsize=(6, 3))
        names = ["ExpNet b1", "ExpNet b32", "labeller"]
        vals = [
            sp["expnet_ms_per_face_batch1_median"],
            sp["expnet_ms_per_face_batch32"],
            sp["labeller_ms_per_face_median_on_256px_crop"],
        ]
        ax.barh(names, vals)
        ax.set_xlabel("ms per face (this machine)")
        fig.tight_layout()
        fig.savefig(out / "speed.png", dpi=90)
        plt.close(fig)
        written.append("speed.png")
    return written


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the three parts and write ``report.json`` + PNGs into ``cfg.out_dir``; returns the report."""
    from .basis import load_basis

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cfg.cache_dir or default_cache_dir())
    net = _Expnet(cfg.model_path, cfg.threads)
    if not net.contract.trained:
        logger.warning("evaluating an UNTRAINED model model_id=%s", net.contract.model_id)
    basis = load_basis(net.contract.basis_id)
    report: dict[str, Any] = {
        "model_id": net.contract.model_id,
        "basis_id": basis.basis_id,
        "model_file": Path(cfg.model_path).name,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("model_path", "data_dir", "out_dir", "cache_dir")},
    }
    t0 = time.perf_counter()
    if {"fidelity", "protocol", "speed"} & set(cfg.parts):
        with Labeller() as labeller:
            if "fidelity" in cfg.parts:
                report["fidelity"] = _fidelity(cfg, net, labeller, basis, cache_dir)
            if {"protocol", "speed"} & set(cfg.parts):
                report["protocol"], crops, lcrops = _protocol(cfg, net, labeller, basis, cache_dir)
            if "speed" in cfg.parts:
                report["speed"] = _speed(net, labeller, crops, lcrops, cfg.speed_faces)
    if "emotions" in cfg.parts:
        from .evaluate_emotions import evaluate_emotions

        head = cfg.emotion_head_path or str(Path(cfg.model_path).parent / "emotion_head.npz")
        report["emotions"] = evaluate_emotions(
            cfg.model_path,
            head,
            cfg.data_dir,
            cache_dir,
            out,
            threads=cfg.threads,
            video_fps=cfg.video_fps,
            extra_videos=cfg.extra_videos,
        )
    report["wall_seconds"] = time.perf_counter() - t0
    report["plots"] = _plots(report, out) + report.get("emotions", {}).get("plots", [])
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    logger.info("evaluation written out=%s", out)
    return report


def default_data_dir(repo_root: str | os.PathLike[str] | None = None) -> Path:
    """``$EXPNET_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("EXPNET_DATA")
    if env:
        return Path(env)
    root = Path(repo_root) if repo_root is not None else Path(__file__).resolve().parents[2]
    return root.parent / "shared" / "data"
