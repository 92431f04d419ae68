"""The emotion part of ``expnet-stream evaluate``: what the published emotion output gets right, and where.

1. **FER+** (FER2013 faces with the FER+ crowd's majority label over eight emotions, contempt included; faces whose
   votes are mostly unknown/not-a-face left out, :mod:`.ferplus`): accuracy, balanced accuracy, per-class recall with
   its count, confusion matrix and expected calibration error of the published output and of the coefficient head on
   ``test`` (reported; nothing was chosen on it) and ``val`` (where epochs, output, temperature and recipe choices
   were made; for reference), and the accuracy with the lower third of the face hidden (mouth and chin, the metric
   of robustness to speech). **FER2013** (its own single labels, seven classes, no contempt): the same on ``test``
   and ``val``; an eight-class model is scored over the seven FER2013 classes (contempt's probability left out and
   the rest renormalised). Faces are framed as in the worker (:mod:`.fer`: detector box, paper crop).
2. **JAFFE, cross-dataset** (never used to choose anything): the same output on the 213 posed faces, yuface box and
   paper crop at full resolution; accuracy, per-class recall, confusion.
3. **Video, the target domain**: every clip of the unlabelled video folder (and the demo clip when it is cached) through
   the real pipeline (:func:`~expnet_stream.worker.local.run_local`, default settings, sampled at ``video_fps``): the
   share of frames whose top emotion is each class and the dominant emotion of the 2 s windows, per clip and over all,
   and how often a track's top emotion flips per second of track, in the published per-face probabilities
   (``emotions``) and in the published per-track smoothed ones (``emotions_smoothed``): the faces in these clips
   talk, and an emotion that flips with each syllable is reading the mouth. A timeline PNG is written for a few
   clips.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..faces.crop import crop_faces
from ..models.contract import PreprocessContract, contract_path_for
from ..models.emotion import EMOTIONS, EmotionHead, emotion_metrics, unsupported_of
from .dataset import framed_crops
from .sources import PAPER_CROP, WIDE_CROP, RuntimeRoll, load_face_cache

logger = logging.getLogger(__name__)

__all__ = ["PublishedEmotions", "evaluate_emotions", "flip_rate", "plot_confusions", "plot_video_shares"]


class PublishedEmotions:
    """What the worker publishes for a model file: its own emotion output, else the coefficient head beside it."""

    def __init__(self, model_path: str | os.PathLike[str], head_path: str | os.PathLike[str] | None, threads: int):
        from ..engines.onnxruntime_engine import OrtEngine

        self.contract = PreprocessContract.from_json(contract_path_for(model_path))
        self.engine = OrtEngine(model_path, max_batch=64, intra_op_threads=threads)
        self.head = EmotionHead.load(head_path) if head_path is not None and Path(head_path).is_file() else None
        if self.engine.has_emotion_output:
            self.source, self.classes = "model", tuple(self.contract.emotion_classes)
        elif self.head is not None:
            self.source, self.classes = "coefficients", self.head.classes
        else:
            self.source, self.classes = "none", ()

    def __call__(
        self, crops: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None]:
        """``(published probabilities over self.classes, coefficient-head probabilities)`` for uint8 crops."""
        pub, coef = [], []
        for i in range(0, len(crops), 64):
            c, p = self.engine.infer_all(self.contract.normalize(crops[i : i + 64]))
            if self.head is not None:
                coef.append(self.head.predict_proba(c))
            if p is not None:
                pub.append(p)
        coef_all = np.concatenate(coef) if coef else None
        pub_all = np.concatenate(pub) if pub else (coef_all if self.source == "coefficients" else None)
        return pub_all, coef_all


def _metrics(proba: npt.NDArray[Any], classes: tuple[str, ...], labels: list[str]) -> dict[str, Any]:
    """:func:`emotion_metrics` over the faces whose label is one of ``classes`` (the others are counted apart)."""
    idx = {k: i for i, k in enumerate(classes)}
    y = np.array([idx.get(k, -1) for k in labels], np.int64)
    keep = y >= 0
    m = emotion_metrics(proba[keep], y[keep], len(classes))
    return {
        "faces": m["n"],
        "faces_with_unsupported_label": int((~keep).sum()),
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "recall": {k: r for k, r, s in zip(classes, m["recall"], m["support"], strict=True) if s},
        "support": dict(zip(classes, m["support"], strict=True)),
        "ece": m["ece"],
        "classes": list(classes),
        "confusion": m["confusion"],
    }


def _restrict(proba: npt.NDArray[Any], classes: tuple[str, ...], keep: tuple[str, ...]) -> npt.NDArray[Any]:
    """Probabilities over ``keep`` (a subset of ``classes``), renormalised: the scores of a model with more classes
    on a data set with fewer."""
    cols = [classes.index(k) for k in keep]
    p = proba[:, cols]
    return np.asarray(p / np.maximum(p.sum(1, keepdims=True), 1e-12))


def _fer_crops(net: PublishedEmotions, cache: Any, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    crop = net.contract.crop_size
    wide_size = round(crop * WIDE_CROP / PAPER_CROP)
    wide = cache.crops[mask]
    if wide.shape[1] != wide_size:
        import cv2

        wide = np.stack([cv2.resize(w, (wide_size, wide_size), interpolation=cv2.INTER_AREA) for w in wide])
    return framed_crops(wide, cache.roll[mask], crop, net.contract.crop_level_eyes)


def _fer(net: PublishedEmotions, cache_dir: Path, data_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(FER2013 block, FER+ block)`` of the report."""
    from ..models.emotion import FER_CLASSES
    from .dataset import mask_lower_face
    from .fer import load_fer_cache
    from .ferplus import load_ferplus, majority_labels

    path = cache_dir / "faces" / "fer2013.npz"
    if not path.is_file():
        skipped = {"skipped": f"no FER2013 cache at {path}: run `expnet-stream label --sets fer2013`"}
        return skipped, dict(skipped)
    cache = load_fer_cache(path)
    votes_path = data_dir / "train" / "fer2013" / "ferplus.npz"
    votes = load_ferplus(votes_path, len(cache))["votes"] if votes_path.is_file() else None
    fer: dict[str, Any] = {"detector_found_rate": float(cache.detected.mean())}
    ferplus: dict[str, Any] = {} if votes is not None else {"skipped": f"{votes_path} is absent"}
    fer_classes = tuple(k for k in FER_CLASSES if k in net.classes)
    for split in ("test", "val"):
        m = cache.split == split
        crops = _fer_crops(net, cache, m)
        pub, coef = net(crops)
        labels = [str(k) for k in cache.labels[m]]
        row: dict[str, Any] = {}
        if pub is not None:
            row["published"] = _metrics(_restrict(pub, net.classes, fer_classes), fer_classes, labels)
            row["published"]["scored_over"] = list(fer_classes)
        if coef is not None and net.head is not None:
            head_fer = tuple(k for k in FER_CLASSES if k in net.head.classes)
            row["coefficient_head"] = _metrics(_restrict(coef, net.head.classes, head_fer), head_fer, labels)
        fer[split] = row
        if "published" in row:
            logger.info(
                "fer2013 %s accuracy=%.4f balanced=%.4f min_recall=%.3f ece=%.4f",
                split,
                row["published"]["accuracy"],
                row["published"]["balanced_accuracy"],
                min(row["published"]["recall"].values()),
                row["published"]["ece"],
            )
        if votes is None or pub is None:
            continue
        maj = majority_labels(votes[m])
        keep = maj >= 0
        names = [EMOTIONS[i] for i in maj[keep]]
        prow: dict[str, Any] = {"published": _metrics(pub[keep], net.classes, names)}
        if coef is not None and net.head is not None:
            prow["coefficient_head"] = _metrics(coef[keep], net.head.classes, names)
        masked, _ = net(mask_lower_face(crops[keep], net.contract.mean_bgr))
        if masked is not None:
            mm = _metrics(masked, net.classes, names)
            prow["lower_third_masked"] = {
                "accuracy": mm["accuracy"],
                "balanced_accuracy": mm["balanced_accuracy"],
                "recall": mm["recall"],
                "ratio_to_unmasked": mm["accuracy"] / max(prow["published"]["accuracy"], 1e-12),
            }
        no_votes = int((votes[m].sum(1) == 0).sum())
        prow["faces_left_out"] = {"no_votes": no_votes, "mostly_unknown_or_not_a_face": int((~keep).sum()) - no_votes}
        ferplus[split] = prow
        logger.info(
            "ferplus %s accuracy=%.4f balanced=%.4f masked=%.4f",
            split,
            prow["published"]["accuracy"],
            prow["published"]["balanced_accuracy"],
            prow.get("lower_third_masked", {}).get("accuracy", float("nan")),
        )
    role = {"test": "reported (never used to choose)", "val": "used to choose epochs, output, temperature, recipe"}
    fer["role"] = role
    if votes is not None:
        ferplus["role"] = role
        ferplus["label"] = (
            "FER+ majority over 8 emotions (ties: first in FER+ column order); mostly unknown/NF left out"
        )
    return fer, ferplus


