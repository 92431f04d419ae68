"""``expnet-stream export-onnx MODEL --out FILE``: a registered model (untrained, or a checkpoint's weights) as ONNX,
with its contract beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``export-onnx`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser("export-onnx", help="export a registered model (or checkpoint) to ONNX + contract")
    s.add_argument("model", help="registered model name, e.g. expnet_resnet101")
    s.add_argument("--out", required=True, help="ONNX file to write; its .contract.json is written beside it")
    s.add_argument("--checkpoint", default=None, help="trained checkpoint to export (default: untrained weights)")
    s.add_argument("--seed", type=int, default=0, help="seed of the untrained weights (without --checkpoint)")
    s.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..models.export import export_onnx
    from ..models.registry import create_model, load_checkpoint

    if args.checkpoint:
        model, contract = load_checkpoint(args.checkpoint)
    else:
        model, contract = create_model(args.model, seed=args.seed)
    path = export_onnx(model, contract, Path(args.out))
    print(f"wrote {path} ({contract.model_id})", file=sys.stderr)
    return 0
