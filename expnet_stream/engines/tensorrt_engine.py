"""TensorRT engine from the plan cache: :func:`create_tensorrt_engine`, and the runtime names re-exported.

TensorRT and torch are imported lazily, so the CPU worker imports this package without them. The runtime itself
(:class:`TrtEngine`, the GPU check :func:`cuda_gpu` and :func:`load_tensorrt`, the adapter tests replace) lives in
:mod:`~expnet_stream.engines.tensorrt_runtime`; this module adds the cache lookup, which builds a missing plan with
:func:`~expnet_stream.engines.tensorrt_build.build_engine` when asked to. Dependencies run one way:
``tensorrt_engine -> tensorrt_build -> tensorrt_runtime``.

Typical use (what ``create_engine("tensorrt", ...)`` does)::

    engine = create_tensorrt_engine("model.onnx", plan_dir="/plans", precision="fp16", max_batch=32)
    coeffs = engine.infer(batch)  # (N, 3, S, S) float32 -> (N, 29) float32
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import EngineError, ModelError
from ..models.contract import PreprocessContract, contract_path_for
from .manifest import Manifest, PlanCache, PlanKey, compute_model_hash, file_sha256, precision_flags
from .tensorrt_build import build_engine
from .tensorrt_runtime import GpuTarget as GpuTarget
from .tensorrt_runtime import TrtEngine as TrtEngine
from .tensorrt_runtime import check_manifest_environment as check_manifest_environment
from .tensorrt_runtime import cuda_gpu as cuda_gpu
from .tensorrt_runtime import load_tensorrt as load_tensorrt
from .tensorrt_runtime import make_logger as make_logger
from .tensorrt_runtime import tensorrt_environment as tensorrt_environment
from .tensorrt_runtime import trt_version as trt_version

logger = logging.getLogger(__name__)

__all__ = [
    "GpuTarget",
    "TrtEngine",
    "check_manifest_environment",
    "create_tensorrt_engine",
    "cuda_gpu",
    "load_tensorrt",
    "make_logger",
    "tensorrt_environment",
    "trt_version",
]


# -- cache-backed construction ---------------------------------------------------------------------------------------


def create_tensorrt_engine(
    onnx_path: str | os.PathLike[str],
    *,
    plan_dir: str | os.PathLike[str],
    precision: str = "fp16",
    build_on_miss: bool = False,
    max_batch: int = 32,
    device_index: int = 0,
    build_options: dict[str, Any] | None = None,
    trt_module: Any = None,
    **ignored: Any,
) -> TrtEngine:
    """The TensorRT engine of ``onnx_path`` from the plan cache at ``plan_dir``.

    The plan is looked up by (model hash, GPU name and compute capability, TensorRT version, precision); a miss or a
    mismatch raises :class:`~expnet_stream.engines.manifest.EngineMismatchError` saying which field differs and how to
    build the right plan, unless ``build_on_miss`` builds it here (minutes; ``build_options`` go to
    :func:`~expnet_stream.engines.tensorrt_build.build_engine`). ``ignored`` takes CPU-engine options
    (``intra_op_threads``, ``allow_spinning``) that do not apply.
    """
    if ignored:
        logger.debug("tensorrt engine ignores options %s", sorted(ignored))
    onnx_path = Path(onnx_path)
    trt, gpu = tensorrt_environment(trt_module, device_index)
    try:
        contract = PreprocessContract.from_json(contract_path_for(onnx_path))
    except ModelError as exc:
        raise EngineError(f"cannot read the contract of {onnx_path}: {exc}") from exc
    try:
        onnx_sha = file_sha256(onnx_path)
    except OSError as exc:
        raise EngineError(f"cannot read {onnx_path}: {exc}") from exc
    fp16, int8 = precision_flags(precision)
    model_hash = compute_model_hash(contract, onnx_sha)
    key = PlanKey(model_hash, gpu.name, gpu.compute_capability, trt_version(trt), precision, contract.model_id)
    build: Callable[[Path], Manifest] | None = None
    if build_on_miss:
        opts = {"max_batch": max_batch, **(build_options or {})}
        build = functools.partial(
            build_engine, onnx_path, fp16=fp16, int8=int8, device_index=device_index, trt_module=trt, **opts
        )
    found = PlanCache(plan_dir).find(key, onnx_path=onnx_path, build=build, max_batch=max_batch)
    return TrtEngine(
        found.plan_path, manifest=found.manifest, max_batch=max_batch, device_index=device_index, trt_module=trt
    )
