"""`expnet-stream ingest` fails loudly (issue 12): every send is checked against the real embedded broker, and every
stream that was started gets its ``stream_end``, with the reason, on a demux error and on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import http.server
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from kafka import KafkaProducer

from expnet_stream.cli.ingest_cmd import EXIT_INGEST_LOST
from expnet_stream.cli.main import main
from expnet_stream.client import Subscriber
from expnet_stream.config.settings import load_settings
from expnet_stream.events.schema import StreamEnd, StreamStart, VideoPacket
from expnet_stream.kafka.broker import EmbeddedBroker
from expnet_stream.kafka.topics import ensure_topics
from expnet_stream.video.ingest import ingest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


def _create_topic(broker: EmbeddedBroker, topic: str, partitions: int = 2) -> None:
    settings = load_settings(None, {"kafka": {"bootstrap": broker.bootstrap}})
    ensure_topics(settings.kafka, settings.topics.model_copy(update={"input": topic, "input_partitions": partitions}))


def _read(broker: EmbeddedBroker, topic: str) -> list[object]:
    with Subscriber(broker.bootstrap, topic, dedupe=False) as sub:
        return [r.event for r in sub.iter(timeout_s=15, idle_s=2)]


def _stream(events: list[object], sid: str) -> list[object]:
    return [e for e in events if getattr(e, "stream_id", None) == sid]


def _packets(msgs: list[object]) -> list[VideoPacket]:
    return [m for m in msgs if isinstance(m, VideoPacket)]


# ------------------------------------------------------------------- sends the broker does not acknowledge
def test_rejected_sends_are_counted_and_the_cli_exits_3(
    broker: EmbeddedBroker,
    topic_prefix: str,
    face_video: tuple[Path, list[bool]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The producer refuses packets over ``max_packet_bytes`` (its ``max_request_size``): each refused packet is
    lost, counted, named in one error line, and the exit status is 3; the stream still ends with its marker."""
    video, has_face = face_video
    topic = f"{topic_prefix}.video"
    cfg = tmp_path / "small.yaml"
    cfg.write_text("max_packet_bytes: 1024\n")
    rc = main(["ingest", str(video), "--stream-id", "big", "--bootstrap", broker.bootstrap, "--topic", topic])
    assert rc == 0  # the same video goes through with the default limit
    capsys.readouterr()
    topic2 = f"{topic_prefix}.small"
    rc = main(
        [
            "ingest",
            str(video),
            "--stream-id",
            "s",
            "--config",
            str(cfg),
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            topic2,
        ]
    )
    err = capsys.readouterr().err
    assert rc == EXIT_INGEST_LOST == 3, err
    msgs = _stream(_read(broker, topic2), "s")
    delivered = _packets(msgs)
    lost = len(has_face) - len(delivered)
    assert lost > 0 and all(len(p.data) < 1024 for p in delivered)
    assert isinstance(msgs[0], StreamStart) and isinstance(msgs[-1], StreamEnd)
    assert msgs[-1].reason == "eof" and msgs[-1].packets == len(has_face)  # packets handed to the producer
    line = next(x for x in err.splitlines() if "were not acknowledged" in x)
    head = (
        f"{lost} of {len(has_face) + 2} messages ({lost} of {len(has_face)} video packets) were not acknowledged "
        f"by the broker at {broker.bootstrap}: "
    )
    assert head in line and "MessageSizeTooLargeError" in line.split(head)[1] and "ERROR" in line, err
    assert f"s: {len(has_face)} packets" in err and f"{lost} of {len(has_face) + 2} messages not acknowledged" in err


