"""The ``expnet-stream`` command: the top-level parser, its commands (each registered by its ``*_cmd`` module) and
the entry point."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ExpNetError
from .config_cmd import register as register_config
from .demo_cmd import register as register_demo
from .export_cmd import register as register_export_onnx
from .help import EPILOG, HelpFormatter, TopLevelParser, finish
from .ingest_cmd import register as register_ingest
from .logs import setup_logging
from .run_cmd import register as register_run
from .schema_cmd import register as register_schema
from .tail_cmd import register as register_tail
from .timeline_cmd import register as register_timeline
from .worker_cmd import register as register_worker

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = TopLevelParser(
        prog="expnet-stream",
        description="ExpNet 3D facial expression coefficients and emotions from live video over Kafka.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--log-level",
        default="warning",
        help="root log level: debug, info, warning, error (EXPNET_LOG overrides it per module, e.g. "
        "'kafka=info,expnet_stream.worker=debug')",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at info level, kafka-python's own logs included")
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line (for log collectors)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser)

    register_demo(sub)
    register_ingest(sub)
    register_worker(sub)
    register_tail(sub)
    register_run(sub)
    register_export_onnx(sub)
    register_schema(sub)
    register_config(sub)

    from .bench_cmd import register as register_bench_commands
    from .engine_cmd import register as register_engine_commands
    from .mesh_cmd import register as register_mesh_command
    from .model_cmd import register as register_model_commands
    from .train_cmd import register as register_train_commands

    register_engine_commands(sub)
    register_train_commands(sub)
    register_bench_commands(sub)
    register_model_commands(sub)
    register_mesh_command(sub)
    register_timeline(sub)
    from .annotate_cmd import register as register_annotate

    register_annotate(sub)
    from .view_cmd import register as register_view

    register_view(sub)
    finish(p)
    return p


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads (the face detector's) must not spin on cores that decode and inference share
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_json, verbose=args.verbose)
    try:
        return int(args.func(args))
    except ExpNetError as exc:
        print(f"expnet-stream: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from kafka.errors import KafkaError

        if not isinstance(exc, KafkaError):
            raise
        # e.g. NoBrokersAvailable after the TCP check passed (a listener that is not Kafka, a wrong advertised host)
        print(f"expnet-stream: error: Kafka: {type(exc).__name__}: {exc} (details: -v)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
