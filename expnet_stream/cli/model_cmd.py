"""``expnet-stream import-official DIR --out CKPT [--onnx FILE]``: convert the released ExpNet weights.

DIR holds the official release (fengju514/Expression-Net): ``ini_exprNet_model.ckpt.index`` / ``.data-00000-of-00001``
and ``3DMM_expr_mean.npy`` (as unpacked from ``Expression_Model.tar.gz``), optionally ``ExpNet_fc_weights.npz``; the
files may also sit in DIR's ``Expression_Model/`` and ``ResNet/`` subfolders (the repository layout). TensorFlow is not
needed. The checkpoint (and the ONNX file) get the mean image copied beside them as ``<stem>.mean.npy``.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``import-official`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser(
        "import-official",
        help="convert the official ExpNet TF checkpoint into an expnet-stream checkpoint (+ ONNX)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("dir", metavar="DIR", help="folder with ini_exprNet_model.ckpt.* and 3DMM_expr_mean.npy")
    s.add_argument("--out", required=True, help="checkpoint file to write (load with load_checkpoint / --checkpoint)")
    s.add_argument(
        "--onnx",
        default=None,
        help="also export ONNX (checked against torch) with its contract here (default: no ONNX)",
    )
    s.add_argument("--no-verify", action="store_true", help="skip the crc32c check of the tensor data")
    s.set_defaults(func=cmd_import_official)


def cmd_import_official(args: argparse.Namespace) -> int:
    from ..models.official import convert_official

    ckpt, onnx = convert_official(args.dir, args.out, onnx=args.onnx, verify=not args.no_verify)
    print(f"wrote {ckpt}" + (f" and {onnx}" if onnx else ""), file=sys.stderr)
    return 0