def test_sends_to_a_broker_that_went_away_are_counted_as_lost(face_video: tuple[Path, list[bool]]) -> None:
    """A send that the broker never answers fails its future (after the producer's delivery timeout): ``ingest``
    checks the futures, so ``IngestStats.lost`` counts every message, none is left pending."""
    video, _ = face_video
    with EmbeddedBroker() as own:
        producer = KafkaProducer(
            bootstrap_servers=own.bootstrap,
            acks="all",
            linger_ms=5,
            request_timeout_ms=1000,
            delivery_timeout_ms=2000,
            retry_backoff_ms=50,
            max_block_ms=2000,
        )
        try:
            producer.send("gone.video", key=b"warm", value=b"up").get(timeout=10)  # metadata and connection
            own.stop()
            t0 = time.monotonic()
            stats = ingest(
                str(video),
                "gone",
                lambda k, v: producer.send("gone.video", key=k.encode(), value=v),
                flush=producer.flush,
                max_packets=10,
            )
            assert time.monotonic() - t0 < 20
        finally:
            producer.close(timeout=2)
    assert stats.packets == 10 and stats.sent == 12  # start, 10 packets, end
    assert stats.lost == 12 and stats.lost_packets == 10 and stats.pending == 0
    assert stats.first_error is not None and stats.errors
    assert stats.end_reason == "stopped"


# ------------------------------------------------------------------- SIGINT / SIGTERM
@pytest.mark.parametrize(("sig", "reason"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")])
def test_signal_ends_every_open_stream_and_exits_128_plus_signal(
    broker: EmbeddedBroker,
    topic_prefix: str,
    face_video: tuple[Path, list[bool]],
    tmp_path: Path,
    sig: signal.Signals,
    reason: str,
) -> None:
    video, _ = face_video
    topic = f"{topic_prefix}.video"
    _create_topic(broker, topic)
    log = tmp_path / "ingest.log"
    cmd = [sys.executable, "-m", "expnet_stream.cli.main", "ingest", str(video), str(video), "--stream-id", "a"]
    cmd += ["--stream-id", "b", "--realtime", "--loop", "100", "--bootstrap", broker.bootstrap, "--topic", topic]
    with Subscriber(broker.bootstrap, topic, dedupe=False) as sub, log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            seen: list[object] = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and proc.poll() is None:
                seen += [r.event for r in sub.poll(0.2)]
                if all(len(_packets(_stream(seen, sid))) >= 3 for sid in "ab"):
                    break
            assert proc.poll() is None, log.read_text()
            assert all(len(_packets(_stream(seen, sid))) >= 3 for sid in "ab"), log.read_text()
            proc.send_signal(sig)
            rc = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        seen += [r.event for r in sub.iter(timeout_s=15, idle_s=2)]
    text = log.read_text()
    assert rc == 128 + sig, text
    for sid in "ab":
        msgs = _stream(seen, sid)
        ends = [m for m in msgs if isinstance(m, StreamEnd)]
        assert len(ends) == 1 and msgs[-1] is ends[0], text
        assert ends[0].reason == reason
        packets = _packets(msgs)
        assert ends[0].packets == len(packets) and [p.seq for p in packets] == list(range(len(packets)))
        assert f"stream_end reason {reason!r}" in text


@contextlib.contextmanager
def _partial_http_source(video: Path, tmp_path: Path, *, hang: bool, copies: int = 1) -> Iterator[str]:
    """An HTTP URL serving ``copies`` times ``video`` as one MPEG-TS: it announces the full length and sends 60%, then
    closes the connection (FFmpeg reports an I/O error mid-stream; a local truncated file just ends, as EOF) or, with
    ``hang``, sends nothing more until the context exits (a stalled live source: the demuxer blocks in its read)."""
    ts = tmp_path / "face.ts"
    with av.open(str(video)) as src, av.open(str(ts), "w", format="mpegts") as out:
        vs = src.streams.video[0]
        stream = out.add_stream_from_template(vs)
        packets = [(p.pts, p.dts, p.duration, bytes(p), p.is_keyframe) for p in src.demux(vs) if p.dts is not None]
        span = max(pts for pts, *_ in packets) - min(pts for pts, *_ in packets) + (packets[0][2] or 1)
        for k in range(copies):
            for pts, dts, duration, payload, key in packets:
                pkt = av.Packet(payload)
                pkt.pts, pkt.dts, pkt.duration, pkt.time_base = pts + k * span, dts + k * span, duration, vs.time_base
                pkt.is_keyframe = key
                pkt.stream = stream
                out.mux(pkt)
    data = ts.read_bytes()
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: int(len(data) * 0.6)])
            self.wfile.flush()
            if hang:
                release.wait(30)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/face.ts"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_source_stuck_in_a_read_still_gets_its_end_marker_on_sigterm(
    broker: EmbeddedBroker, topic_prefix: str, face_video: tuple[Path, list[bool]], tmp_path: Path
) -> None:
    """The demuxer of a stalled HTTP source blocks and never sees the stop flag: after the grace period the command
    sends the stream's ``stream_end`` itself (``packets`` = what it sent), flushes, and exits 143."""
    video, _ = face_video
    topic = f"{topic_prefix}.video"
    _create_topic(broker, topic)
    log = tmp_path / "ingest.log"
    with _partial_http_source(video, tmp_path, hang=True, copies=6) as url, log.open("wb") as out:
        cmd = [sys.executable, "-m", "expnet_stream.cli.main", "ingest", url, "--stream-id", "stall"]
        cmd += ["--bootstrap", broker.bootstrap, "--topic", topic]
        with Subscriber(broker.bootstrap, topic, dedupe=False) as sub:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            try:
                seen: list[object] = []
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and proc.poll() is None and not _packets(seen):
                    seen += [r.event for r in sub.poll(0.2)]
                time.sleep(1.0)  # the demuxer has read what the server sent and waits for more
                assert proc.poll() is None, log.read_text()
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(timeout=20)
                stopped_after = time.monotonic() - t0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            seen += [r.event for r in sub.iter(timeout_s=15, idle_s=2)]
    text = log.read_text()
    assert rc == 143, text
    assert 4 <= stopped_after < 15, text  # the grace period (5 s), not the stalled read
    msgs = _stream(seen, "stall")
    assert isinstance(msgs[0], StreamStart) and isinstance(msgs[-1], StreamEnd), text
    assert msgs[-1].reason == "terminated" and msgs[-1].packets == len(_packets(msgs)) > 0
    assert "source did not stop in time" in text


