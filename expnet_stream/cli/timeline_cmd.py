"""``expnet-stream timeline TOPIC_OR_FILE --stream ID --out FILE.png``: the emotion timeline of one stream.

The source is a ``run`` output file (``.jsonl`` or ``.msgpack``) when such a file exists, else a topic read
from the beginning without a consumer group, until the stream's summary arrives, ``--idle`` seconds pass
without events, or ``--timeout``. ``--aggregates-topic`` also reads the aggregate topic (e.g. expnet.emotions).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .common import BOOTSTRAP_HELP, CONFIG_HELP, kafka_overrides

if TYPE_CHECKING:
    from ..aggregate.plot import TimelineEvent
    from ..config.settings import KafkaSettings

log = logging.getLogger(__name__)

_FILE_SUFFIXES = (".jsonl", ".json", ".msgpack")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``timeline`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser(
        "timeline",
        help="plot a stream's emotion timeline (shares, dominant emotion, track lanes, smoothed coefficients)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("source", metavar="TOPIC_OR_FILE", help="expressions topic, or a `run --out` .jsonl/.msgpack file")
    s.add_argument("--stream", default=None, help="stream id (default: the only stream in the events)")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP + " (topic sources)")
    s.add_argument("--config", default=None, help=CONFIG_HELP + "; its kafka section (SASL, SSL, mTLS) connects")
    s.add_argument(
        "--aggregates-topic",
        default=None,
        help="also read aggregates from this topic (default: recompute shares from the frames)",
    )
    s.add_argument("--timeout", type=float, default=60.0, help="stop reading a topic after this many seconds")
    s.add_argument("--idle", type=float, default=5.0, help="stop reading a topic after this many idle seconds")
    s.add_argument("--bin", type=float, default=None, help="window seconds for recomputed shares (default: auto)")
    s.add_argument("--coeffs", type=int, default=3, help="coefficients to draw raw vs smoothed")
    s.add_argument("--json", action="store_true", help="print the plot's numbers as one JSON line on stdout")
    s.set_defaults(func=cmd_timeline)


def _is_file(source: str) -> bool:
    return Path(source).is_file() or source.endswith(_FILE_SUFFIXES)


def _read_topic(
    kafka: KafkaSettings, topic: str, stream_id: str | None, timeout: float, idle: float
) -> list[TimelineEvent]:
    from ..client import Subscriber
    from ..events.aggregate_schema import EmotionAggregate
    from ..events.schema import FrameEvent, StreamSummary

    out: list[TimelineEvent] = []
    with Subscriber.from_settings(kafka, topic, group_id=None, from_beginning=True, dedupe=True) as sub:
        for item in sub.iter(timeout_s=timeout, idle_s=idle):
            ev = item.event
            if stream_id is not None and getattr(ev, "stream_id", None) != stream_id:
                continue
            if isinstance(ev, FrameEvent | EmotionAggregate | StreamSummary):
                out.append(ev)
            if isinstance(ev, StreamSummary) and stream_id is not None:
                break
        if sub.invalid:
            log.warning("topic=%s: %d undecodable events skipped", topic, sub.invalid)
    return out


def cmd_timeline(args: argparse.Namespace) -> int:
    from ..aggregate.plot import load_events, plot_timeline
    from ..config.settings import load_settings

    def kafka() -> KafkaSettings:
        return load_settings(args.config, kafka_overrides(args)).kafka

    if _is_file(args.source):
        events = load_events(args.source)
    else:
        events = _read_topic(kafka(), args.source, args.stream, args.timeout, args.idle)
    if args.aggregates_topic:
        events += _read_topic(kafka(), args.aggregates_topic, None, args.timeout, args.idle)
    summary = plot_timeline(events, args.stream, args.out, bin_s=args.bin, n_coeffs=args.coeffs)
    report = {
        "out": str(args.out),
        "stream_id": summary.stream_id,
        "frames": summary.frames,
        "faces": summary.faces,
        "tracks": summary.tracks,
        "tracks_assigned_offline": summary.tracks_assigned_offline,
        "emotions": summary.has_emotions,
        "windows": summary.windows,
        "windows_from": summary.windows_from,
        "jitter_raw": summary.jitter_raw,
        "jitter_smoothed": summary.jitter_smoothed,
        "notes": summary.notes,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"wrote {args.out}: stream {summary.stream_id}, {summary.frames} frames, {len(summary.tracks)} tracks, "
            f"{summary.windows} windows" + (f" ({'; '.join(summary.notes)})" if summary.notes else ""),
            file=sys.stderr,
        )
    return 0
