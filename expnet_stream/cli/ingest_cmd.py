"""``expnet-stream ingest SOURCE...``: publish videos' encoded packets to the input topic, every send checked.

One thread per source demuxes it (:func:`~expnet_stream.video.ingest.ingest`) and publishes through one producer.
SIGINT/SIGTERM stop the sources; each open stream gets its end marker (from its own thread, or from here after a
grace period), and what is buffered is flushed before the exit status says how it went (``INGEST_EPILOG``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..kafka.reach import require_broker
from .common import BOOTSTRAP_HELP, CONFIG_HELP, kafka_overrides

log = logging.getLogger(__name__)

EXIT_INGEST_LOST = 3
"""``expnet-stream ingest``: messages were not acknowledged by the broker."""

INGEST_EPILOG = """\
exit status:
  0    every source published to its end, every message acknowledged by the broker
  1    a source failed (cannot be opened, or demuxing failed mid-stream: its stream
       gets a stream_end with reason 'error: ...')
  2    invalid configuration or arguments
  3    messages were not acknowledged by the broker (rejected, or unanswered when the
       producer closed): 'N of M messages were not acknowledged by the broker at B: E'
       is logged; takes precedence over 1, 130 and 143
  130  stopped by SIGINT (Ctrl-C): every open stream ends with reason 'interrupted'
  143  stopped by SIGTERM: every open stream ends with reason 'terminated'
On SIGINT/SIGTERM the sources stop reading, end markers are sent and flushed (a source
stuck in a blocking read gets its marker after 5 s, or at once on a second signal)."""

_STOP_GRACE_S = 5.0  # after a stop signal, how long sources may take to send their own end marker
_STOP_FLUSH_S = 10.0  # after a stop signal, how long the producer may take to deliver what is buffered


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ingest`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser(
        "ingest",
        help="publish a video's encoded packets to the input topic",
        description="Demux files or URLs and publish their packets; every send is checked (exit status 3 when the "
        "broker did not acknowledge them all).",
        epilog=INGEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("sources", nargs="+", help="files or URLs PyAV opens (rtsp://, http://, ...)")
    s.add_argument("--stream-id", action="append", help="stream id per source (repeat); default: the file stem")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s.add_argument("--config", help=CONFIG_HELP)
    s.add_argument("--topic", help="input topic to publish to (default: topics.input of the settings, expnet.video)")
    s.add_argument("--realtime", action="store_true", help="pace packets by their timestamps (a live camera)")
    s.add_argument("--loop", type=int, default=1, help="publish each file this many times, one stream")
    s.add_argument("--create-topics", action="store_true", help="create the topics first when they are missing")
    s.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    import time

    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
    from kafka.future import Future

    from ..config.settings import load_settings
    from ..kafka.topics import ensure_topics
    from ..video.ingest import IngestStats, StopFlag, end_stream, ingest

    settings = load_settings(args.config, kafka_overrides(args))
    require_broker(settings.kafka.bootstrap)
    topic = args.topic or settings.topics.input
    ids = args.stream_id or []
    if len(ids) not in (0, len(args.sources)):
        raise SystemExit("give one --stream-id per source, or none (ids are then the file stems)")
    if not ids:
        ids = [Path(s).stem or f"stream-{i}" for i, s in enumerate(args.sources)]
    if args.create_topics:  # the topic published to (--topic), with the settings' others
        ensure_topics(settings.kafka, settings.topics.model_copy(update={"input": topic}))

    stop = StopFlag()
    hurry = threading.Event()
    reasons = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # no logging here: the handler may interrupt the main thread inside a log call
        if received:
            hurry.set()
            return
        received.append(signum)
        stop.stop(reasons.get(signal.Signals(signum), "stopped"))

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in reasons:
            previous[sig] = signal.signal(sig, on_signal)
    try:
        producer = KafkaProducer(
            **settings.kafka.client_kwargs(),
            acks="all",
            linger_ms=0,  # a packet goes out at once (a live frame waits for nothing); packets still go together
            # while a request is in flight
            max_request_size=settings.max_packet_bytes,
            max_in_flight_requests_per_connection=1,
        )

        def publish(key: str, value: bytes) -> object:
            try:
                return producer.send(topic, key=key.encode(), value=value)
            except MessageSizeTooLargeError as exc:
                # refused by the producer before it reaches the broker: this message is lost, the stream goes on
                return Future().failure(exc)

        streams = [IngestStats(stream_id=sid) for sid in ids]
        errors: list[tuple[str, BaseException]] = []

        def one(src: str, stats: IngestStats) -> None:
            try:
                ingest(
                    src,
                    stats.stream_id,
                    publish,
                    flush=producer.flush,
                    stats=stats,
                    realtime=args.realtime,
                    loops=args.loop,
                    stop=stop,
                )
            except BaseException as exc:
                errors.append((stats.stream_id, exc))

        threads = [
            threading.Thread(target=one, args=(src, st), name=f"ingest-{st.stream_id}", daemon=True)
            for src, st in zip(args.sources, streams, strict=True)
        ]
        for t in threads:
            t.start()
        grace_until: float | None = None
        while any(t.is_alive() for t in threads):
            if stop.is_set() and grace_until is None:
                grace_until = time.monotonic() + _STOP_GRACE_S
            if hurry.is_set() or (grace_until is not None and time.monotonic() > grace_until):
                break
            next(t for t in threads if t.is_alive()).join(timeout=0.1)
        if received:
            log.warning(
                "%s: stopped reading; open streams end with reason %r", signal.Signals(received[0]).name, stop.reason
            )
        for t, st in zip(threads, streams, strict=True):
            if t.is_alive() and end_stream(st, publish, stop.reason):
                log.warning("stream=%s: source did not stop in time; sent its stream_end from here", st.stream_id)
        try:
            producer.flush(timeout=_STOP_FLUSH_S if stop.is_set() else None)
        except KafkaTimeoutError as exc:
            log.error("producer flush: %s", exc)
        for st in streams:
            st.settle(final=True)
        producer.close(timeout=_STOP_FLUSH_S if stop.is_set() else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for st in filter(lambda st: st.stream_started, streams):
        line = f"{st.stream_id}: {st.packets} packets ({st.keyframes} keyframes) -> {topic}"
        if st.lost:
            line += f", {st.lost} of {st.sent} messages not acknowledged"
        if st.end_reason not in (None, "eof"):
            line += f", stream_end reason {st.end_reason!r}"
        print(line, file=sys.stderr)
    for sid, err in errors:
        print(f"error: {sid}: {err}", file=sys.stderr)
    lost = sum(st.lost for st in streams)
    if lost:
        sent = sum(st.sent for st in streams)
        first = next(st.first_error for st in streams if st.first_error is not None)
        log.error(
            "%d of %d messages (%d of %d video packets) were not acknowledged by the broker at %s: %s",
            lost,
            sent,
            sum(st.lost_packets for st in streams),
            sum(st.packets for st in streams),
            settings.kafka.bootstrap,
            first if type(first).__name__ in str(first) else f"{type(first).__name__}: {first}",
        )
        return EXIT_INGEST_LOST
    if received:
        return 128 + received[0]
    return 1 if errors else 0
