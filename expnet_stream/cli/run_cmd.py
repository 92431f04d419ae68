"""``expnet-stream run VIDEO...``: the worker's pipeline on video files without a broker; events to stdout or a
file (``.jsonl``, ``.msgpack`` or a ``.parquet`` table), a summary with the stage times on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import CONFIG_HELP


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser("run", help="process video files without a broker; events to stdout or a file")
    s.add_argument("videos", nargs="+", help="video files (anything PyAV opens); stream ids are the file stems")
    s.add_argument("--config", default=None, help=CONFIG_HELP)
    s.add_argument(
        "--out",
        default=None,
        help="output file: .jsonl, .msgpack, or .parquet (a table, one row per face and frame); "
        "default stdout JSON lines",
    )
    s.add_argument(
        "--sample-fps", type=float, default=None, help="frames per second to process per stream (default: every frame)"
    )
    s.add_argument("--json", action="store_true", help="one-line JSON summary on stderr")
    s.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from ..config.settings import load_settings
    from ..events.aggregate_schema import EmotionAggregate
    from ..events.codec import encode, to_jsonable
    from ..events.schema import FrameEvent, StreamSummary
    from ..worker.local import run_local
    from ..worker.runtime import build_runtime

    overrides: dict[str, Any] = {}
    if args.sample_fps:
        overrides["sampling"] = {"fps": args.sample_fps}
    settings = load_settings(args.config, overrides)
    rt = build_runtime(settings)
    engine, detector, emotion_head = rt.engine, rt.detector, rt.emotion_head
    sink = None
    if args.out is not None and str(args.out).endswith(".parquet"):
        from ..table import ParquetSink, emotion_columns

        # one row per face and frame (frame events only; summaries and aggregates are not rows)
        sink = ParquetSink(args.out, emotions=emotion_columns(emotion_head.classes if emotion_head else ()))
    out = sys.stdout.buffer if args.out in (None, "-") or sink else open(args.out, "wb")  # noqa: SIM115
    binary = args.out is not None and str(args.out).endswith(".msgpack")

    def on_event(ev: FrameEvent | StreamSummary | EmotionAggregate) -> None:
        if sink is not None:
            sink.add(ev)
        else:
            out.write(encode(ev) if binary else (json.dumps(to_jsonable(ev)) + "\n").encode())

    try:
        res = run_local(
            [(v, Path(v).stem) for v in args.videos],
            settings,
            detector,
            engine,
            on_event,
            emotion_head=emotion_head,
        )
    finally:
        if sink is not None:
            sink.close()
        elif out is not sys.stdout.buffer:
            out.close()
    summary = {
        "frame_events": res.frame_events,
        "seconds": round(res.seconds, 3),
        "frames_per_s": round(res.frame_events / res.seconds, 2) if res.seconds else None,
        "model_id": engine.model_id,
        "model_trained": engine.contract.trained,
        "streams": [s.model_dump(exclude={"v", "type"}) for s in res.summaries],
        "stages": res.stages.breakdown(),
    }
    print(json.dumps(summary, indent=None if args.json else 2), file=sys.stderr)
    return 0
