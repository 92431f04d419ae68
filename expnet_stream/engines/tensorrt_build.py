"""Build a TensorRT plan from an ExpNet ONNX file, prove it against ONNX Runtime, and write it with its manifest.

:func:`build_engine` is the library function behind ``expnet-stream build-engine``. It lazy-imports TensorRT (after
the GPU check) and:

1. parses the ONNX file (parser errors are reported with node index, name and operator),
2. configures the builder: workspace pool limit, FP16, INT8 (explicit Q/DQ quantization when the ONNX has it, else an
   entropy calibrator over real face crops from a folder), one optimization profile on the dynamic batch axis and a
   persistent timing cache (loaded before, saved after the build),
3. runs the plan and ONNX Runtime on real face crops (the folder given, else scikit-image's astronaut) at the profile's
   min, opt and max batch and raises :class:`~expnet_stream.engines.manifest.ParityError` when the relative error
   exceeds the tolerance; the plan is then kept only as ``model.plan.rejected`` next to ``manifest.rejected.json``,
4. installs ``model.plan`` and writes ``manifest.json`` last, so a reader never sees an unchecked plan.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import EngineError, ModelError
from ..fileio import Buffer, atomic_write_bytes, bytes_sha256, staged_path
from ..models.contract import PreprocessContract, contract_path_for
from .base import Engine
from .calibration import face_crops_from_dir, fill_batches, make_calibrator, parity_crops
from .manifest import (
    MANIFEST_NAME,
    PLAN_NAME,
    REJECTED_MANIFEST_NAME,
    CachedPlan,
    EngineBuildError,
    Manifest,
    ParityError,
    ParityReport,
    PlanCache,
    PlanKey,
    Profile,
    compute_model_hash,
    file_sha256,
    plan_problem,
    precision_name,
    utc_now,
)
from .tensorrt_runtime import TrtEngine, make_logger, tensorrt_environment, trt_version

logger = logging.getLogger(__name__)

__all__ = ["CALIBRATION_CACHE_NAME", "DEFAULT_TOLERANCE", "build_engine"]

# Largest accepted max|plan - ORT| / max|ORT| per precision (fp32 builds may use TF32 on Ampere and newer).
DEFAULT_TOLERANCE = {"fp32": 5e-3, "fp16": 2e-2, "int8": 1e-1, "int8-fp16": 1e-1}
CALIBRATION_CACHE_NAME = "int8-calibration.cache"

# -- builder pieces --------------------------------------------------------------------------------------------------


def _parser_errors(parser: Any) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = [f"node {err.node()}"]
        for attr, label in (("node_name", "name"), ("node_operator", "op")):
            fn = getattr(err, attr, None)  # TensorRT >= 10 only
            value = fn() if callable(fn) else None
            if value:
                where.append(f"{label} {value!r}")
        code = getattr(err, "code", None)
        lines.append(f"[{code() if callable(code) else '?'}] {' '.join(where)}: {err.desc()}")
    return "\n  ".join(lines)


def _network_flags(trt: Any) -> int:
    """0 on TensorRT >= 10 (explicit batch is the only mode); the EXPLICIT_BATCH flag on older releases."""
    try:
        major = int(trt_version(trt).split(".")[0])
    except ValueError:
        major = 10
    return 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _has_qdq(onnx_bytes: bytes) -> bool:
    """True when the ONNX graph holds QuantizeLinear / DequantizeLinear nodes (explicit INT8 quantization)."""
    try:
        import onnx
    except ImportError:
        return b"QuantizeLinear" in onnx_bytes
    model = onnx.load_from_string(onnx_bytes)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def _atomic_write(path: Path, data: Buffer) -> None:
    """Write a plan-side file (timing cache, calibration cache, rejected plan) 0644 via :mod:`expnet_stream.fileio`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise EngineBuildError(f"cannot write {path}: {exc}") from exc


# -- parity ----------------------------------------------------------------------------------------------------------


