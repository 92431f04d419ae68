"""ONNX Runtime (CPU) engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from ..errors import EngineError
from ..models.contract import PreprocessContract, contract_path_for
from .base import Engine

logger = logging.getLogger(__name__)

__all__ = ["ORT_ERRORS", "OrtEngine", "default_threads"]

# onnxruntime's own exceptions derive from Exception directly; list them so nothing broader is caught.
ORT_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ValueError,
    OSError,
    *(
        getattr(_ort_state, n)
        for n in (
            "Fail",
            "InvalidArgument",
            "NoSuchFile",
            "NoModel",
            "EngineError",
            "RuntimeException",
            "InvalidProtobuf",
            "ModelLoaded",
            "NotImplemented",
            "InvalidGraph",
            "EPFail",
        )
        if isinstance(getattr(_ort_state, n, None), type)
    ),
)


def default_threads() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_options(intra_op_threads: int, *, allow_spinning: bool = False) -> ort.SessionOptions:
    """The project's ONNX Runtime session settings (ENABLE_ALL, sequential, one inter-op thread, spinning off unless
    asked): ExpNet's engine and the YuNet detector share them."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    spin = "1" if allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


class OrtEngine(Engine):
    """ExpNet on ONNX Runtime's CPUExecutionProvider.

    Args:
        onnx_path: model file; its contract is read from ``contract_path_for(onnx_path)`` unless ``contract`` is given.
        max_batch: largest batch per ``session.run``.
        intra_op_threads: threads for one op; default all cores of this process.
        allow_spinning: let idle ORT threads spin. Off by default: video decoding shares the cores.
        contract: use this contract instead of reading the JSON (the export check does this).
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        *,
        max_batch: int = 32,
        intra_op_threads: int | None = None,
        allow_spinning: bool = False,
        contract: PreprocessContract | None = None,
    ) -> None:
        if max_batch < 1:
            raise EngineError(f"max_batch must be >= 1, got {max_batch}")
        self.path = Path(onnx_path)
        self.contract = contract if contract is not None else PreprocessContract.from_json(contract_path_for(self.path))
        self.model_id = self.contract.model_id
        self.max_batch = max_batch
        self.intra_op_threads = intra_op_threads if intra_op_threads is not None else default_threads()
        opts = session_options(self.intra_op_threads, allow_spinning=allow_spinning)
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except ORT_ERRORS as exc:
            raise EngineError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        self._check_io(self._session)
        logger.info(
            "onnxruntime engine loaded path=%s model_id=%s max_batch=%d intra_op_threads=%d allow_spinning=%s",
            self.path,
            self.model_id,
            self.max_batch,
            self.intra_op_threads,
            allow_spinning,
        )

    def _check_io(self, session: ort.InferenceSession) -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        c = self.contract
        names = [o.name for o in outputs]
        if c.emotion_output_name is not None and c.emotion_output_name not in names:
            raise EngineError(
                f"{self.path} has outputs {names}; the contract names the emotion output {c.emotion_output_name!r}"
            )
        if [i.name for i in inputs] != [c.input_name] or c.output_name not in names:
            raise EngineError(
                f"{self.path} has inputs {[i.name for i in inputs]} / outputs {[o.name for o in outputs]}; "
                f"the contract says {c.input_name!r} -> {c.output_name!r}"
            )
        shape = list(inputs[0].shape)
        if len(shape) != 4 or shape[1:] != [3, c.input_size, c.input_size]:
            raise EngineError(f"{self.path} input shape {shape} does not match contract input_size {c.input_size}")

    @property
    def has_emotion_output(self) -> bool:
        return self.contract.emotion_output_name is not None

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self._run(batch, emotions=False)[0]

    def infer_all(
        self, batch: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        if not self.has_emotion_output:
            return self.infer(batch), None
        return self._run(batch, emotions=True)

    def _run(
        self, batch: npt.NDArray[np.float32], *, emotions: bool
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        if self._session is None:
            raise EngineError(f"engine for {self.model_id} is closed")
        c = self.contract
        x = self.check_batch(batch)
        out = np.empty((x.shape[0], c.num_coeffs), np.float32)
        emo = np.empty((x.shape[0], len(c.emotion_classes)), np.float32) if emotions else None
        names = [c.output_name] + ([c.emotion_output_name] if emo is not None and c.emotion_output_name else [])
        for part in self.iter_chunks(x.shape[0]):
            try:
                ys = self._session.run(names, {c.input_name: x[part]})
            except ORT_ERRORS as exc:
                raise EngineError(f"ONNX Runtime failed for {self.model_id} on batch {x[part].shape}: {exc}") from exc
            out[part] = ys[0]
            if emo is not None:
                emo[part] = ys[1]
        return out, emo

    def close(self) -> None:
        self._session = None
