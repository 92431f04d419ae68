"""`expnet-stream demo`: embedded broker, ingest, worker and subscriber in one command."""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..client import Subscriber
from ..config.settings import DEMO_CONFIG, load_settings
from ..errors import ConfigError
from ..events.aggregate_schema import EmotionAggregate
from ..events.schema import FrameEvent, StreamSummary
from ..kafka.broker import EmbeddedBroker
from ..kafka.reach import require_broker
from ..kafka.topics import ensure_topics
from ..ops.health import HealthServer
from ..video.ingest import ingest
from ..video.sample import sample_video
from ..worker.runtime import build_runtime
from ..worker.worker import Worker


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1000 * seconds:.0f} ms"


def run_demo(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.bootstrap:
        require_broker(args.bootstrap)
    videos = [str(v) for v in args.videos] or [str(sample_video())]
    config = args.config or DEMO_CONFIG
    run_id = uuid.uuid4().hex[:6]
    broker = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or (broker.bootstrap if broker else "")
    overrides: dict[str, Any] = {"kafka": {"bootstrap": bootstrap}, "group_id": f"expnet-demo-{run_id}"}
    if args.sample_fps:
        overrides["sampling"] = {"fps": args.sample_fps}
    if args.bootstrap:  # a shared cluster: keep this run's data apart
        overrides["topics"] = {
            k: f"{v}.demo-{run_id}"
            for k, v in {
                "input": "expnet.video",
                "expressions": "expnet.expressions",
                "emotions": "expnet.emotions",
                "dlq": "expnet.dlq",
            }.items()
        }
    settings = load_settings(config, overrides)
    try:
        return _run(args, console, settings, videos, broker is not None)
    finally:
        if broker is not None:
            broker.stop()


def _run(args: argparse.Namespace, console: Console, settings: Any, videos: list[str], embedded: bool) -> int:
    ensure_topics(settings.kafka, settings.topics)
    view = _start_view(console, settings, args) if getattr(args, "view", False) else None
    try:
        rc = _run_pipeline(args, console, settings, videos, embedded)
        if view is not None:
            console.print(f"the live view stays up: {view.url_with_token()}  (Ctrl-C stops)")
            with contextlib.suppress(KeyboardInterrupt):
                view.wait()
        return rc
    finally:
        if view is not None:
            view.stop()


def _start_view(console: Console, settings: Any, args: argparse.Namespace) -> Any:
    """``expnet-stream view`` beside the demo, on loopback (its token from EXPNET_VIEW_TOKEN, if set)."""
    from ..view.server import ViewServer
    from ..view.service import ViewService
    from ..view.settings import ViewSettings

    server = ViewServer(ViewService(settings, ViewSettings.with_env_token(port=args.view_port))).start()
    console.print(f"[bold]live view: {server.url_with_token()}[/]")
    return server


def _run_pipeline(args: argparse.Namespace, console: Console, settings: Any, videos: list[str], embedded: bool) -> int:
    with console.status("loading model and detector (first run exports the ONNX model)"):
        rt = build_runtime(settings)
    engine, detector, emotion_out = rt.engine, rt.detector, rt.emotion_head
    if not engine.contract.trained:
        console.print(
            f"[bold red]WARNING: model {engine.model_id} has UNTRAINED (random) weights; the coefficients are "
            "NOT expressions. Every event says so (model_trained=false).[/]"
        )
    worker = Worker(settings, detector, engine, emotion_head=emotion_out)
    ops_server = _serve_ops(console, settings, worker)
    streams = [(v, f"{Path(v).stem}-{i}") for v in videos for i in range(args.streams)]
    ingested: dict[str, int] = {}
    ingest_errors: list[str] = []
    producer = KafkaProducer(
        **settings.kafka.client_kwargs(),
        acks="all",
        linger_ms=0,  # a packet goes out at once (a live frame waits for nothing); packets still go together
        # while a request is in flight
        max_in_flight_requests_per_connection=1,
        max_request_size=settings.max_packet_bytes,
    )

    def ingest_one(src: str, sid: str) -> None:
        try:
            stats = ingest(
                src,
                sid,
                lambda k, v: producer.send(settings.topics.input, key=k.encode(), value=v),
                realtime=not args.fast,
            )
            ingested[sid] = stats.packets
        except Exception as exc:
            ingest_errors.append(f"{sid}: {exc}")

    # a short fetch wait: brokers like Tansu hold a waiting fetch for the whole wait even when data arrives
    sub = Subscriber.from_settings(settings.kafka, settings.topics.expressions, dedupe=True, fetch_max_wait_ms=20)
    agg_sub = Subscriber.from_settings(settings.kafka, settings.topics.emotions, dedupe=True, fetch_max_wait_ms=20)
    aggregates: list[EmotionAggregate] = []
    worker_thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    t_start = time.time()
    worker_thread.start()
    with console.status("waiting for the worker to join its consumer group"):
        join_deadline = time.monotonic() + 30
        while not worker.assigned and time.monotonic() < join_deadline and worker_thread.is_alive():
            time.sleep(0.05)
    t_start = time.time()
    ingest_threads = [threading.Thread(target=ingest_one, args=s, daemon=True) for s in streams]
    for t in ingest_threads:
        t.start()

    frames = 0
    frames_with_faces = 0
    faces = 0
    latencies: list[float] = []
    top_emotions: Counter[str] = Counter()  # per face, its most probable emotion
    summaries: dict[str, StreamSummary] = {}
    first_rx: float | None = None
    last_rx = t_start
    finished = False  # the final table uses the summary's elapsed time (up to the last event received)
    deadline = time.monotonic() + args.timeout

    def table() -> Table:
        tb = Table(title=f"expnet-stream demo - {engine.model_id}", show_header=False)
        tb.add_row("streams done", f"{len(summaries)}/{len(streams)}")
        tb.add_row("packets ingested", str(sum(ingested.values())) + ("" if len(ingested) == len(streams) else " ..."))
        tb.add_row("events received", str(frames))
        tb.add_row("frames with faces", str(frames_with_faces))
        tb.add_row("faces", str(faces))
        tb.add_row("emotion aggregates", str(len(aggregates)))
        if top_emotions:
            tb.add_row("top emotion per face", _shares(top_emotions))
        if aggregates:
            last = aggregates[-1]
            who = "stream" if last.track_id < 0 else f"track {last.track_id}"
            tb.add_row(
                "last window",
                f"{last.stream_id} {who} [{last.window_start:.1f}, {last.window_end:.1f}) s: {last.faces} faces, "
                f"dominant {last.dominant_emotion or 'n/a (no emotion head)'}, stability {last.stability:.2f}",
            )
        el = max(1e-6, (last_rx if finished else time.time()) - t_start)
        tb.add_row("throughput", f"{frames / el:.1f} frames/s")
        if latencies:
            tb.add_row("latency p50 / p99", f"{_ms(_percentile(latencies, 50))} / {_ms(_percentile(latencies, 99))}")
        return tb

    with Live(table(), console=console, refresh_per_second=4, transient=args.json) as live:
        while len(summaries) < len(streams) and time.monotonic() < deadline:
            if (
                ingest_errors
                and not any(t.is_alive() for t in ingest_threads)
                and len(ingested) + len(ingest_errors) == len(streams)
                and not ingested
            ):
                break
            for received in agg_sub.poll(0.05):
                if isinstance(received.event, EmotionAggregate):
                    aggregates.append(received.event)
            for item in sub.poll(0.2):
                ev = item.event
                if isinstance(ev, FrameEvent):
                    frames += 1
                    if ev.faces:
                        frames_with_faces += 1
                        faces += len(ev.faces)
                        for f in ev.faces:
                            if f.emotions:
                                top_emotions[max(f.emotions, key=f.emotions.__getitem__)] += 1
                    latencies.append(item.receive_time - ev.capture_time)
                    first_rx = first_rx or item.receive_time
                    last_rx = item.receive_time
                elif isinstance(ev, StreamSummary):
                    summaries[ev.stream_id] = ev
            live.update(table())
        # aggregates closed at end of stream are published just before the summaries, on another topic
        for received in agg_sub.iter(timeout_s=10, idle_s=1.5):
            if isinstance(received.event, EmotionAggregate):
                aggregates.append(received.event)
                live.update(table())
        finished = True
        live.update(table(), refresh=True)  # the numbers the summary below repeats
    worker.stop()
    worker_thread.join(timeout=30)
    worker.close()
    if ops_server is not None:
        ops_server.stop()
    producer.close()
    sub.close()
    agg_sub.close()
    elapsed = max(1e-6, last_rx - t_start)
    summary = {
        "model_id": engine.model_id,
        "model_trained": engine.contract.trained,
        "warning": None if engine.contract.trained else "UNTRAINED weights: coefficients are not expressions",
        "broker": "embedded tansu (127.0.0.1)" if embedded else settings.kafka.bootstrap,
        "detector": settings.detector.name,
        "videos": videos,
        "streams": len(streams),
        "streams_completed": len(summaries),
        "pacing": "as fast as possible" if args.fast else "realtime",
        "frames_ingested": sum(ingested.values()),
        "frames_decoded": sum(s.frames_decoded for s in summaries.values()),
        "frames_sampled": sum(s.frames_sampled for s in summaries.values()),
        "frames_with_faces": frames_with_faces,
        "faces": faces,
        "events_published": worker.stats.frame_events,
        "events_received": frames,
        "aggregates_received": len(aggregates),
        "emotion_output": _emotion_output(emotion_out),
        "top_emotion_share": {
            k: round(v / max(1, sum(top_emotions.values())), 4) for k, v in top_emotions.most_common()
        },
        "dominant_emotion_windows": dict(
            Counter(a.dominant_emotion for a in aggregates if a.track_id < 0 and a.dominant_emotion).most_common()
        ),
        "dead_letters": dict(worker.stats.dead_letters),
        "ingest_errors": ingest_errors,
        "seconds": elapsed,
        "throughput_frames_per_s": frames / elapsed,
        "latency_s": {
            "p50": _percentile(latencies, 50),
            "p99": _percentile(latencies, 99),
            "definition": "subscriber receive time - packet ingest time",
        },
        "stages": worker.stages.breakdown(),
        "metrics_url": f"{ops_server.url}/metrics" if ops_server is not None else None,
    }
    ok = (
        len(summaries) == len(streams) and summary["events_received"] == summary["frames_sampled"] and not ingest_errors
    )
    summary["ok"] = ok
    if args.json:
        print(json.dumps(summary))
    else:
        console.print()  # the live table's last line stays where it was drawn
        _print_summary(console, summary)
    return 0 if ok else 1


def _serve_ops(console: Console, settings: Any, worker: Worker) -> HealthServer | None:
    """The worker's /metrics, /healthz and /readyz on loopback (an ephemeral port when the configured one is busy)."""
    ops = settings.ops
    if not ops.metrics_enabled:
        return None
    try:
        server = HealthServer(worker.metrics.registry, worker.health.snapshot, ops.metrics_host, ops.metrics_port)
        server.start()
    except ConfigError:
        server = HealthServer(worker.metrics.registry, worker.health.snapshot, "127.0.0.1", 0).start()
    console.print(f"worker metrics: {server.url}/metrics  health: {server.url}/healthz  {server.url}/readyz")
    return server


def _shares(counts: Counter[str], top: int = 4) -> str:
    """``neutral 41%, happiness 30%, ...``: the ``top`` most frequent, rounded for people."""
    total = max(1, sum(counts.values()))
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in counts.most_common(top))


