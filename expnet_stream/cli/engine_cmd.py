"""``expnet-stream build-engine`` and ``expnet-stream engine-info``: thin commands over the engine build library.

Exit codes of ``build-engine``: 0 built (or already present with ``--skip-existing``), 3 the plan failed the parity
check against ONNX Runtime, 4 TensorRT or a CUDA GPU is unavailable here, 5 the build failed (parser/builder errors),
2 any other expnet-stream error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["EXIT_BUILD_FAILED", "EXIT_PARITY", "EXIT_UNAVAILABLE", "register"]

EXIT_PARITY = 3
EXIT_UNAVAILABLE = 4
EXIT_BUILD_FAILED = 5


def cmd_build_engine(args: argparse.Namespace) -> int:
    from ..engines.manifest import EngineBuildError, ParityError, PlanCache, TensorRTUnavailableError
    from ..engines.tensorrt_build import build_engine

    if args.calib is not None and not args.int8:
        print("expnet-stream: error: --calib is only used with --int8", file=sys.stderr)
        return 2
    try:
        manifest = build_engine(
            args.onnx,
            args.out,
            fp16=args.fp16,
            int8=args.int8,
            calib_dir=args.calib,
            calib_detector=args.calib_detector,
            min_batch=args.min_batch,
            opt_batch=args.opt_batch,
            max_batch=args.max_batch,
            workspace_mb=args.workspace_mb,
            timing_cache=args.timing_cache,
            tolerance=args.tolerance,
            parity_dir=args.parity_images,
            keyed=args.keyed,
            skip_existing=args.skip_existing,
            device_index=args.device,
        )
    except TensorRTUnavailableError as exc:
        print(f"expnet-stream: TensorRT unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ParityError as exc:
        print(f"expnet-stream: parity check failed: {exc}", file=sys.stderr)
        return EXIT_PARITY
    except EngineBuildError as exc:
        print(f"expnet-stream: engine build failed: {exc}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    plan_dir = PlanCache(args.out).dir_for(manifest.key) if args.keyed else Path(args.out)
    print(manifest.summary(), file=sys.stderr)
    print(plan_dir)
    return 0


def _info(path: Path) -> tuple[list[tuple[Path, Any]], bool]:
    """``([(manifest path, manifest)], is_cache_root)``."""
    from ..engines.manifest import MANIFEST_NAME, Manifest, PlanCache

    if path.is_file():
        return [(path, Manifest.from_json(path))], False
    if (path / MANIFEST_NAME).is_file():
        return [(path / MANIFEST_NAME, Manifest.from_json(path / MANIFEST_NAME))], False
    return [(e.directory / MANIFEST_NAME, e.manifest) for e in PlanCache(path).entries()], True


def cmd_engine_info(args: argparse.Namespace) -> int:
    found, is_root = _info(Path(args.path))
    if not found:
        print(f"expnet-stream: no plan manifest in {args.path}", file=sys.stderr)
        return 1
    if args.json:
        docs = [m.model_dump(mode="json") for _, m in found]
        print(json.dumps(docs if is_root else docs[0], indent=2))
        return 0
    for i, (path, manifest) in enumerate(found):
        if i:
            print()
        print(f"# {path}")
        print(manifest.summary())
    return 0


def register(subparsers: Any) -> None:
    """Add ``build-engine`` and ``engine-info`` to the ``expnet-stream`` sub-command parsers."""
    s = subparsers.add_parser(
        "build-engine",
        help="build a TensorRT plan from an ONNX export, check it against ONNX Runtime, write it with its manifest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--onnx", required=True, type=Path, help="ONNX file with its .contract.json (export-onnx)")
    s.add_argument("--out", required=True, type=Path, help="output folder (with --keyed: the plan cache root)")
    s.add_argument("--keyed", action="store_true", help="write into OUT/<model>/<hash>/<gpu>/<trt>/<precision>/")
    s.add_argument("--skip-existing", action="store_true", help="exit 0 without building when a valid plan exists")
    s.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    s.add_argument("--int8", action="store_true", help="INT8 (explicit Q/DQ in the ONNX, else calibrate on --calib)")
    s.add_argument(
        "--calib", type=Path, default=None, help="folder of face images for INT8 calibration (default: none)"
    )
    s.add_argument(
        "--calib-detector",
        default=None,
        help="detect faces in --calib images with this plugin (default: images are crops)",
    )
    s.add_argument("--min-batch", type=int, default=1, help="smallest batch of the optimisation profile")
    s.add_argument("--opt-batch", type=int, default=8, help="batch the kernels are tuned for")
    s.add_argument("--max-batch", type=int, default=32, help="largest batch of the optimisation profile")
    s.add_argument("--workspace-mb", type=int, default=4096, help="builder workspace memory pool limit")
    s.add_argument(
        "--timing-cache", type=Path, default=None, help="persistent timing cache file, read and updated (default: none)"
    )
    s.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest accepted max|plan-ORT|/max|ORT| (default fp32 5e-3, fp16 2e-2, int8 1e-1)",
    )
    s.add_argument(
        "--parity-images", type=Path, default=None, help="face images for the parity check (default --calib, astronaut)"
    )
    s.add_argument("--device", type=int, default=0, help="CUDA device index")
    s.set_defaults(func=cmd_build_engine)

    s = subparsers.add_parser("engine-info", help="print the manifest of a plan folder, a manifest or a plan cache")
    s.add_argument("path", help="plan folder, manifest.json, or plan cache root (lists every plan)")
    s.add_argument("--json", action="store_true", help="print the manifest(s) as JSON")
    s.set_defaults(func=cmd_engine_info)