def _jaffe(net: PublishedEmotions, data_dir: Path, cache_dir: Path) -> dict[str, Any]:
    import cv2

    root = data_dir / "eval" / "jaffe"
    path = cache_dir / "faces" / "jaffe.npz"
    if not path.is_file():
        if not root.is_dir():
            return {"skipped": f"{root} is absent"}
        from .sources import build_face_cache, iter_labelled_folder

        build_face_cache(iter_labelled_folder(root), path)
    cache = load_face_cache(path)
    crops = []
    with RuntimeRoll(net.contract) as roll_of:
        for i, key in enumerate(cache.keys):
            img = cv2.imread(str(root / str(key)), cv2.IMREAD_COLOR)
            if img is None:
                return {"skipped": f"cannot read {root / str(key)}"}
            frame = np.asarray(img, np.uint8)
            crops.append(crop_faces(frame, cache.boxes[i][None], net.contract, roll_of(frame, cache.boxes[i]))[0])
    pub, coef = net(np.stack(crops))
    labels = [str(k) for k in cache.labels]
    res: dict[str, Any] = {"images": cache.meta["images"], "role": "cross-dataset test set: nothing chosen on it"}
    if pub is not None:
        res["published"] = _metrics(pub, net.classes, labels)
    if coef is not None and net.head is not None:
        res["coefficient_head"] = _metrics(coef, net.head.classes, labels)
    return res