def _parity(
    engine: Engine,
    onnx_path: Path,
    contract: PreprocessContract,
    x: npt.NDArray[np.float32],
    sizes: list[int],
    *,
    tolerance: float,
    source: str,
) -> ParityReport:
    from .onnxruntime_engine import OrtEngine

    with OrtEngine(onnx_path, contract=contract, max_batch=max(sizes)) as ort_engine:
        ref = ort_engine.infer(x)
    diff, scale = 0.0, float(np.max(np.abs(ref))) if ref.size else 0.0
    for b in sizes:
        got = engine.infer(x[:b])
        d = float(np.max(np.abs(got - ref[:b]))) if b else 0.0
        diff = max(diff, d) if np.isfinite(d) else float("nan")
        if not np.isfinite(diff):
            break
    rel = diff / max(scale, 1e-12)
    return ParityReport(
        source=source,
        samples=int(x.shape[0]),
        batch_sizes=tuple(sizes),
        max_abs_diff=diff,
        max_abs_reference=scale,
        rel_error=rel,
        tolerance=tolerance,
        passed=bool(rel <= tolerance),  # False for NaN
    )


# -- the build -------------------------------------------------------------------------------------------------------


def _existing(target: Path, key: PlanKey) -> Manifest | None:
    """The manifest of a valid plan of ``key`` already in ``target``, else None."""
    path = target / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = Manifest.from_json(path)
    except EngineError:
        return None
    if manifest.key != key or plan_problem(CachedPlan(target / manifest.plan_file, manifest)) is not None:
        return None
    return manifest


