"""A measured worker process: ``python -m expnet_stream.bench.worker_proc --config W.yaml --out stats.json``.

Runs :class:`~expnet_stream.worker.worker.Worker` like ``expnet-stream worker`` does, and additionally writes
``--ready`` (an empty file) once it holds partitions, and on exit (SIGTERM, ``--max-seconds``) a JSON file with its
counters, the per-stage time breakdown, the wall time of its first handled record and the process CPU time.
Benchmarks run workers in their own processes so that ingest and the measuring subscriber do not share its GIL.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return float(ru.ru_utime + ru.ru_stime)


def run(config: Path, out: Path, ready: Path | None, max_seconds: float) -> dict[str, Any]:
    from ..config.settings import load_settings
    from ..worker.runtime import build_detector, build_engine
    from ..worker.worker import Worker

    settings = load_settings(config)
    t_load = time.time()
    worker = Worker(settings, build_detector(settings), build_engine(settings))
    first: dict[str, float] = {}
    cpu_first: dict[str, float] = {}
    handle = worker.handle_record

    def timed_handle(record: Any) -> None:
        if not first:
            first["t"] = time.time()
            cpu_first["t"] = _cpu_s()
        handle(record)

    worker.handle_record = timed_handle  # type: ignore[method-assign]
    marked = False

    def until(w: Worker) -> bool:
        nonlocal marked
        if not marked and w.assigned and ready is not None:
            ready.touch()
            marked = True
        return False

    signal.signal(signal.SIGTERM, lambda _s, _f: worker.stop())
    signal.signal(signal.SIGINT, lambda _s, _f: worker.stop())
    try:
        stats = worker.run(max_seconds=max_seconds, until=until)
    finally:
        t_stop = time.time()
        cpu_stop = _cpu_s()
        worker.close()
    result = {
        "worker_id": settings.worker_id,
        "records": stats.records,
        "frame_events": stats.frame_events,
        "summaries": stats.summaries,
        "events_published": stats.events_published,
        "dead_letters": dict(stats.dead_letters),
        "pauses": stats.pauses,
        "commits": stats.commits,
        "stages": worker.stages.breakdown(),
        "stage_seconds": dict(worker.stages.seconds),
        "detect_reasons": dict(worker.pipeline.detect_reasons),
        "t_loaded": t_load,
        "t_first_record": first.get("t"),
        "t_stop": t_stop,
        "cpu_s_total": cpu_stop,
        "cpu_s_from_first_record": cpu_stop - cpu_first["t"] if cpu_first else None,
        "engine_threads": getattr(worker.engine, "intra_op_threads", None),
    }
    out.write_text(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="expnet_stream.bench.worker_proc", description=__doc__)
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--ready", type=Path, default=None)
    p.add_argument("--max-seconds", type=float, default=600.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(args.config, args.out, args.ready, args.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
