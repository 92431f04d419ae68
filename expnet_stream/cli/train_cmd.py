"""``expnet-stream label | select-basis | choose-recipe | train | evaluate | ship``: the offline training workflow.

Torch, mediapipe and scikit-learn are imported inside the handlers (the ``train`` extra), never at import time.
``--data`` defaults to ``$EXPNET_DATA`` or ``<repo>/../shared/data``; caches go to ``$EXPNET_CACHE_DIR`` or
``~/.cache/expnet-stream`` (never into the repository).

Recipe of the shipped model::

    expnet-stream label                      # face caches: detect (yunet), crop, label (MediaPipe)
    expnet-stream select-basis               # fit both bases, compare, save the winner
    expnet-stream train --model expnet_lite18.s112 --epochs 6 --out runs/lite18
    expnet-stream ship runs/lite18/final.pt  # fp16 ONNX + contract + checkpoint + emotion head in models/weights
    expnet-stream evaluate --out expnet_stream/models/weights/report
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["register"]


def _data_dir(args: argparse.Namespace) -> Path:
    from ..train.evaluate import default_data_dir

    return Path(args.data) if args.data else default_data_dir()


def _cache_dir(args: argparse.Namespace) -> Path:
    from ..train.labeller import default_cache_dir

    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def cmd_label(args: argparse.Namespace) -> int:
    from ..train.sources import build_face_cache, iter_labelled_folder, iter_video_folder

    data, faces = _data_dir(args), _cache_dir(args) / "faces"
    jobs: dict[str, Any] = {
        "lfw_expressions": lambda: iter_labelled_folder(data / "train" / "lfw_expressions", limit=args.limit),
        "videos": lambda: iter_video_folder(data / "videos" / "unlabeled", frames_per_video=args.frames_per_video),
        "jaffe": lambda: iter_labelled_folder(data / "eval" / "jaffe", limit=args.limit),
    }
    for name in args.sets or [*jobs, "fer2013"]:
        path = faces / f"{name}.npz"
        if path.is_file() and not args.force:
            print(f"{name}: cached at {path}")
            continue
        if name == "fer2013":
            from ..train.fer import build_fer_cache

            build_fer_cache(
                data / "train" / "fer2013" / "fer2013.npz", path, limit=args.limit, label=args.fer_coefficients
            )
        else:
            build_face_cache(jobs[name](), path, small_face_px=args.small_face_px)
        print(f"{name}: written {path}")
    return 0


def cmd_select_basis(args: argparse.Namespace) -> int:
    from ..train.select_basis import select_basis

    table = select_basis(_cache_dir(args), args.out, save=not args.no_save)
    print(json.dumps({"chosen": table["chosen"], "mean_accuracy": table["mean_accuracy"]}, indent=2))
    return 0


def cmd_choose_recipe(args: argparse.Namespace) -> int:
    from ..models import light as _light  # noqa: F401  (registers the light variants)
    from ..train.choices import probe_choices

    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        from ..models.weights import default_checkpoint_path

        checkpoint = default_checkpoint_path()
    table = probe_choices(checkpoint, _cache_dir(args), _data_dir(args))
    text = json.dumps(table, indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..models import light as _light  # noqa: F401  (registers the light variants)
    from ..train.trainer import TrainConfig, train

    cfg = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        cache_dir=str(_cache_dir(args)),
        threads=args.threads,
        max_train=args.max_train,
        max_batches_per_epoch=args.max_batches_per_epoch,
        init_from=args.init_from,
        emotion_cache=None if args.emotion_cache in ("", "none") else args.emotion_cache,
        emotion_weight=args.emotion_weight,
        emotion_targets=args.emotion_targets,
        keep_unmatched=args.keep_unmatched,
        level_eyes=args.level_eyes,
        p_mask_lower=args.p_mask_lower,
        emotion_balance=args.class_balance,
        basis_id=args.basis,
        data_dir=str(_data_dir(args)),
        device=args.device,
    )
    summary = train(cfg, resume=args.resume, max_minutes=args.max_minutes)
    if not summary["complete"]:
        print(f"stopped after epoch {summary['epochs_done']} of {cfg.epochs}: run again with --resume to continue")
    print(json.dumps(summary["history"][-1] if summary["history"] else {}, indent=2))
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    from ..models import light as _light  # noqa: F401  (registers the light variants)
    from ..models.registry import load_checkpoint
    from ..models.weights import WEIGHTS_DIR
    from ..train.emotion_fit import fit_emotion_outputs
    from ..train.ship import ship_model

    out = Path(args.out) if args.out else WEIGHTS_DIR
    model, contract = load_checkpoint(args.checkpoint)
    if args.level_eyes and not contract.crop_level_eyes:
        contract = contract.model_copy(update={"crop_level_eyes": True})
    # Choose and calibrate the emotion output on FER2013 val; the coefficient head is shipped beside it as fallback.
    contract, head, emotion_info = fit_emotion_outputs(model, contract, _cache_dir(args), data_dir=_data_dir(args))
    info = ship_model(model, contract, out, fp16=not args.fp32, weights_tag=args.weights_tag)
    head.save(out / "emotion_head.npz")
    info["emotion_head"] = str(out / "emotion_head.npz")
    info["emotion_selection"] = emotion_info
    (out / "emotion_selection.json").write_text(json.dumps(emotion_info, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in info.items() if k != "emotion_selection"}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..train.evaluate import EvalConfig, evaluate

    if args.model_path:
        model_path = args.model_path
    else:
        from ..models.weights import default_model_path

        model_path = str(default_model_path())
    cfg = EvalConfig(
        model_path=model_path,
        data_dir=str(_data_dir(args)),
        out_dir=args.out,
        cache_dir=str(_cache_dir(args)),
        max_fidelity_faces=args.max_fidelity_faces,
        threads=args.threads,
        video_fps=args.video_fps,
        extra_videos=tuple(args.video or ()),
        parts=tuple(args.parts),
    )
    report = evaluate(cfg)
    print(json.dumps({k: report[k] for k in ("model_id", "speed") if k in report}, indent=2))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="shared data folder (default $EXPNET_DATA or <repo>/../shared/data)")
    p.add_argument("--cache-dir", default=None, help="label/crop caches (default $EXPNET_CACHE_DIR or ~/.cache/...)")


def register(subparsers: Any) -> None:
    """Add ``label``, ``select-basis``, ``choose-recipe``, ``train``, ``ship`` and ``evaluate`` to the
    ``expnet-stream`` command."""
    p = subparsers.add_parser("label", help="detect, crop and label the training/eval faces (MediaPipe; cached)")
    _common(p)
    p.add_argument("--sets", nargs="*", choices=["lfw_expressions", "videos", "jaffe", "fer2013"], help="default: all")
    p.add_argument(
        "--limit", type=int, default=None, help="at most this many images per labelled folder (default: all)"
    )
    p.add_argument("--frames-per-video", type=int, default=200, help="frames sampled from each training video")
    p.add_argument("--small-face-px", type=float, default=32.0, help="face size of the low-resolution labels")
    p.add_argument(
        "--fer-coefficients",
        action="store_true",
        help="also label the FER2013 faces with MediaPipe (coefficient targets for them; ~10 CPU minutes more)",
    )
    p.add_argument("--force", action="store_true", help="rebuild caches that exist")
    p.set_defaults(func=cmd_label)

    p = subparsers.add_parser("select-basis", help="fit the candidate expression bases, compare, save the winner")
    _common(p)
    p.add_argument("--out", default=None, help="write the comparison table (JSON) here (default: print only)")
    p.add_argument(
        "--no-save",
        action="store_true",
        help="only measure: do not (re)write the chosen basis file (a shipped model was trained on the saved one)",
    )
    p.set_defaults(func=cmd_select_basis)

    p = subparsers.add_parser(
        "choose-recipe",
        help="linear probes on a trained trunk make the recipe's choices on FER+ val (unmatched faces, eye levelling)",
    )
    _common(p)
    p.add_argument("--checkpoint", default=None, help="trunk to probe (default: the shipped model's checkpoint)")
    p.add_argument("--out", default=None, help="write the table (JSON) here (default: print only)")
    p.set_defaults(func=cmd_choose_recipe)

    p = subparsers.add_parser("train", help="train ExpNet on the labeller's basis coefficients")
    _common(p)
    p.add_argument("--model", default="expnet_lite18.s112", help="registered model name (e.g. expnet_resnet101)")
    p.add_argument("--epochs", type=int, default=6, help="passes over the training faces")
    p.add_argument("--batch-size", type=int, default=64, help="faces per optimiser step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--max-train", type=int, default=None, help="subsample the training faces (default: all)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after the epoch that passes this many minutes (state kept; --resume continues; default: no limit)",
    )
    p.add_argument(
        "--max-batches-per-epoch",
        type=int,
        default=None,
        help="cut every epoch short, for smoke runs (default: whole epochs)",
    )
    p.add_argument(
        "--init-from", default=None, help="warm start from a checkpoint's weights, new LR cycle (default: random init)"
    )
    p.add_argument(
        "--emotion-cache",
        default="fer2013",
        help="face cache with emotion labels for the multi-task emotion head (default fer2013; 'none': no emotions)",
    )
    p.add_argument("--emotion-weight", type=float, default=1.0, help="weight of the emotion loss (default 1.0)")
    p.add_argument(
        "--emotion-targets",
        default="ferplus",
        choices=["ferplus", "fer2013"],
        help="FER+ vote distributions over 8 emotions with contempt, or FER2013's single labels (7) (default ferplus)",
    )
    p.add_argument(
        "--keep-unmatched",
        action="store_true",
        help="FER2013 faces without FER+ votes train with their FER2013 label (default: left out; see choose-recipe)",
    )
    p.add_argument(
        "--level-eyes", action="store_true", help="level the eyes (YuNet landmarks) before the crop (see choose-recipe)"
    )
    p.add_argument(
        "--p-mask-lower",
        type=float,
        default=0.3,
        help="share of emotion faces whose lower third (mouth, chin) is hidden in training (default 0.3)",
    )
    p.add_argument(
        "--class-balance",
        type=float,
        default=0.5,
        help="power of the inverse-frequency class weights of the emotion loss (0: none, 1: full; default 0.5)",
    )
    p.add_argument(
        "--basis",
        default="mp478-procrustes-pca29-v1",
        help="expression basis of the coefficient targets (default: the one select-basis picks on training data)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--out", default="runs/expnet", help="checkpoints and summary.json")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("ship", help="fp16 ONNX + contract + checkpoint + emotion head into models/weights")
    _common(p)
    p.add_argument("checkpoint", help="a checkpoint written by train (best.pt / final.pt)")
    p.add_argument("--out", default=None, help="default: the package's models/weights folder")
    p.add_argument("--fp32", action="store_true", help="store float32 weights")
    p.add_argument(
        "--level-eyes",
        action="store_true",
        help="mark the contract crop_level_eyes (a checkpoint trained with --level-eyes before the contract had it)",
    )
    p.add_argument(
        "--weights-tag",
        default=None,
        help="rename the weights, model id = <model>@<tag> (default: the checkpoint's tag)",
    )
    p.set_defaults(func=cmd_ship)

    p = subparsers.add_parser("evaluate", help="fidelity, emotion protocol and speed report (JSON + PNG)")
    _common(p)
    p.add_argument("--model-path", default=None, help="ONNX model with its .contract.json (default: shipped model)")
    p.add_argument("--out", default="expnet_stream/models/weights/report", help="folder of report.json and the PNGs")
    p.add_argument("--max-fidelity-faces", type=int, default=800, help="test faces of the fidelity part")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the speed part")
    p.add_argument("--video-fps", type=float, default=10.0, help="frames sampled per second of each evaluation clip")
    p.add_argument(
        "--video",
        action="append",
        help="another clip for the video part (repeatable), e.g. the demo clip (default: none)",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        default=["fidelity", "protocol", "speed", "emotions"],
        choices=["fidelity", "protocol", "speed", "emotions"],
        help="which parts of the report to run (default: all)",
    )
    p.set_defaults(func=cmd_evaluate)
