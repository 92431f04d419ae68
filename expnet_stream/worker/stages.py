"""Per-stage wall-time accounting (decode, detect, crop, infer, publish)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

STAGES = ("decode", "detect", "crop", "infer", "publish")


@dataclass
class StageTimes:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    observer: Callable[[str, float], None] | None = None  # e.g. WorkerMetrics.observe_stage

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[stage] = self.seconds.get(stage, 0.0) + dt
            self.calls[stage] = self.calls.get(stage, 0) + 1
            if self.observer is not None:
                self.observer(stage, dt)

    def breakdown(self) -> dict[str, dict[str, float]]:
        total = sum(self.seconds.values()) or 1.0
        return {
            s: {"seconds": round(v, 4), "share": round(v / total, 4), "calls": self.calls.get(s, 0)}
            for s, v in self.seconds.items()
        }
