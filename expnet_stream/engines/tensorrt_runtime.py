"""TensorRT runtime: the GPU check, the ``tensorrt`` import, and :class:`TrtEngine` running a plan on a CUDA stream.

TensorRT and torch are imported lazily, so the CPU worker imports this package without them. The narrow adapter that
tests replace is two functions of this module: :func:`cuda_gpu` (the GPU check, which runs before any TensorRT object
is created: a lean TensorRT runtime without a GPU crashes on deserialize) and :func:`load_tensorrt`; every entry
point also takes a ``trt_module`` argument. Device and pinned host buffers are torch tensors, so neither pycuda nor
cuda-python is needed.

Both the plan builder (:mod:`~expnet_stream.engines.tensorrt_build`, which runs a fresh plan for its parity check)
and the cache-backed constructor (:mod:`~expnet_stream.engines.tensorrt_engine`, which builds on a cache miss) import
this module; it imports neither. Callers import these names from ``tensorrt_engine``, which re-exports them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import EngineError
from ..fileio import bytes_sha256
from ..models.contract import PreprocessContract
from .base import Engine
from .manifest import (
    MANIFEST_NAME,
    PLAN_NAME,
    EngineMismatchError,
    Manifest,
    PlanKey,
    TensorRTUnavailableError,
    build_command,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "GpuTarget",
    "TrtEngine",
    "check_manifest_environment",
    "cuda_gpu",
    "load_tensorrt",
    "make_logger",
    "tensorrt_environment",
    "trt_version",
]


# -- the adapter: GPU check and the tensorrt module ------------------------------------------------------------------


@dataclass(frozen=True)
class GpuTarget:
    """The GPU plans are built for / run on.

    Attributes:
        name: device name, e.g. ``NVIDIA L4``.
        compute_capability: ``"major.minor"``, e.g. ``"8.9"``.
        index: CUDA device index.
        torch_device: where buffers live (``cuda:<index>``; only a test's fake TensorRT runs with ``cpu``).
    """

    name: str
    compute_capability: str
    index: int = 0
    torch_device: str = "cuda:0"


def cuda_gpu(index: int = 0) -> GpuTarget:
    """The CUDA device ``index`` as seen by torch, or TensorRTUnavailableError. Creates no TensorRT object."""
    try:
        import torch
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "the TensorRT engine needs torch with CUDA for its buffers and streams; install the 'gpu' extra"
        ) from exc
    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT plans can only be built and run on "
            "a GPU. Use engine 'onnxruntime' on CPU machines, or run the build in the TensorRT image on a GPU node."
        )
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise TensorRTUnavailableError(f"CUDA device {index} does not exist; this machine has {count}")
    torch.cuda.set_device(index)
    major, minor = torch.cuda.get_device_capability(index)
    return GpuTarget(torch.cuda.get_device_name(index), f"{major}.{minor}", index, f"cuda:{index}")


def load_tensorrt() -> Any:
    """Import the ``tensorrt`` module or raise TensorRTUnavailableError."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "TensorRT is not installed: `import tensorrt` failed. Run in the TensorRT image (deploy/tensorrt/"
            f"Dockerfile) or install NVIDIA's tensorrt wheels ({exc})"
        ) from exc
    return tensorrt


def tensorrt_environment(trt_module: Any = None, device_index: int = 0) -> tuple[Any, GpuTarget]:
    """``(tensorrt module, GPU)``: the GPU check first, then the import (or the injected module)."""
    gpu = cuda_gpu(device_index)
    trt = trt_module if trt_module is not None else load_tensorrt()
    return trt, gpu


def trt_version(trt: Any) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards to :mod:`logging` and keeps the last errors for error messages."""
    sev = trt.ILogger.Severity
    levels = {
        sev.INTERNAL_ERROR: logging.ERROR,
        sev.ERROR: logging.ERROR,
        sev.WARNING: logging.WARNING,
        sev.INFO: logging.DEBUG,
        sev.VERBOSE: logging.DEBUG - 1,
    }
    trt_log = logging.getLogger(f"{__name__}.trt")

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: deque[str] = deque(maxlen=20)

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                self.errors.append(str(msg))
            if trt_log.isEnabledFor(level):
                trt_log.log(level, "tensorrt: %s", msg)

    return _Logger()


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    import torch

    if dtype == trt.DataType.FLOAT:
        return torch.float32
    if dtype == trt.DataType.HALF:
        return torch.float16
    raise EngineError(f"unsupported TensorRT I/O dtype {dtype}; ExpNet plans take and return float32 or float16")


# -- the engine ------------------------------------------------------------------------------------------------------


def _resolve(plan: Path) -> tuple[Path, Path]:
    """``(plan file, manifest file)`` of a plan folder or a plan file."""
    if plan.is_dir():
        return plan / PLAN_NAME, plan / MANIFEST_NAME
    return plan, plan.parent / MANIFEST_NAME


def check_manifest_environment(manifest: Manifest, trt: Any, gpu: GpuTarget, *, plan: Path | None = None) -> None:
    """Refuse a plan built for another GPU type or TensorRT version (EngineMismatchError naming the fields)."""
    here = PlanKey(
        manifest.model_hash, gpu.name, gpu.compute_capability, trt_version(trt), manifest.precision, manifest.model_id
    )
    diffs = here.differences(manifest.key)
    if diffs:
        command = build_command(manifest.onnx_file, "<plan-cache-dir>", manifest.precision, manifest.max_batch)
        text = "; ".join(f"{n}: this machine has {e!r}, the plan was built for {f!r}" for n, e, f in diffs)
        raise EngineMismatchError(
            f"refusing TensorRT plan {plan or ''} of {manifest.model_id}: {text}. Build a plan on this GPU type with: "
            f"{command}",
            differences=diffs,
            command=command,
        )


class TrtEngine(Engine):
    """ExpNet as a TensorRT plan.

    Args:
        plan: a plan folder (``model.plan`` + ``manifest.json``) or a plan file with ``manifest.json`` beside it.
        manifest: use this manifest instead of reading it.
        max_batch: largest batch per execution; default and upper bound: the plan's profile max.
        device_index: CUDA device.
        trt_module: an already imported ``tensorrt`` (tests inject a fake here).
        verify_plan_hash: check the plan file's SHA-256 against the manifest before deserializing it.

    The plan must have been built for this GPU type and TensorRT version (EngineMismatchError otherwise). Inputs are
    copied into a pinned host buffer, then to a device buffer on the engine's CUDA stream; shapes are set per batch
    (``set_input_shape``), the plan runs with ``execute_async_v3`` and the output comes back through a pinned buffer.
    Batches below the profile's min batch are zero-padded; bigger ones are chunked by ``max_batch``. When the contract
    names an emotion output and the plan has it, :meth:`infer_all` returns it too (same stream, one more copy).
    """

    name = "tensorrt"
    _d_emo: Any = None
    _h_emo: Any = None

    def __init__(
        self,
        plan: str | os.PathLike[str],
        *,
        manifest: Manifest | None = None,
        max_batch: int | None = None,
        device_index: int = 0,
        trt_module: Any = None,
        verify_plan_hash: bool = True,
    ) -> None:
        plan_path, manifest_path = _resolve(Path(plan))
        self.plan_path = plan_path
        self.manifest = manifest if manifest is not None else Manifest.from_json(manifest_path)
        self.contract: PreprocessContract = self.manifest.contract
        self.model_id = self.contract.model_id
        # GPU check before any TensorRT object exists.
        trt, gpu = tensorrt_environment(trt_module, device_index)
        if not gpu.torch_device.startswith("cuda") and trt_module is None:
            raise TensorRTUnavailableError(f"TensorRT needs CUDA buffers, got device {gpu.torch_device!r}")
        check_manifest_environment(self.manifest, trt, gpu, plan=plan_path)
        self._trt = trt
        self.gpu = gpu
        try:
            data = plan_path.read_bytes()
        except OSError as exc:
            raise EngineError(f"cannot read TensorRT plan {plan_path}: {exc}") from exc
        if verify_plan_hash:
            digest = bytes_sha256(data)
            if digest != self.manifest.plan_sha256:
                raise EngineMismatchError(
                    f"refusing TensorRT plan {plan_path}: sha256 {digest[:16]}... differs from its manifest's "
                    f"{self.manifest.plan_sha256[:16]}... (the plan was replaced or is corrupt); rebuild it"
                )
        self._lock = threading.Lock()
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise EngineError(
                f"TensorRT could not deserialize {plan_path}: {'; '.join(self._logger.errors) or 'no error reported'}"
            )
        self._in_name, self._out_names, profile_min, profile_max = self._check_io()
        self.min_batch = profile_min
        limit = profile_max
        if max_batch is not None and max_batch < 1:
            raise EngineError(f"max_batch must be >= 1, got {max_batch}")
        if max_batch is not None and max_batch > limit:
            logger.info("max_batch=%d above the plan's profile max %d: chunking by %d", max_batch, limit, limit)
        self.max_batch = min(max_batch, limit) if max_batch is not None else limit
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {plan_path} (out of GPU memory?)")
        self._alloc()
        logger.info(
            "tensorrt engine loaded plan=%s model_id=%s precision=%s gpu=%s max_batch=%d tensorrt=%s",
            plan_path,
            self.model_id,
            self.manifest.precision,
            gpu.name,
            self.max_batch,
            trt_version(trt),
        )

    # -- setup ---------------------------------------------------------------------------------------------------

    def _check_io(self) -> tuple[str, list[str], int, int]:
        trt, eng, c = self._trt, self._engine, self.contract
        inputs: list[str] = []
        outputs: list[str] = []
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            (inputs if eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
        if inputs != [c.input_name] or c.output_name not in outputs:
            raise EngineError(
                f"{self.plan_path} has inputs {inputs} / outputs {outputs}; the contract says "
                f"{c.input_name!r} -> {c.output_name!r}"
            )
        shape = tuple(eng.get_tensor_shape(c.input_name))
        if len(shape) != 4 or shape[1:] != (3, c.input_size, c.input_size):
            raise EngineError(f"{self.plan_path} input shape {shape} does not match contract input_size {c.input_size}")
        if shape[0] >= 0:
            return inputs[0], outputs, shape[0], shape[0]
        lo, _opt, hi = (tuple(s) for s in eng.get_tensor_profile_shape(c.input_name, 0))
        return inputs[0], outputs, int(lo[0]), int(hi[0])

    def _alloc(self) -> None:
        import torch

        trt, eng = self._trt, self._engine
        device = torch.device(self.gpu.torch_device)
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device=device) if self._cuda else None
        rows = max(self.max_batch, self.min_batch)

        def buffers(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            dims = [int(d) for d in eng.get_tensor_shape(name)]
            if any(d < 0 for d in dims[1:]):
                raise EngineError(f"{self.plan_path}: tensor {name!r} has dynamic non-batch dims {dims}")
            shape = (rows, *dims[1:])
            dtype = _torch_dtype(trt, eng.get_tensor_dtype(name))
            dev = torch.empty(shape, dtype=dtype, device=device)
            host = torch.empty(shape, dtype=dtype, pin_memory=True) if self._cuda else dev
            return dev, host

        self._d_in, self._h_in = buffers(self._in_name)
        outs = {n: buffers(n) for n in self._out_names}
        self._d_out, self._h_out = outs[self.contract.output_name]
        emo_name = self.contract.emotion_output_name
        self._d_emo, self._h_emo = outs[emo_name] if emo_name is not None and emo_name in outs else (None, None)
        for name, (dev, _) in [(self._in_name, (self._d_in, self._h_in)), *outs.items()]:
            if not self._context.set_tensor_address(name, dev.data_ptr()):
                raise EngineError(f"TensorRT refused the device buffer of {name!r}")
        self._keep = outs  # extra outputs must stay allocated

    # -- inference -----------------------------------------------------------------------------------------------

    @property
    def has_emotion_output(self) -> bool:
        return self._d_emo is not None

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.infer_all(batch)[0]

    def infer_all(
        self, batch: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        if self._context is None:
            raise EngineError(f"engine for {self.model_id} is closed")
        x = self.check_batch(batch)
        out = np.empty((x.shape[0], self.contract.num_coeffs), np.float32)
        emo = (
            np.empty((x.shape[0], len(self.contract.emotion_classes)), np.float32) if self.has_emotion_output else None
        )
        with self._lock:
            for part in self.iter_chunks(x.shape[0]):
                out[part], e = self._run(x[part])
                if emo is not None and e is not None:
                    emo[part] = e
        return out, emo

    def _run(self, chunk: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        import torch

        n = chunk.shape[0]
        m = max(n, self.min_batch)
        self._h_in[:n].copy_(torch.from_numpy(chunk))
        if m > n:
            self._h_in[n:m].zero_()
        s = self.contract.input_size
        if not self._context.set_input_shape(self._in_name, (m, 3, s, s)):
            raise EngineError(f"TensorRT rejected input shape {(m, 3, s, s)} for {self.model_id}")
        got = tuple(self._context.get_tensor_shape(self.contract.output_name))
        if got != (m, self.contract.num_coeffs):
            raise EngineError(f"TensorRT output shape {got} for batch {m}; expected {(m, self.contract.num_coeffs)}")
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                self._d_in[:m].copy_(self._h_in[:m], non_blocking=True)
                ok = self._context.execute_async_v3(self._stream.cuda_stream)
                self._h_out[:m].copy_(self._d_out[:m], non_blocking=True)
                if self._d_emo is not None and self._h_emo is not None:
                    self._h_emo[:m].copy_(self._d_emo[:m], non_blocking=True)
            self._stream.synchronize()
        else:
            ok = self._context.execute_async_v3(0)
        if not ok:
            raise EngineError(
                f"TensorRT execution failed for {self.model_id} on batch {m}: {'; '.join(self._logger.errors)}"
            )
        result: npt.NDArray[np.float32] = self._h_out[:n].float().numpy().copy()
        emotions = None if self._h_emo is None else self._h_emo[:n].float().numpy().copy()
        return result, emotions

    def close(self) -> None:
        with self._lock:
            self._context = None
            self._engine = None
            self._runtime = None
            self._keep = {}
            self._d_in = self._h_in = self._d_out = self._h_out = None  # type: ignore[assignment]