def build_engine(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fp16: bool = False,
    int8: bool = False,
    calib_dir: str | os.PathLike[str] | None = None,
    calib_detector: str | None = None,
    calib_max_images: int = 512,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    workspace_mb: int = 4096,
    timing_cache: str | os.PathLike[str] | None = None,
    tolerance: float | None = None,
    parity_dir: str | os.PathLike[str] | None = None,
    keyed: bool = False,
    skip_existing: bool = False,
    device_index: int = 0,
    trt_module: Any = None,
) -> Manifest:
    """Build, check and write the TensorRT plan of ``onnx_path``; returns its manifest.

    Args:
        onnx_path: ExpNet ONNX file with its ``.contract.json`` beside it (as written by ``export-onnx``).
        out_dir: folder receiving ``model.plan`` + ``manifest.json``; with ``keyed`` a plan cache root, the plan going
            to the folder of its key (:meth:`PlanCache.dir_for`), which is what workers look up.
        fp16, int8: precision flags (INT8 with FP16 gives ``int8-fp16``: FP16 where a layer is not quantized).
        calib_dir: face images for INT8 calibration (not needed when the ONNX is explicitly quantized with Q/DQ).
        calib_detector: detector plugin used to find faces in ``calib_dir`` images; None: the images are crops.
        min_batch, opt_batch, max_batch: optimization profile of the dynamic batch axis.
        workspace_mb: builder workspace memory pool limit.
        timing_cache: file of the persistent timing cache (read when present, written after the build).
        tolerance: largest accepted ``max|plan - ORT| / max|ORT|``; default per precision (:data:`DEFAULT_TOLERANCE`).
        parity_dir: face images for the parity check; default ``calib_dir``, else scikit-image's astronaut.
        skip_existing: return the existing manifest when the target already holds a valid plan of the same key.
        device_index: CUDA device to build on.
        trt_module: an imported ``tensorrt`` module (tests inject a fake).

    Raises:
        TensorRTUnavailableError: no CUDA GPU or no TensorRT (before any TensorRT object is created).
        EngineBuildError: bad arguments, ONNX parser errors (with node names), builder failure.
        ParityError: the plan differs from ONNX Runtime beyond the tolerance (the plan is not installed).
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise EngineBuildError(
            f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}/{opt_batch}/{max_batch}"
        )
    if workspace_mb < 1:
        raise EngineBuildError(f"workspace_mb must be >= 1, got {workspace_mb}")
    trt, gpu = tensorrt_environment(trt_module, device_index)  # GPU check before any TensorRT object
    try:
        contract = PreprocessContract.from_json(contract_path_for(onnx_path))
        onnx_bytes = onnx_path.read_bytes()
    except (ModelError, OSError) as exc:
        raise EngineBuildError(f"cannot read {onnx_path} and its contract: {exc}") from exc
    onnx_sha = file_sha256(onnx_path)
    precision = precision_name(fp16=fp16, int8=int8)
    tol = DEFAULT_TOLERANCE[precision] if tolerance is None else tolerance
    key = PlanKey(
        compute_model_hash(contract, onnx_sha),
        gpu.name,
        gpu.compute_capability,
        trt_version(trt),
        precision,
        contract.model_id,
    )
    target = PlanCache(out_dir).dir_for(key) if keyed else out_dir
    if skip_existing and (found := _existing(target, key)) is not None:
        logger.info("valid plan already present, not rebuilding dir=%s model_id=%s", target, key.model_id)
        return found
    target.mkdir(parents=True, exist_ok=True)
    log = make_logger(trt)
    started = time.monotonic()
    logger.info(
        "building tensorrt plan onnx=%s model_id=%s precision=%s gpu=%s sm=%s tensorrt=%s profile=%d/%d/%d",
        onnx_path, contract.model_id, precision, gpu.name, gpu.compute_capability, key.tensorrt_version,
        min_batch, opt_batch, max_batch,
    )  # fmt: skip

    builder = trt.Builder(log)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_bytes, str(onnx_path)):
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  {_parser_errors(parser)}")
    s = contract.input_size
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if [t.name for t in inputs] != [contract.input_name] or contract.output_name not in outputs:
        raise EngineBuildError(
            f"{onnx_path} has inputs {[t.name for t in inputs]} / outputs {outputs}; the contract says "
            f"{contract.input_name!r} -> {contract.output_name!r}"
        )
    in_shape = tuple(inputs[0].shape)
    if len(in_shape) != 4 or in_shape[1:] != (3, s, s):
        raise EngineBuildError(f"{onnx_path} input shape {in_shape} does not match contract input_size {s}")
    if in_shape[0] >= 0 and not in_shape[0] == min_batch == opt_batch == max_batch:
        raise EngineBuildError(
            f"{onnx_path} has a fixed batch of {in_shape[0]}; export it with a dynamic batch axis (export-onnx does)"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    shapes = [(b, 3, s, s) for b in (min_batch, opt_batch, max_batch)]
    profile.set_shape(contract.input_name, *shapes)
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the optimization profile {shapes}")
    if fp16:
        if getattr(builder, "platform_has_fast_fp16", True) is False:
            logger.warning("gpu=%s has no fast FP16; building FP16 anyway", gpu.name)
        config.set_flag(trt.BuilderFlag.FP16)
    builder_info: dict[str, str | int | float | bool | None] = {
        "workspace_mb": workspace_mb,
        "timing_cache": str(timing_cache) if timing_cache else None,
        "int8_mode": None,
        "calibration_source": None,
    }
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        if _has_qdq(onnx_bytes):
            builder_info["int8_mode"] = "explicit-qdq"
        else:
            if calib_dir is None:
                raise EngineBuildError(
                    f"INT8 needs calibration data: pass a folder of face images (--calib DIR), or an ONNX with "
                    f"explicit Q/DQ quantization; {onnx_path} has none"
                )
            crops = face_crops_from_dir(calib_dir, contract, limit=calib_max_images, detector=calib_detector)
            batches = fill_batches(contract.normalize(crops), opt_batch)
            cache_file = target / CALIBRATION_CACHE_NAME
            config.int8_calibrator = make_calibrator(trt, batches, cache_file, gpu.torch_device, _atomic_write)
            config.set_calibration_profile(profile)
            builder_info.update(
                int8_mode="entropy-calibrator-2", calibration_source=str(calib_dir), calibration_crops=len(crops)
            )

    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    tcache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(tcache, False):
        logger.warning("timing cache %s does not fit this GPU / TensorRT; starting a fresh one", cache_path)
        tcache = config.create_timing_cache(b"")
        config.set_timing_cache(tcache, False)
    builder_info["timing_cache_loaded_bytes"] = len(cache_bytes)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build {onnx_path} ({precision}, {gpu.name}): "
            f"{'; '.join(log.errors) or 'no error reported'}"
        )
    plan = memoryview(serialized).cast("B")  # no copy of a large plan; written and hashed from the buffer
    build_seconds = time.monotonic() - started
    if cache_path is not None:
        _atomic_write(cache_path, memoryview(config.get_timing_cache().serialize()).cast("B"))
        logger.info("saved timing cache path=%s", cache_path)

    manifest = Manifest(
        model_id=contract.model_id,
        model_hash=key.model_hash,
        onnx_sha256=onnx_sha,
        onnx_file=str(onnx_path.resolve()),
        tensorrt_version=key.tensorrt_version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        profiles=(
            Profile(input_name=contract.input_name, min_shape=shapes[0], opt_shape=shapes[1], max_shape=shapes[2]),
        ),
        contract=contract,
        plan_sha256=bytes_sha256(plan),
        plan_bytes=len(plan),
        built_at=utc_now(),
        build_seconds=round(build_seconds, 3),
        builder=builder_info,
    )
    try:
        # The plan is staged beside model.plan (0644) and installed by the rename at the end of the block only when
        # the parity check passed; a failed check (or any error) removes the staged file.
        with staged_path(target / PLAN_NAME, suffix=".plan.tmp") as tmp_plan:
            tmp_plan.write_bytes(plan)
            sizes = sorted({min_batch, opt_batch, max_batch})
            crops, source = parity_crops(
                contract, max_batch, folder=parity_dir if parity_dir is not None else calib_dir
            )
            x = contract.normalize(crops)
            with TrtEngine(tmp_plan, manifest=manifest, device_index=device_index, trt_module=trt) as engine:
                report = _parity(engine, onnx_path, contract, x, sizes, tolerance=tol, source=source)
            manifest = manifest.model_copy(update={"parity": report})
            logger.info(
                "parity vs onnxruntime model_id=%s rel_error=%.3g max_abs_diff=%.3g tolerance=%.3g passed=%s",
                contract.model_id, report.rel_error, report.max_abs_diff, tol, report.passed,
            )  # fmt: skip
            if not report.passed:
                rejected = target / f"{PLAN_NAME}.rejected"
                _atomic_write(rejected, plan)
                manifest.model_copy(update={"plan_file": rejected.name}).to_json(target / REJECTED_MANIFEST_NAME)
                raise ParityError(
                    f"TensorRT plan of {contract.model_id} ({precision}, {gpu.name}) differs from ONNX Runtime: "
                    f"relative error {report.rel_error:.3g} (max abs diff {report.max_abs_diff:.3g}, max |output| "
                    f"{report.max_abs_reference:.3g}) > tolerance {tol:.3g} on {report.samples} crops from {source}. "
                    f"Not installed; kept as {rejected} with {target / REJECTED_MANIFEST_NAME}"
                )
            (target / MANIFEST_NAME).unlink(missing_ok=True)  # never leave an old manifest over a new plan
    except OSError as exc:
        raise EngineBuildError(f"cannot write the plan into {target}: {exc}") from exc
    manifest.to_json(target / MANIFEST_NAME)
    for stale in (target / f"{PLAN_NAME}.rejected", target / REJECTED_MANIFEST_NAME):
        stale.unlink(missing_ok=True)
    logger.info("wrote tensorrt plan dir=%s bytes=%d seconds=%.1f", target, len(plan), build_seconds)
    return manifest