def flip_rate(tracks: dict[int, list[tuple[float, npt.NDArray[np.float64]]]]) -> tuple[int, float]:
    """``(flips, track seconds)``: how many times a track's top emotion changes between its consecutive faces
    (``(pts_time, probabilities)`` per face), and the summed duration of the tracks (first to last face).

    >>> p = [np.array([0.6, 0.4]), np.array([0.4, 0.6]), np.array([0.6, 0.4])]
    >>> flip_rate({1: [(0.0, p[0]), (0.1, p[1]), (0.2, p[2])]})
    (2, 0.2)
    """
    flips, seconds = 0, 0.0
    for faces in tracks.values():
        faces = sorted(faces, key=lambda f: f[0])
        if len(faces) < 2:
            continue
        seconds += faces[-1][0] - faces[0][0]
        tops = [int(np.argmax(p)) for _, p in faces]
        flips += sum(int(a != b) for a, b in itertools.pairwise(tops))
    return flips, round(seconds, 6)


def _videos(
    net_path: str, head_file: str | None, videos: list[Path], fps: float, threads: int, out: Path, plots: int
) -> dict[str, Any]:
    from ..aggregate.plot import plot_timeline
    from ..config.settings import load_settings
    from ..events.aggregate_schema import STREAM_TRACK, EmotionAggregate
    from ..events.schema import FrameEvent, StreamSummary
    from ..worker.local import run_local
    from ..worker.runtime import build_runtime

    # the model's own output when it has one, else the coefficient head beside the model file (as PublishedEmotions)
    model: dict[str, Any] = {"onnx": net_path, "threads": threads}
    if head_file is not None and PreprocessContract.from_json(contract_path_for(net_path)).emotion_output_name is None:
        model["emotion_head"] = head_file
    settings = load_settings(None, {"model": model, "sampling": {"fps": fps}, "temporal": {"enabled": True}})
    rt = build_runtime(settings)
    engine, detector, head = rt.engine, rt.detector, rt.emotion_head
    classes = tuple(head.classes) if head is not None else ()
    per_clip: dict[str, Any] = {}
    total_frames = np.zeros(len(classes), np.int64)
    total_windows: dict[str, int] = {}
    total_flips, total_track_s = [0, 0], 0.0
    for n, video in enumerate(videos):
        events: list[FrameEvent | EmotionAggregate | StreamSummary] = []
        run_local([(str(video), video.stem)], settings, detector, engine, events.append, emotion_head=head)
        tops = np.zeros(len(classes), np.int64)
        tracks: dict[int, list[tuple[float, npt.NDArray[np.float64]]]] = {}
        smoothed: dict[int, list[tuple[float, npt.NDArray[np.float64]]]] = {}
        for ev in events:
            if isinstance(ev, FrameEvent):
                for f in ev.faces:
                    if f.emotions:
                        tops[classes.index(max(f.emotions, key=lambda k: f.emotions[k] if f.emotions else 0.0))] += 1
                        if f.track_id >= 0:
                            probs = np.array([f.emotions.get(k, 0.0) for k in classes], np.float64)
                            tracks.setdefault(f.track_id, []).append((ev.pts_time, probs))
                        if f.track_id >= 0 and f.emotions_smoothed:
                            sm = np.array([f.emotions_smoothed.get(k, 0.0) for k in classes], np.float64)
                            smoothed.setdefault(f.track_id, []).append((ev.pts_time, sm))
        flips, track_s = flip_rate(tracks)
        flips_smooth, _ = flip_rate(smoothed)
        total_flips[0] += flips
        total_flips[1] += flips_smooth
        total_track_s += track_s
        windows: dict[str, int] = {}
        for ev in events:
            if isinstance(ev, EmotionAggregate) and ev.track_id == STREAM_TRACK and ev.dominant_emotion:
                windows[ev.dominant_emotion] = windows.get(ev.dominant_emotion, 0) + 1
        total_frames += tops
        for k, v in windows.items():
            total_windows[k] = total_windows.get(k, 0) + v
        per_clip[video.name] = {
            "faces": int(tops.sum()),
            "top_emotion_share": {
                k: round(float(v / max(tops.sum(), 1)), 4) for k, v in zip(classes, tops, strict=True)
            },
            "dominant_windows": windows,
            "track_seconds": track_s,
            "top_flips_per_track_second": round(flips / track_s, 4) if track_s else None,
            "top_flips_per_track_second_smoothed": round(flips_smooth / track_s, 4) if track_s else None,
        }
        if n < plots:
            plot_timeline(events, video.stem, out / f"timeline_{video.stem}.png")
    detector.close()
    engine.close()
    return {
        "sample_fps": fps,
        "classes": list(classes),
        "clips": per_clip,
        "all_clips_top_emotion_share": {
            k: round(float(v / max(total_frames.sum(), 1)), 4) for k, v in zip(classes, total_frames, strict=True)
        },
        "all_clips_dominant_windows": total_windows,
        "classes_never_top": [k for k, v in zip(classes, total_frames, strict=True) if v == 0],
        "all_clips_track_seconds": round(total_track_s, 3),
        "all_clips_top_flips_per_track_second": round(total_flips[0] / total_track_s, 4) if total_track_s else None,
        "all_clips_top_flips_per_track_second_smoothed": (
            round(total_flips[1] / total_track_s, 4) if total_track_s else None
        ),
        "smoothed_half_life_s": settings.temporal.smoothing.emotion_half_life_s,
    }