# ------------------------------------------------------------------- demux errors
@pytest.fixture()
def dropping_http_source(tmp_path: Path, face_video: tuple[Path, list[bool]]) -> Iterator[tuple[str, int]]:
    """The face video over HTTP, dropped after 60%; yields the URL and the number of packets of the whole video."""
    video, has_face = face_video
    with _partial_http_source(video, tmp_path, hang=False) as url:
        yield url, len(has_face)


def test_demux_error_mid_stream_sends_an_error_stream_end_and_exits_nonzero(
    broker: EmbeddedBroker,
    topic_prefix: str,
    face_video: tuple[Path, list[bool]],
    dropping_http_source: tuple[str, int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Three sources in one run: a good file ends with 'eof', the source that fails mid-stream ends with
    'error: ...' (``packets`` = the packets it sent), a file that cannot be opened never started and gets nothing."""
    video, has_face = face_video
    url, total = dropping_http_source
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # moov (at the end) cut off
    topic = f"{topic_prefix}.video"
    rc = main(
        [
            *("ingest", str(video), url, str(broken)),
            *("--stream-id", "good", "--stream-id", "drop", "--stream-id", "bad"),
            *("--bootstrap", broker.bootstrap, "--topic", topic, "--create-topics"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1, err
    events = _read(broker, topic)
    good = _stream(events, "good")
    assert isinstance(good[-1], StreamEnd) and good[-1].reason == "eof" and good[-1].packets == len(has_face)
    drop = _stream(events, "drop")
    assert isinstance(drop[0], StreamStart) and isinstance(drop[-1], StreamEnd)
    assert drop[-1].reason.startswith("error: demuxing failed"), drop[-1].reason
    assert "127.0.0.1" not in drop[-1].reason and len(drop[-1].reason) <= 200
    packets = _packets(drop)
    assert 0 < len(packets) < total and drop[-1].packets == len(packets)
    assert [m for m in drop if isinstance(m, StreamEnd)] == [drop[-1]]
    assert _stream(events, "bad") == []
    assert "error: drop: demuxing" in err and "error: bad: cannot open video source" in err
