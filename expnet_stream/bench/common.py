"""Shared pieces of the benchmark scenarios: statistics, machine info, result files, progress.

Every scenario returns a plain dict (JSON-serialisable) with the same top-level keys (:data:`RESULT_KEYS`):
``scenario``, ``schema``, ``quick``, ``machine``, ``versions``, ``started``, ``seconds``, ``params``, ``samples``
(raw measurements), ``summary`` (medians and ratios) and ``notes`` (what a reader must know to interpret them).

>>> percentile([1.0, 2.0, 3.0, 4.0], 50)
2.5
>>> ratio(3.0, 2.0)
1.5
>>> ratio(1.0, 0.0) is None
True
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExpNetError
from ..fileio import atomic_write_text

log = logging.getLogger(__name__)

RESULT_SCHEMA = "expnet-stream/bench-result-v1"
RESULT_KEYS = (
    "scenario",
    "schema",
    "quick",
    "machine",
    "versions",
    "started",
    "seconds",
    "params",
    "samples",
    "summary",
)
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
_VERSIONED = (
    "expnet-stream",
    "numpy",
    "onnxruntime",
    "av",
    "opencv-python-headless",
    "kafka-python",
    "msgpack",
    "yuface",
    "torch",
    "mediapipe",
    "dlib-bin",
    "matplotlib",
)


class BenchError(ExpNetError, RuntimeError):
    """A benchmark scenario could not run (missing piece, timeout, worker failure)."""


# ---------------------------------------------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation) or None for no values."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, np.float64), q))


def median(values: Sequence[float]) -> float | None:
    """The median or None for no values.

    >>> median([3.0, 1.0, 2.0])
    2.0
    """
    return percentile(values, 50)


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, None when either is missing, zero denominators or not finite."""
    if num is None or den is None or den == 0 or not math.isfinite(num) or not math.isfinite(den):
        return None
    return float(num) / float(den)


def wall_shares(
    stage_seconds: Mapping[str, float], wall_s: float | None, stages: Sequence[str]
) -> dict[str, float | None]:
    """Each stage's seconds as a share of ``wall_s``, plus ``other`` (the rest of the wall time, at least 0).

    >>> wall_shares({"a": 1.0, "b": 2.0}, 4.0, ("a", "b"))
    {'a': 0.25, 'b': 0.5, 'other': 0.25}
    """
    shares = {s: ratio(stage_seconds.get(s, 0.0), wall_s) for s in stages}
    known = sum(v for v in shares.values() if v is not None)
    shares["other"] = max(0.0, 1.0 - known) if wall_s else None
    return shares


def rounded(value: Any, digits: int = 4) -> Any:
    """Round floats (recursively in dicts and lists) to ``digits`` significant decimals for readable JSON.

    >>> rounded({"a": [1.234567, 2], "b": None}, 3)
    {'a': [1.235, 2], 'b': None}
    """
    if isinstance(value, float):
        return value if not math.isfinite(value) else round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max of latencies in milliseconds.

    >>> latency_summary([0.01, 0.02, 0.03])["p50_ms"]
    20.0
    """
    ms = [1000.0 * x for x in latencies_s]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
    }


def time_repeats(fn: Callable[[], Any], *, repeats: int, warmup: int = 1, min_s: float = 0.0) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (more calls until ``min_s``)."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    spent = 0.0
    while len(out) < repeats or spent < min_s:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        out.append(dt)
        spent += dt
        if len(out) >= 4 * max(repeats, 1):
            break
    return out


# ---------------------------------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where unavailable)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS, Python, load average: enough to tell two result files' machines apart."""
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu": _cpu_model(),
        "cores": cpu_count(),
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": load_average(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ},
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in _VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def new_result(scenario: str, quick: bool, params: dict[str, Any]) -> dict[str, Any]:
    """The skeleton every scenario fills in."""
    return {
        "scenario": scenario,
        "schema": RESULT_SCHEMA,
        "quick": quick,
        "machine": machine_info(),
        "versions": versions(),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "seconds": None,
        "params": params,
        "samples": {},
        "summary": {},
        "notes": [],
        "_t0": time.monotonic(),
    }


def finish_result(result: dict[str, Any]) -> dict[str, Any]:
    t0 = result.pop("_t0", None)
    if t0 is not None:
        result["seconds"] = round(time.monotonic() - t0, 2)
    result["machine"]["load_average_end"] = load_average()
    return result


def check_result(result: dict[str, Any]) -> list[str]:
    """Problems with a result dict's schema (empty when it is fine)."""
    problems = [f"missing key {k!r}" for k in RESULT_KEYS if k not in result]
    if result.get("schema") not in (None, RESULT_SCHEMA):
        problems.append(f"schema {result.get('schema')!r} != {RESULT_SCHEMA!r}")
    for key in ("params", "samples", "summary", "machine", "versions"):
        if key in result and not isinstance(result[key], dict):
            problems.append(f"{key} must be an object")
    return problems


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rounded(result, 5), indent=1, sort_keys=False, default=str) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------- progress
class Progress:
    """A rich progress bar on stderr (or nothing when ``enabled`` is False): ``advance()`` per unit of work."""

    def __init__(self, description: str, total: int, *, enabled: bool = True) -> None:
        self._bar: Any = None
        self._task: Any = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, status="")

    def advance(self, status: str = "", n: int = 1) -> None:
        log.debug("progress %s", status)
        if self._bar is not None:
            self._bar.update(self._task, advance=n, status=status)

    def status(self, status: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, status=status)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[Callable[[], float]]:
    """Yields ``remaining()``; raises :class:`BenchError` from ``remaining()`` once ``seconds`` have passed."""
    end = time.monotonic() + seconds

    def remaining() -> float:
        left = end - time.monotonic()
        if left <= 0:
            raise BenchError(f"{what} did not finish within {seconds:.0f} s")
        return left

    yield remaining
