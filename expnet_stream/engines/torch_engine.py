"""torch engine: the same ExpNet weights on CUDA (fp16, fixed batch buckets, optional CUDA graphs), CPU as fallback.

It runs where TensorRT is absent and is what GPU benchmarks use until a machine with TensorRT exists. Weights come
from a checkpoint (:func:`~expnet_stream.models.registry.load_checkpoint`) or, for untrained models, from the
deterministic seed recorded in the ONNX file's contract (``untrained-random-init-seed<N>``: bit-identical weights).
Unless ``verify=False`` the engine proves at start-up that it computes what the ONNX file computes (ONNX Runtime on
one batch, :class:`~expnet_stream.engines.manifest.ParityError` otherwise), so a checkpoint that is not the ONNX's
model is refused instead of silently publishing other numbers.

Batches are padded to fixed bucket sizes (default powers of two up to ``max_batch``), so CUDA sees a handful of
shapes: cuDNN autotunes each once and, with ``cuda_graphs=True``, each bucket is one captured graph replayed per call.
Eval-mode ExpNet treats each sample independently (BatchNorm uses running statistics), so padding rows do not change
the real rows' outputs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import EngineError, ModelError
from ..models.contract import PreprocessContract, contract_path_for
from .base import Engine
from .manifest import ParityError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TOLERANCE", "TorchEngine", "default_buckets"]

_SEED_TAG = re.compile(r"^untrained-random-init-seed(\d+)$")

# Largest accepted max|torch - ORT| / max|ORT| at start-up: fp32 on CPU, fp32 on CUDA (TF32 convs), fp16 on CUDA.
DEFAULT_TOLERANCE = {"cpu-fp32": 1e-3, "cuda-fp32": 5e-3, "cuda-fp16": 2e-2}


def default_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch``.

    >>> default_buckets(12)
    (1, 2, 4, 8, 12)
    """
    if max_batch < 1:
        raise EngineError(f"max_batch must be >= 1, got {max_batch}")
    sizes = [1 << i for i in range(max_batch.bit_length()) if (1 << i) < max_batch]
    return (*sizes, max_batch)


def _load_weights(
    onnx_path: Path | None, checkpoint: Path | None, contract: PreprocessContract | None
) -> tuple[torch.nn.Module, PreprocessContract]:
    from ..models.registry import create_model, load_checkpoint

    if checkpoint is not None:
        try:
            model, ck_contract = load_checkpoint(checkpoint)
        except ModelError as exc:
            raise EngineError(f"torch engine cannot load checkpoint {checkpoint}: {exc}") from exc
        if contract is not None and ck_contract != contract:
            a, b = contract.model_dump(), ck_contract.model_dump()
            diffs = ", ".join(f"{k}: ONNX {a[k]!r} vs checkpoint {b[k]!r}" for k in a if a[k] != b.get(k))
            raise EngineError(f"checkpoint {checkpoint} is not the model of {onnx_path}: {diffs}")
        return model, ck_contract
    if contract is None:
        raise EngineError("torch engine needs an ONNX file (with its contract) or a checkpoint")
    match = _SEED_TAG.match(contract.weights)
    if match is None:
        raise EngineError(
            f"torch engine needs the checkpoint of {contract.model_id} (weights {contract.weights!r} cannot be "
            f"recreated from a seed); set model.checkpoint / pass checkpoint="
        )
    try:
        model, made = create_model(contract.model_name, seed=int(match.group(1)))
    except ModelError as exc:
        raise EngineError(f"torch engine cannot create {contract.model_name}: {exc}") from exc
    if made.model_dump(exclude={"mean_image_path"}) != contract.model_dump(exclude={"mean_image_path"}):
        raise EngineError(f"create_model({contract.model_name!r}) no longer matches the contract of {onnx_path}")
    return model, contract


