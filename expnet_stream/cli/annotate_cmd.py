"""``expnet-stream annotate VIDEO --out OUT.mp4``: an annotated copy of a video to look at its expressions.

Each face gets its box, track id, dominant emotion with its probability ("#3 happiness 0.82") and a bar chart of
its emotion probabilities beside the box; ``--mesh`` adds its 3D expression mesh. Every decoded frame of VIDEO is
written (one output frame per input frame), re-encoded with libx264 (yuv420p, CRF 20) at the input's time base and
timestamps; audio is not copied.

Where the faces come from:

* default: the broker-free pipeline of ``expnet-stream run`` on VIDEO (settings from ``--config``, the environment
  and ``--sample-fps``);
* ``--bootstrap HOST:PORT --stream-id ID``: the frame events already published for stream ID on the expressions
  topic, read from the beginning until the stream's ``stream_summary`` (or ``--idle`` seconds without events);
  VIDEO must be the file that stream was ingested from.

Events are matched to frames by pts. A frame without its own event (sampled out by ``sampling.fps``) shows the
faces of the last processed frame, with thinner boxes, for up to ``--hold`` seconds of video time, then none.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..video.annotate import DEFAULT_HOLD_S

if TYPE_CHECKING:
    from ..events.schema import FrameEvent

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``annotate`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser(
        "annotate",
        help="write a copy of a video with each face's box, track id, emotion and emotion bars drawn on it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("video", metavar="VIDEO", help="the video file to annotate (required)")
    s.add_argument("--out", required=True, help="output video file, e.g. annotated.mp4 (required; no default)")
    s.add_argument(
        "--mesh",
        action="store_true",
        help="also draw each face's 3D expression mesh (a 96-128 px image) beside it (default: off). Costs a software "
        "render of about 7-9 ms per face and processed frame (reused on held frames): on the one-face 640x360 demo "
        "clip the drawing and encoding pass drops from about 160 to 60 frames/s (2 shared cores); needs a "
        "trained model's coefficients",
    )
    s.add_argument(
        "--config",
        default=None,
        help="worker YAML for the pipeline run, and for the default topic/bootstrap with --bootstrap "
        "(default: none, the built-in settings and EXPNET_... environment)",
    )
    s.add_argument(
        "--sample-fps",
        type=float,
        default=None,
        help="frames per second the pipeline processes (default: the config's sampling.fps, every frame when "
        "unset); not with --bootstrap, where the worker sampled",
    )
    s.add_argument(
        "--hold",
        type=float,
        default=DEFAULT_HOLD_S,
        help="seconds a sampled-out frame shows the faces of the last processed frame (default: %(default)s; "
        "0 draws faces only on processed frames)",
    )
    s.add_argument(
        "--bootstrap",
        default=None,
        help="read the stream's events from this Kafka cluster (HOST:PORT) instead of running the pipeline "
        "(default: none, run the pipeline)",
    )
    s.add_argument(
        "--stream-id", default=None, help="stream id of the events (required with --bootstrap; default: none)"
    )
    s.add_argument(
        "--topic", default=None, help="expressions topic (default: the config's topics.expressions, expnet.expressions)"
    )
    s.add_argument(
        "--idle",
        type=float,
        default=10.0,
        help="stop reading the topic after this many seconds without events (default: %(default)s)",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="stop reading the topic after this many seconds in all (default: %(default)s)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (default: shown)")
    s.add_argument(
        "--json", action="store_true", help="print the summary as one JSON line on stdout (default: text on stderr)"
    )
    s.set_defaults(func=cmd_annotate)


def _pipeline_events(args: argparse.Namespace, total: int | None) -> list[FrameEvent]:
    from ..config.settings import load_settings
    from ..events.schema import FrameEvent
    from ..video.annotate import progress_bar
    from ..worker.local import run_local
    from ..worker.runtime import build_runtime

    overrides: dict[str, Any] = {}
    if args.sample_fps:
        overrides["sampling"] = {"fps": args.sample_fps}
    settings = load_settings(args.config, overrides)
    rt = build_runtime(settings)
    events: list[FrameEvent] = []
    with progress_bar(f"analysing {Path(args.video).name}", total, enabled=not args.no_progress) as advance:

        def on_event(ev: object) -> None:
            if isinstance(ev, FrameEvent):
                events.append(ev)
                advance()

        res = run_local(
            [(str(args.video), Path(args.video).stem)],
            settings,
            rt.detector,
            rt.engine,
            on_event,
            emotion_head=rt.emotion_head,
        )
    if res.decode_errors:
        log.warning("video=%s: %d packets failed to decode", args.video, res.decode_errors)
    return events


def _topic_events(args: argparse.Namespace) -> tuple[list[FrameEvent], str, bool]:
    """The stream's frame events, the topic, and whether its summary was seen."""
    from ..client import Subscriber
    from ..config.settings import load_settings
    from ..events.schema import FrameEvent, StreamSummary

    settings = load_settings(args.config, {"kafka": {"bootstrap": args.bootstrap}})
    topic = args.topic or settings.topics.expressions
    events: list[FrameEvent] = []
    others: set[str] = set()
    summary = False
    with Subscriber.from_settings(settings.kafka, topic, group_id=None, from_beginning=True, dedupe=True) as sub:
        for item in sub.iter(timeout_s=args.timeout, idle_s=args.idle):
            ev = item.event
            sid = getattr(ev, "stream_id", None)
            if sid != args.stream_id:
                if sid is not None:
                    others.add(sid)
                continue
            if isinstance(ev, FrameEvent):
                events.append(ev)
            elif isinstance(ev, StreamSummary):
                summary = True
                break
        if sub.invalid:
            log.warning("topic=%s: %d undecodable events skipped", topic, sub.invalid)
    if not events:
        seen = f"; streams seen: {', '.join(sorted(others)[:10])}" if others else "; the topic holds no events"
        raise ConfigError(f"no frame events for stream {args.stream_id!r} on {topic} at {args.bootstrap}{seen}")
    return events, topic, summary


