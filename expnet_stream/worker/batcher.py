"""Stage 4: face crops of all streams in one engine batch. When a batch is due, which frames it takes, and the engine
call (normalise, infer, emotion output)."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from ..engines.base import Engine
from ..events.schema import NUM_COEFFS
from ..ops.metrics import PipelineObserver
from .finisher import EmotionClassifier
from .stages import StageTimes
from .work import FrameWork, WorkQueue


class Batcher:
    def __init__(
        self,
        engine: Engine,
        queue: WorkQueue,
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.04,
        stages: StageTimes,
        observer: PipelineObserver | None = None,
        emotion_head: EmotionClassifier | None = None,
    ) -> None:
        self.engine = engine
        self.contract = engine.contract
        self.queue = queue
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stages = stages
        self.observer = observer
        self.emotion_head = emotion_head

    def due(self, now: float | None = None) -> bool:
        """Whether a batch should run now: full (faces, or frames waiting for detection), or its oldest frame
        waited ``max_wait``."""
        if not self.queue:
            return False
        if self.queue.pending >= self.max_batch:
            return True
        return self.due_found(now)

    def due_found(self, now: float | None = None) -> bool:
        """The same, once the queued frames' faces are found."""
        if self.queue.faces >= self.max_batch:
            return True
        head = self.queue.head
        if head.n_faces == 0 and not head.pending:
            return True
        return ((now or time.monotonic()) - head.enqueued) >= self.max_wait_s

    def take(self) -> list[FrameWork]:
        """Whole frames from the head until the batch is full; faceless frames ride along free."""
        take: list[FrameWork] = []
        faces = 0
        while self.queue:
            nxt = self.queue.head
            if take and faces + nxt.n_faces > self.max_batch and faces > 0:
                break
            take.append(self.queue.popleft())
            faces += nxt.n_faces
        self.queue.faces -= faces
        return take

    def infer(self, take: list[FrameWork]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """Coefficients ``(faces, 29)`` and emotion probabilities (or None) of the frames' crops, in order."""
        coeffs = np.zeros((0, NUM_COEFFS), np.float32)
        probs: npt.NDArray[np.float32] | None = None
        crops = [w.crops for w in take if w.crops is not None]
        if crops:
            with self.stages.time("infer"):
                batch = self.contract.normalize(np.concatenate(crops))
                coeffs, model_probs = self.engine.infer_all(batch)
                if self.emotion_head is not None:
                    probs = self.emotion_head.predict_proba(coeffs, model_probs)
            if coeffs.shape != (len(batch), NUM_COEFFS):
                raise ValueError(f"engine returned shape {coeffs.shape} for a batch of {len(batch)}")
            if self.observer is not None:
                self.observer.batch(len(batch))
        return coeffs, probs