class TorchEngine(Engine):
    """ExpNet on torch: CUDA when available (fp16, buckets, optional CUDA graphs), else CPU.

    Args:
        onnx_path: ExpNet ONNX file; its contract names the model and (untrained) weights; the reference of the
            start-up parity check. Optional when ``checkpoint`` is given.
        checkpoint: a checkpoint of the same model (required for trained weights).
        max_batch: largest bucket; bigger inputs are chunked.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``; default CUDA when available.
        fp16: half precision; default True on CUDA, never on CPU.
        buckets: batch sizes to pad to (sorted); default :func:`default_buckets` of ``max_batch``.
        cuda_graphs: capture one CUDA graph per bucket (CUDA only; measure whether it pays off on your GPU).
        channels_last: NHWC memory format; default True on CUDA (tensor-core convolutions).
        warmup: run every bucket once at start-up (cuDNN autotuning, graph capture); default True on CUDA.
        verify: compare with ONNX Runtime on one batch at start-up (needs ``onnx_path``).
        tolerance: largest accepted relative error of that check; default per device/precision.
        intra_op_threads: ``torch.set_num_threads`` for CPU (process-wide); None leaves torch's setting.
    """

    name = "torch"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str] | None = None,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        max_batch: int = 32,
        device: str | None = None,
        fp16: bool | None = None,
        buckets: tuple[int, ...] | list[int] | None = None,
        cuda_graphs: bool = False,
        channels_last: bool | None = None,
        warmup: bool | None = None,
        verify: bool = True,
        tolerance: float | None = None,
        intra_op_threads: int | None = None,
        **ignored: Any,
    ) -> None:
        try:
            import torch
        except ImportError as exc:
            raise EngineError("the torch engine needs torch: install the 'gpu' (or 'torch') extra") from exc
        if ignored:
            logger.debug("torch engine ignores options %s", sorted(ignored))
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        onnx_contract = None
        if self.onnx_path is not None:
            try:
                onnx_contract = PreprocessContract.from_json(contract_path_for(self.onnx_path))
            except ModelError as exc:
                raise EngineError(f"cannot read the contract of {self.onnx_path}: {exc}") from exc
        model, contract = _load_weights(
            self.onnx_path, Path(checkpoint) if checkpoint is not None else None, onnx_contract
        )
        self.contract = contract
        self.model_id = contract.model_id
        # With an emotion head the module returns [coefficients | calibrated emotions] as one (N, K + E) tensor, so
        # buckets, padding and CUDA graphs handle one output as before.
        self._emotions = _emotion_width(model, contract)
        if self._emotions:
            model = _joined_outputs(model, contract.emotion_temperature)
        self.buckets = tuple(buckets) if buckets is not None else default_buckets(max_batch)
        if not self.buckets or list(self.buckets) != sorted(set(self.buckets)) or self.buckets[0] < 1:
            raise EngineError(f"buckets must be increasing positive batch sizes, got {self.buckets}")
        self.max_batch = self.buckets[-1]
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise EngineError(f"bad torch device {device!r}: {exc}") from exc
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise EngineError(f"torch engine asked for {device} but torch sees no CUDA GPU")
        if not cuda and fp16:
            logger.warning("fp16 is only used on CUDA; running fp32 on %s", self.device)
        self.fp16 = bool(cuda if fp16 is None else fp16) and cuda
        self.cuda_graphs = bool(cuda_graphs) and cuda
        if cuda_graphs and not cuda:
            logger.info("cuda_graphs needs CUDA; disabled on %s", self.device)
        if intra_op_threads is not None and not cuda:
            torch.set_num_threads(intra_op_threads)
        self._dtype = torch.float16 if self.fp16 else torch.float32
        self._memory_format = torch.channels_last if (cuda if channels_last is None else channels_last) else None
        model = model.to(self.device, dtype=self._dtype).eval()
        if self._memory_format is not None:
            model = model.to(memory_format=self._memory_format)  # type: ignore[call-overload]
        self._model: torch.nn.Module | None = model
        self._lock = threading.Lock()
        self._graphs: dict[int, tuple[Any, torch.Tensor]] = {}
        self._inputs: dict[int, torch.Tensor] = {}
        self._stream = torch.cuda.Stream(device=self.device) if cuda else None
        s = contract.input_size
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed bucket shapes: autotune once per bucket
            self._host_in = torch.empty((self.max_batch, 3, s, s), dtype=torch.float32, pin_memory=True)
            self._host_out = torch.empty(
                (self.max_batch, contract.num_coeffs + self._emotions), dtype=torch.float32, pin_memory=True
            )
        if warmup if warmup is not None else cuda:
            self.warmup()
        logger.info(
            "torch engine loaded model_id=%s device=%s fp16=%s buckets=%s cuda_graphs=%s",
            self.model_id,
            self.device,
            self.fp16,
            self.buckets,
            self.cuda_graphs,
        )
        self.parity_error: float | None = None
        if verify and self.onnx_path is not None:
            self.parity_error = self._verify(tolerance)

    # -- buckets -------------------------------------------------------------------------------------------------

    def bucket_for(self, n: int) -> int:
        """Smallest bucket >= ``n`` (``n <= max_batch``)."""
        for b in self.buckets:
            if b >= n:
                return b
        raise EngineError(f"batch {n} exceeds the largest bucket {self.max_batch}")

    def _input(self, b: int) -> torch.Tensor:
        import torch

        if b not in self._inputs:
            s = self.contract.input_size
            t = torch.zeros((b, 3, s, s), dtype=self._dtype, device=self.device)
            if self._memory_format is not None:
                t = t.contiguous(memory_format=self._memory_format)
            self._inputs[b] = t
        return self._inputs[b]

    def _graph(self, b: int) -> tuple[Any, torch.Tensor]:
        import torch

        if b not in self._graphs:
            if self._model is None:  # pragma: no cover - guarded by infer
                raise EngineError("engine is closed")
            static_in = self._input(b)
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up outside capture (cuDNN autotuning, lazy init)
                    self._model(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._model(static_in)
            self._graphs[b] = (graph, static_out)
            logger.debug("captured cuda graph bucket=%d model_id=%s", b, self.model_id)
        return self._graphs[b]

    def warmup(self) -> None:
        """Run every bucket once (captures CUDA graphs when enabled)."""
        s = self.contract.input_size
        for b in self.buckets:
            self.infer(np.zeros((b, 3, s, s), np.float32))

    # -- inference -----------------------------------------------------------------------------------------------

    @property
    def has_emotion_output(self) -> bool:
        return self._emotions > 0

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self._joined(batch)[:, : self.contract.num_coeffs]

    def infer_all(
        self, batch: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        out = self._joined(batch)
        k = self.contract.num_coeffs
        return np.ascontiguousarray(out[:, :k]), (np.ascontiguousarray(out[:, k:]) if self._emotions else None)

    def _joined(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import torch

        if self._model is None:
            raise EngineError(f"engine for {self.model_id} is closed")
        x = self.check_batch(batch)
        out = np.empty((x.shape[0], self.contract.num_coeffs + self._emotions), np.float32)
        with self._lock, torch.inference_mode():
            for part in self.iter_chunks(x.shape[0]):
                out[part] = self._run(x[part])
        return out

    def _run(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import torch

        model = self._model
        if model is None:
            raise EngineError(f"engine for {self.model_id} is closed")
        n = chunk.shape[0]
        b = self.bucket_for(n)
        if self._stream is None:  # CPU: pad into a fresh bucket-sized tensor
            x = torch.zeros((b, *chunk.shape[1:]), dtype=torch.float32)
            x[:n] = torch.from_numpy(chunk)
            y = model(x)
            cpu_out: npt.NDArray[np.float32] = y[:n].float().numpy().copy()
            return cpu_out
        self._host_in[:n].copy_(torch.from_numpy(chunk))
        with torch.cuda.stream(self._stream):
            static_in = self._input(b)
            static_in[:n].copy_(self._host_in[:n], non_blocking=True)
            if b > n:
                static_in[n:].zero_()
            if self.cuda_graphs:
                graph, y = self._graph(b)
                graph.replay()
            else:
                y = model(static_in)
            self._host_out[:n].copy_(y[:n].float(), non_blocking=True)
        self._stream.synchronize()
        gpu_out: npt.NDArray[np.float32] = self._host_out[:n].numpy().copy()
        return gpu_out

    def _verify(self, tolerance: float | None) -> float:
        """Relative error vs ONNX Runtime on a pixel-like batch of 3 (padded to a bucket); ParityError beyond tol."""
        from .onnxruntime_engine import OrtEngine

        if self.onnx_path is None:
            raise EngineError("the parity check needs the ONNX file")
        key = f"{self.device.type}-{'fp16' if self.fp16 else 'fp32'}"
        tol = DEFAULT_TOLERANCE[key] if tolerance is None else tolerance
        s = self.contract.input_size
        x = np.random.default_rng(0).uniform(-127.5, 127.5, (3, 3, s, s)).astype(np.float32)
        with OrtEngine(self.onnx_path, contract=self.contract, max_batch=3, intra_op_threads=1) as ort_engine:
            ref = ort_engine.infer(x)
        got = self.infer(x)
        rel = float(np.max(np.abs(got - ref))) / max(float(np.max(np.abs(ref))), 1e-12)
        logger.info(
            "torch engine parity vs onnxruntime model_id=%s rel_error=%.3g tolerance=%.3g", self.model_id, rel, tol
        )
        if not rel <= tol:  # also NaN
            raise ParityError(
                f"torch engine ({self.device}, {'fp16' if self.fp16 else 'fp32'}) differs from ONNX Runtime on "
                f"{self.onnx_path}: relative error {rel:.3g} > tolerance {tol:.3g}; are the weights the ONNX's?"
            )
        return rel

    def close(self) -> None:
        with self._lock:
            self._model = None
            self._graphs.clear()
            self._inputs.clear()


def _emotion_width(model: Any, contract: PreprocessContract) -> int:
    """Columns of the model's emotion output the engine returns (0: none, or the contract and weights disagree)."""
    n = len(contract.emotion_classes)
    if contract.emotion_output_name is None or n == 0:
        return 0
    if getattr(model, "num_emotions", 0) != n:
        logger.warning(
            "contract of %s names %d emotion classes but the weights have no such head: coefficients only",
            contract.model_id,
            n,
        )
        return 0
    return n


def _joined_outputs(model: Any, temperature: float) -> Any:
    """``x -> cat([coefficients, softmax(logits / temperature)], 1)``: one output tensor for buckets and graphs."""
    import torch

    from ..models.expnet import ExpNetWithEmotions

    class _Joined(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = ExpNetWithEmotions(model, temperature)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat(self.inner(x), dim=1)

    return _Joined().eval()