def evaluate_emotions(
    model_path: str,
    head_path: str | None,
    data_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    threads: int = 2,
    video_fps: float = 10.0,
    timeline_plots: int = 4,
    extra_videos: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The three parts above as a dict (``report["emotions"]``); writes the confusion-matrix and timeline PNGs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = PublishedEmotions(model_path, head_path, threads)
    report: dict[str, Any] = {
        "published_source": net.source,
        "classes": list(net.classes),
        "unsupported": list(unsupported_of(net.classes)) if net.classes else list(EMOTIONS),
    }
    report["fer2013"], report["ferplus"] = _fer(net, Path(cache_dir), Path(data_dir))
    report["jaffe"] = _jaffe(net, Path(data_dir), Path(cache_dir))
    video_dir = Path(data_dir) / "videos" / "unlabeled"
    videos = [Path(v) for v in extra_videos] + (sorted(video_dir.glob("*.mp4")) if video_dir.is_dir() else [])
    if videos and net.classes:
        head_file = str(head_path) if head_path is not None and Path(head_path).is_file() else None
        report["videos"] = _videos(model_path, head_file, videos, video_fps, threads, out, timeline_plots)
    report["plots"] = plot_confusions(report, out) + plot_video_shares(report, out)
    return report


def plot_video_shares(report: dict[str, Any], out: Path) -> list[str]:
    """``emotion_videos.png``: per clip, the share of faces whose top emotion is each class (stacked bars)."""
    vid = report.get("videos")
    if not vid or not vid.get("clips"):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..aggregate.plot import EMOTION_COLOURS

    classes = vid["classes"]
    names = [*vid["clips"], "ALL CLIPS"]
    shares = [[vid["clips"][n]["top_emotion_share"].get(k, 0.0) for k in classes] for n in vid["clips"]]
    shares.append([vid["all_clips_top_emotion_share"].get(k, 0.0) for k in classes])
    arr = np.asarray(shares)
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(names) + 1.6))
    left = np.zeros(len(names))
    for j, k in enumerate(classes):
        ax.barh(names, arr[:, j], left=left, label=k, color=EMOTION_COLOURS.get(k))
        left += arr[:, j]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of faces whose top emotion is ... (sampled at {vid['sample_fps']:g} fps)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(ncol=len(classes), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(names)))
    ax.set_title("published emotion on the unlabelled clips (no ground truth: a check against collapse)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "emotion_videos.png", dpi=90)
    plt.close(fig)
    return ["emotion_videos.png"]


def plot_confusions(report: dict[str, Any], out: Path) -> list[str]:
    """``emotion_confusion.png``: row-normalised confusion matrices (FER2013 test, JAFFE) and per-class recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (title, block["published"])
        for title, block in (
            ("FER+ test, majority labels (published output)", report.get("ferplus", {}).get("test", {})),
            ("FER2013 test, 7 classes (published output)", report.get("fer2013", {}).get("test", {})),
            ("JAFFE, cross-dataset (published output)", report.get("jaffe", {})),
        )
        if "published" in block
    ]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2))
    axes = np.atleast_1d(axes)
    for ax, (title, m) in zip(axes, panels, strict=True):
        conf = np.asarray(m["confusion"], np.float64)
        norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        cls = m["classes"]
        ax.set_xticks(range(len(cls)), cls, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(cls)), [f"{k} ({m['recall'].get(k, float('nan')):.0%})" for k in cls], fontsize=8)
        for i in range(len(cls)):
            for j in range(len(cls)):
                if conf[i, j]:
                    ax.text(
                        j,
                        i,
                        int(conf[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (recall)")
        ax.set_title(
            f"{title}\naccuracy {m['accuracy']:.1%}, balanced {m['balanced_accuracy']:.1%}, n={m['faces']}", fontsize=9
        )
    fig.tight_layout()
    fig.savefig(out / "emotion_confusion.png", dpi=90)
    plt.close(fig)
    return ["emotion_confusion.png"]
