"""``expnet-stream worker``: run one worker of the consumer group until SIGTERM/SIGINT (or ``--max-seconds``).

The ops server (``/healthz``, ``/readyz``, ``/metrics``) starts before the engine loads. A stop signal makes the
worker drain, publish, commit and leave the group; past ``shutdown_deadline_s`` the process exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from ..kafka.reach import require_broker
from .common import BOOTSTRAP_HELP, CONFIG_HELP, kafka_overrides
from .logs import setup_logging

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``worker`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser("worker", help="run a worker of the consumer group")
    s.add_argument("--config", default=None, help=CONFIG_HELP + "; configs/worker.yaml in the repository is an example")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s.add_argument(
        "--max-seconds", type=float, default=None, help="stop after this many seconds (default: run until SIGTERM)"
    )
    s.add_argument("--create-topics", action="store_true", help="create the topics first when they are missing")
    s.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of /metrics, /healthz, /readyz (ops.metrics_port, default 9400); 0 picks a free one and logs it "
        "(a second worker on the same host)",
    )
    s.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from ..config.settings import load_settings
    from ..kafka.topics import ensure_topics
    from ..ops import WorkerHealth, WorkerMetrics, serve_ops

    overrides = kafka_overrides(args)
    if args.metrics_port is not None:
        overrides["ops"] = {"metrics_port": args.metrics_port}
    settings = load_settings(args.config, overrides)
    require_broker(settings.kafka.bootstrap)
    if settings.ops.log_json and not args.log_json:
        setup_logging(args.log_level, json_lines=True, verbose=args.verbose)
    if args.create_topics:
        ensure_topics(settings.kafka, settings.topics)
    ops = settings.ops
    health = WorkerHealth(ops.liveness_timeout_s, ready_requires_partitions=ops.ready_requires_partitions)
    metrics = WorkerMetrics(status_provider=lambda: health.status)
    # serve before the engine loads: /healthz answers "starting" meanwhile (startup probes), /readyz 503
    server = serve_ops(ops, metrics.registry, health.snapshot)
    try:
        return _run_worker(
            args,
            settings,
            _make_worker(settings, metrics, health),
        )
    finally:
        if server is not None:
            server.stop()


def _make_worker(settings: Any, metrics: Any, health: Any) -> Any:
    from ..worker.runtime import build_runtime
    from ..worker.worker import Worker

    rt = build_runtime(settings)
    return Worker(settings, rt.detector, rt.engine, metrics=metrics, health=health, emotion_head=rt.emotion_head)


def _run_worker(args: argparse.Namespace, settings: Any, worker: Any) -> int:
    deadline = settings.shutdown_deadline_s

    def _stop(signum: int, _frame: object) -> None:
        if worker.stopping:
            return
        log.info("signal %d: stop polling, drain, publish, commit, leave the group (deadline %.0f s)", signum, deadline)
        worker.stop()

        def _overdue() -> None:
            log.error("shutdown took longer than %.1f s: exiting without a clean commit", deadline)
            os._exit(3)

        timer = threading.Timer(deadline, _overdue)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        stats = worker.run(max_seconds=args.max_seconds)
    finally:
        worker.close()
    print(
        json.dumps(
            {
                "records": stats.records,
                "events_published": stats.events_published,
                "dead_letters": dict(stats.dead_letters),
                "stages": worker.stages.breakdown(),
            }
        ),
        file=sys.stderr,
    )
    return 0
