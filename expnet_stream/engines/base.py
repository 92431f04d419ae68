"""The interface every inference engine (ONNX Runtime, TensorRT, torch) offers to the worker."""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator
from types import TracebackType

import numpy as np
import numpy.typing as npt

from ..errors import EngineError
from ..models.contract import PreprocessContract

logger = logging.getLogger(__name__)

__all__ = ["Engine"]


class Engine(abc.ABC):
    """Runs ExpNet on normalised batches.

    Attributes:
        contract: preprocessing contract of the loaded model (input size, names, mean, ...).
        model_id: ``contract.model_id``, e.g. ``expnet_resnet18@UNTRAINED-random-init-seed0``; goes into every event.
        max_batch: largest batch sent to the backend at once; :meth:`infer` chunks bigger inputs.
        name: engine kind, e.g. ``onnxruntime``.
    """

    contract: PreprocessContract
    model_id: str
    max_batch: int
    name: str

    @abc.abstractmethod
    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``(N, 3, S, S)`` float32 normalised input -> ``(N, num_coeffs)`` float32; any N (chunked by max_batch)."""

    @property
    def has_emotion_output(self) -> bool:
        """True when :meth:`infer_all` returns the model's own emotion probabilities (its contract names an
        ``emotion_output_name`` and this engine reads it)."""
        return False

    def infer_all(
        self, batch: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """``(coefficients (N, num_coeffs), emotion probabilities (N, len(contract.emotion_classes)) or None)``.

        Engines that do not read the emotion output return None for it (the coefficient head is used instead).
        """
        return self.infer(batch), None

    def close(self) -> None:  # noqa: B027  (optional hook, no-op by default)
        """Release the backend's resources; the engine is unusable afterwards."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- helpers for implementations -----------------------------------------------------------------------------

    def check_batch(self, batch: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Validate ``(N, 3, S, S)`` float32 input (C-contiguous copy only if needed) or raise EngineError."""
        arr = np.asarray(batch)
        s = self.contract.input_size
        if arr.dtype != np.float32 or arr.ndim != 4 or arr.shape[1:] != (3, s, s):
            raise EngineError(
                f"{self.name} engine for {self.model_id} expects float32 (N, 3, {s}, {s}), got {arr.dtype} {arr.shape}"
            )
        return np.ascontiguousarray(arr)

    def iter_chunks(self, n: int) -> Iterator[slice]:
        """Slices of at most ``max_batch`` covering ``range(n)``."""
        for start in range(0, n, self.max_batch):
            yield slice(start, min(start + self.max_batch, n))
