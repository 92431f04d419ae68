"""Inference engines: ONNX Runtime (CPU) now; TensorRT and torch later."""

from __future__ import annotations

import os
from typing import Any

from ..errors import EngineError
from .base import Engine as Engine
from .onnxruntime_engine import OrtEngine as OrtEngine

ENGINE_KINDS = ("onnxruntime", "tensorrt", "torch")


def create_engine(kind: str, onnx_path: str | os.PathLike[str], **opts: Any) -> Engine:
    """Build an engine by kind; ``opts`` go to its constructor (e.g. ``max_batch``, ``intra_op_threads``)."""
    if kind == "onnxruntime":
        return OrtEngine(onnx_path, **opts)
    if kind in ENGINE_KINDS:
        raise EngineError(f"engine kind {kind!r}: not implemented yet: see issue 4")
    raise EngineError(f"unknown engine kind {kind!r}; known: {', '.join(ENGINE_KINDS)}")
