"""Inference engines behind one interface: ONNX Runtime (CPU), TensorRT plans and torch (GPU)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import EngineError
from .base import Engine as Engine
from .onnxruntime_engine import OrtEngine as OrtEngine

ENGINE_KINDS = ("onnxruntime", "tensorrt", "torch")


def create_engine(kind: str, onnx_path: str | os.PathLike[str], **opts: Any) -> Engine:
    """Build an engine by kind; ``opts`` go to its constructor.

    - ``onnxruntime``: :class:`OrtEngine` (``max_batch``, ``intra_op_threads``, ``allow_spinning``).
    - ``tensorrt``: the cached plan of ``onnx_path`` via :func:`~.tensorrt_engine.create_tensorrt_engine`
      (``plan_dir`` required; ``precision``, ``build_on_miss``, ``max_batch``, ``device_index``, ``build_options``).
    - ``torch``: :class:`~.torch_engine.TorchEngine` (``checkpoint``, ``max_batch``, ``device``, ``fp16``,
      ``cuda_graphs``, ``buckets``, ...).

    TensorRT and torch are imported only when their kind is asked for.
    """
    if kind == "onnxruntime":
        return OrtEngine(onnx_path, **opts)
    if kind == "tensorrt":
        from .tensorrt_engine import create_tensorrt_engine

        if opts.get("plan_dir") is None:
            raise EngineError("engine 'tensorrt' needs plan_dir (settings model.plan_dir): the root of the plan cache")
        return create_tensorrt_engine(onnx_path, **opts)
    if kind == "torch":
        from .torch_engine import TorchEngine

        return TorchEngine(onnx_path, **opts)
    raise EngineError(f"unknown engine kind {kind!r}; known: {', '.join(ENGINE_KINDS)}")