def _emotion_output(out: Any) -> str:
    if out is None:
        return "none"
    where = "the model's own output" if getattr(out, "source", "") == "model" else "coefficient head"
    unsupported = getattr(out, "unsupported", ())
    return f"{where} ({len(out.classes)} classes" + (
        f"; unsupported: {', '.join(unsupported)})" if unsupported else ")"
    )


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    """The summary for people (rounded; `--json` has the exact numbers), with the live table's labels."""
    tb = Table(title="demo summary", show_header=False)
    for label, key in (
        ("model", "model_id"),
        ("broker", "broker"),
        ("detector", "detector"),
        ("pacing", "pacing"),
        ("streams done", "streams_completed"),
        ("packets ingested", "frames_ingested"),
        ("frames decoded", "frames_decoded"),
        ("frames sampled", "frames_sampled"),
        ("events published", "events_published"),
        ("events received", "events_received"),
        ("frames with faces", "frames_with_faces"),
        ("faces", "faces"),
        ("emotion aggregates", "aggregates_received"),
    ):
        tb.add_row(label, str(s[key]))
    tb.add_row("throughput", f"{s['throughput_frames_per_s']:.1f} frames/s")
    tb.add_row("emotion output", s["emotion_output"])
    if s["top_emotion_share"]:
        tb.add_row("top emotion per face", _shares(Counter(s["top_emotion_share"])))
    if s["dominant_emotion_windows"]:
        tb.add_row(
            "dominant emotion of stream windows",
            ", ".join(f"{k} {v}" for k, v in s["dominant_emotion_windows"].items()),
        )
    tb.add_row("latency p50 / p99", f"{_ms(s['latency_s']['p50'])} / {_ms(s['latency_s']['p99'])}")
    for stage, v in s["stages"].items():
        tb.add_row(f"stage {stage}", f"{v['seconds']:.2f} s ({100 * v['share']:.0f}%)")
    if s["dead_letters"]:
        tb.add_row("dead letters", str(s["dead_letters"]))
    console.print(tb)
    if s["warning"]:
        console.print(f"[bold red]{s['warning']}[/]")
    console.print("[green]OK[/]" if s["ok"] else "[red]INCOMPLETE: see the counts above[/]")