def cmd_annotate(args: argparse.Namespace) -> int:
    from ..video.annotate import annotate_video, check_output, probe_video

    if args.hold < 0:
        raise ConfigError(f"--hold must be >= 0 seconds, got {args.hold}")
    if args.bootstrap is None and (args.stream_id is not None or args.topic is not None):
        raise ConfigError("--stream-id and --topic read published events: give --bootstrap HOST:PORT too")
    if args.bootstrap is not None and args.stream_id is None:
        raise ConfigError("--bootstrap needs --stream-id ID (the stream whose events to draw)")
    if args.bootstrap is not None and args.sample_fps is not None:
        raise ConfigError("--sample-fps applies to the pipeline run; with --bootstrap the worker chose the sampling")
    t0 = time.perf_counter()
    info = probe_video(args.video)  # a missing or unreadable file, or a bad --out, fails before any model loads
    check_output(args.out)
    source: str
    if args.bootstrap is None:
        events = _pipeline_events(args, info.frames)
        source = "pipeline"
    else:
        events, topic, complete = _topic_events(args)
        source = f"{topic}@{args.bootstrap}"
        if not complete:
            log.warning(
                "stream=%s: no stream_summary on %s; drawing the %d events read", args.stream_id, topic, len(events)
            )
    stats = annotate_video(
        args.video, events, args.out, mesh=args.mesh, progress=not args.no_progress, hold_s=args.hold
    )
    report = {
        "out": str(stats.out_path),
        "source": source,
        "frames_written": stats.frames_written,
        "frames_with_events": stats.frames_with_events,
        "frames_held": stats.frames_held,
        "frames_with_faces": stats.frames_with_faces,
        "faces_drawn": stats.faces_drawn,
        "meshes_rendered": stats.meshes_rendered,
        "events": stats.events,
        "events_unmatched": stats.events_unmatched,
        "seconds": round(stats.seconds, 3),
        "frames_per_s": round(stats.frames_per_s, 2),
        "seconds_total": round(time.perf_counter() - t0, 3),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"wrote {stats.out_path}: {stats.frames_written} frames ({stats.frames_with_faces} with faces, "
            f"{stats.frames_held} of them held), {stats.faces_drawn} faces drawn from {stats.events} events "
            f"({source}); drawn and encoded at {stats.frames_per_s:.1f} frames/s, "
            f"{report['seconds_total']:.1f} s in all",
            file=sys.stderr,
        )
    return 0
