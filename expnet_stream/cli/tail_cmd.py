"""``expnet-stream tail TOPIC``: print a topic's decoded events (one line each, or JSON lines), or write its frame
events to a Parquet table (``--out``)."""

from __future__ import annotations

import argparse
import json
import sys

from ..kafka.reach import require_broker
from .common import BOOTSTRAP_HELP, CONFIG_HELP, kafka_overrides


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tail`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser("tail", help="print decoded events of a topic")
    s.add_argument("topic", help="topic to read, e.g. expnet.expressions, expnet.emotions or expnet.dlq")
    s.add_argument("--config", default=None, help=CONFIG_HELP + "; its kafka section (SASL, SSL, mTLS) connects")
    s.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    s.add_argument("--group", default=None, help="consumer group (default: none, read every partition)")
    s.add_argument("--from-beginning", action="store_true", help="read the topic from its start (default: new events)")
    s.add_argument("--json", action="store_true", help="JSON lines (coefficients as floats)")
    s.add_argument("--keep-duplicates", action="store_true", help="do not drop repeated event ids")
    s.add_argument("--max", type=int, default=None, help="stop after this many events (default: no limit)")
    s.add_argument("--timeout", type=float, default=None, help="stop after this many seconds (default: no limit)")
    s.add_argument(
        "--idle", type=float, default=None, help="stop after this many seconds without events (default: wait)"
    )
    s.add_argument(
        "--out",
        default=None,
        help="write frame events to this Parquet file (one row per face and frame, faceless frames as one row "
        "with null face columns) instead of printing (default: print); the file is complete on any stop, Ctrl-C too",
    )
    s.set_defaults(func=cmd_tail)


def cmd_tail(args: argparse.Namespace) -> int:
    from ..client import Subscriber
    from ..config.settings import load_settings
    from ..events.codec import to_jsonable
    from ..events.schema import FrameEvent

    kafka = load_settings(args.config, kafka_overrides(args)).kafka
    require_broker(kafka.bootstrap)
    n = 0
    sink = None
    if args.out is not None:
        from ..table import ParquetSink

        # created before subscribing, so a missing pyarrow fails at once; closed (a complete file) on any exit
        sink = ParquetSink(args.out)
    try:
        with Subscriber.from_settings(
            kafka,
            args.topic,
            group_id=args.group,
            from_beginning=args.from_beginning,
            dedupe=not args.keep_duplicates,
        ) as sub:
            for item in sub.iter(timeout_s=args.timeout, idle_s=args.idle):
                ev = item.event
                if sink is not None:
                    sink.add(ev)
                elif args.json:
                    print(json.dumps(to_jsonable(ev)), flush=True)
                elif isinstance(ev, FrameEvent):
                    faces = " ".join(
                        f"[{f.track_id}] box=({f.box[0]:.0f},{f.box[1]:.0f},{f.box[2]:.0f},{f.box[3]:.0f}) "
                        f"c0..2={f.coefficients[:3].round(3).tolist()}"
                        for f in ev.faces
                    )
                    print(
                        f"{ev.stream_id} #{ev.frame_seq} t={ev.pts_time:.3f}s faces={len(ev.faces)} {faces}",
                        flush=True,
                    )
                else:
                    print(f"{type(ev).__name__} {ev.model_dump(exclude={'value', 'data', 'extradata'})}", flush=True)
                n += 1
                if args.max is not None and n >= args.max:
                    break
    finally:
        if sink is not None:
            sink.close()
            print(f"wrote {sink.rows} rows ({sink.frames} frames, {sink.faces} faces) to {args.out}", file=sys.stderr)
    return 0
