"""Nothing stops the fleet, round 2 (issue 22): records the schema accepts, sent as a hostile or careless producer
would, on the real broker with real bitstreams. Each case sends a good stream alongside and asserts: the worker is
alive, the good stream is complete and in order, the bad records are in the DLQ with their reasons, and the peak RSS
stays within budget. Each case prints what it measured (peak RSS over the base, the longest loop stall)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from kafka import KafkaProducer, TopicPartition

from expnet_stream.events.codec import decode, encode
from expnet_stream.events.schema import DeadLetter, FrameEvent, StreamEnd, StreamStart, StreamSummary, VideoPacket
from expnet_stream.kafka.broker import EmbeddedBroker
from expnet_stream.kafka.topics import ensure_topics
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.runtime import build_detector, build_engine
from expnet_stream.worker.worker import Worker
from tests.conftest import broker_settings, h264_keyframe, make_face_video
from tests.integration.fleet_util import Collector

pytestmark = pytest.mark.integration

RSS_BUDGET_MB = 300.0  # peak RSS a case may add to the worker's process
DECODER_MEMORY_MB = 64  # decode.memory_mb of the cases


def _rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _reset_peak_rss_mb() -> float:
    """Reset the process's peak RSS to its current RSS (Linux: ``5`` into ``clear_refs``), so that a case measures
    its own peak and not an earlier test's; returns the current RSS. The heap that earlier tests freed is handed back
    first (glibc ``malloc_trim``): reused, it would hide what a case allocates."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak then starts at the process's own
        return _rss_mb("VmHWM")
    return _rss_mb("VmRSS")


def _png(width: int, height: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    assert ok
    return bytes(data)


def _packet(stream_id: str, data: bytes, **fields: Any) -> VideoPacket:
    base: dict[str, Any] = {
        "stream_id": stream_id,
        "seq": 0,
        "pts": 0,
        "dts": 0,
        "time_base": (1, 25),
        "keyframe": True,
        "codec": "h264",
        "extradata": None,
        "width": 160,
        "height": 120,
        "data": data,
        "capture_time": time.time(),
    }
    return VideoPacket.model_validate({**base, **fields})


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile2") / "clip.mp4"
    make_face_video(path, n_frames=10, blank_frames=2, size=(160, 120), gop=5)
    return path


class _Case:
    """A worker in this process, a producer, and collectors of the output and dead-letter topics."""

    def __init__(self, broker: EmbeddedBroker, prefix: str, onnx: Path, clip: Path, **extra: Any) -> None:
        self.settings = broker_settings(broker, prefix, onnx, **extra)
        ensure_topics(self.settings.kafka, self.settings.topics)
        self.worker = Worker(self.settings, build_detector(self.settings), build_engine(self.settings))
        self.producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap,
            acks="all",
            max_in_flight_requests_per_connection=1,
            max_request_size=8 << 20,
        )
        self.out = Collector(broker.bootstrap, self.settings.topics.expressions)
        self.dlq = Collector(broker.bootstrap, self.settings.topics.dlq)
        self.clip = list(iter_stream_messages(str(clip), "good"))
        self.n_frames = sum(isinstance(m, VideoPacket) for m in self.clip)
        self.ids = itertools.count()

    def good(self) -> tuple[str, list[tuple[bytes | None, bytes | None]]]:
        sid = f"good{next(self.ids)}"
        now = time.time()
        msgs = [m.model_copy(update={"stream_id": sid}) for m in self.clip]
        msgs = [m.model_copy(update={"capture_time": now}) if isinstance(m, VideoPacket) else m for m in msgs]
        return sid, [(sid.encode(), encode(m)) for m in msgs]

    def run(
        self, items: list[tuple[bytes | None, bytes | None]], sid: str, bad: int, timeout_s: float = 90.0
    ) -> dict[str, Any]:
        """Send ``items`` (the good stream ``sid`` with ``bad`` bad records among them); step the worker until the good
        stream's summary is out, ``bad`` new letters are in and every offset is committed."""
        letters_before = len([e for e in self.dlq.events() if isinstance(e, DeadLetter)])
        base = _reset_peak_rss_mb()
        futures = [self.producer.send(self.settings.topics.input, key=k, value=v) for k, v in items]
        self.producer.flush()
        ends: dict[int, int] = {}
        for f in futures:
            md = f.get(timeout=10)
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
        stall = 0.0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            self.worker.step()
            stall = max(stall, time.monotonic() - t0)
            summaries = [e for e in self.out.events() if isinstance(e, StreamSummary) and e.stream_id == sid]
            letters = [e for e in self.dlq.events() if isinstance(e, DeadLetter)][letters_before:]
            committed = all(
                (self.worker.consumer.committed(TopicPartition(self.settings.topics.input, p)) or 0) >= end
                for p, end in ends.items()
            )
            if summaries and len(letters) >= bad and committed:
                break
        else:
            pytest.fail(f"not done in {timeout_s} s: summary={bool(summaries)} letters={len(letters)}/{bad}")
        frames = [e for e in self.out.events() if isinstance(e, FrameEvent) and e.stream_id == sid]
        first: dict[str, int] = {}
        for e in frames:
            first.setdefault(e.event_id, e.frame_seq)
        return {
            "frames": list(first.values()),
            "summary": summaries[-1],
            "letters": letters,
            "peak_rss_over_base_mb": _rss_mb() - base,
            "longest_step_s": stall,
        }

    def close(self) -> None:
        self.worker.close()
        self.producer.close()
        self.out.close()
        self.dlq.close()


@pytest.fixture()
def case(
    request: pytest.FixtureRequest, broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, short_clip: Path
) -> Iterator[_Case]:
    settings: dict[str, Any] = {
        "topics": {"input_partitions": 1},
        "max_packet_bytes": 4 << 20,
        "decode": {"max_pixels": 1_000_000, "memory_mb": DECODER_MEMORY_MB},
        "max_streams": 3,
        "session_takeover_s": 1.0,
    }
    settings.update(getattr(request, "param", {}))  # a case's own settings (indirect parametrize)
    c = _Case(broker, topic_prefix, small_onnx, short_clip, **settings)
    try:
        yield c
    finally:
        c.close()


def _check(case: _Case, result: dict[str, Any], name: str) -> None:
    print(
        f"{name}: good frames {len(result['frames'])}/{case.n_frames}, "
        f"peak RSS +{result['peak_rss_over_base_mb']:.0f} MB, "
        f"longest loop step {result['longest_step_s'] * 1000:.0f} ms, "
        f"letters {sorted(e.reason for e in result['letters'])}"
    )
    assert result["frames"] == list(range(case.n_frames)), "the good stream is complete and in order"
    assert result["summary"].end_reason == "eof"
    assert result["peak_rss_over_base_mb"] < RSS_BUDGET_MB


def test_a_letter_too_big_for_the_broker_never_kills_the_worker(case: _Case) -> None:
    """An 850 KB key on a non-msgpack value: the letter keeps the key's size and hash, not the key (before: the key went
    into the letter twice, the send failed with MessageSizeTooLargeError, and the restarted worker died on it again)."""
    sid, good = case.good()
    key = b"k" * (850 * 1024)
    items = [*good[:3], (key, b"\xc1 not msgpack"), *good[3:]]
    result = case.run(items, sid, bad=1)
    _check(case, result, "850 KB key")
    (letter,) = result["letters"]
    assert letter.reason == "not_msgpack" and letter.key is None
    assert letter.key_size == len(key) and letter.key_sha256 == hashlib.sha256(key).hexdigest()


def test_decode_bombs_are_refused_before_they_cost(case: _Case) -> None:
    """A 2048x2048 IDR declared 256x256 (FFmpeg refuses a frame larger than declared before it allocates it), one
    declared beyond max_pixels, a PNG "video" (codec not allowed), 1 MiB of extradata."""
    sid, good = case.good()
    idr = h264_keyframe(2048, 2048)
    bombs = [
        _packet("bomb-small-declared", idr, width=256, height=256),
        _packet("bomb-declared", idr, width=2048, height=2048),
        _packet("png", _png(4096, 4096), codec="png", width=4096, height=4096),
        _packet("extradata", idr[:64], extradata=b"\x01" * (1024 * 1024)),
    ]
    items = list(good)
    for i, bomb in enumerate(bombs):
        items.insert(2 + 2 * i, (bomb.stream_id.encode(), encode(bomb)))
    result = case.run(items, sid, bad=len(bombs))
    _check(case, result, "decode bombs")
    reasons = {e.stream_id: e.reason for e in result["letters"]}
    assert reasons == {
        "bomb-small-declared": "decode_error",
        "bomb-declared": "too_many_pixels",
        "png": "codec_not_allowed",
        "extradata": "extradata_too_large",
    }


def test_a_clock_from_the_future_closes_no_other_stream(case: _Case) -> None:
    """One packet of another stream with a capture time a minute ahead (before: allowed, and it closed every stream of
    its partition as idle, the idle limit being 30 s)."""
    sid, good = case.good()
    skewed = _packet("skewed", b"\x00\x00\x00\x01\x41", keyframe=False, capture_time=time.time() + 60.0)
    # the good stream is open (its start and first packets in) while the worker's idle check runs a few times
    case.producer.send(case.settings.topics.input, key=b"skewed", value=encode(skewed))
    for k, v in good[:3]:
        case.producer.send(case.settings.topics.input, key=k, value=v)
    case.producer.flush()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        case.worker.step()
    assert sid in case.worker.pipeline.streams, "the good stream is open and not closed as idle"
    result = case.run(good[3:], sid, bad=0)
    _check(case, result, "capture time +60 s")
    letters = [e for e in case.dlq.events() if isinstance(e, DeadLetter)]
    assert [(e.stream_id, e.reason) for e in letters] == [("skewed", "before_keyframe")]  # the skewed packet itself
    assert case.worker.stats.idle_closed == 0


def test_a_flood_of_bare_stream_starts_holds_no_slot(case: _Case) -> None:
    """30 ``stream_start`` records of streams that never send a packet, at max_streams=3, around a good stream (before:
    they held every slot and the good stream got 0 of its frames: its packets were dead-lettered)."""
    sid, good = case.good()
    flood = [
        (
            f"flood{i}".encode(),
            encode(
                StreamStart(
                    stream_id=f"flood{i}", codec="h264", width=160, height=120, time_base=(1, 25), sent_time=time.time()
                )
            ),
        )
        for i in range(30)
    ]
    items = [*flood[:10], *good[:2], *flood[10:20], *good[2:6], *flood[20:], *good[6:]]
    result = case.run(items, sid, bad=0)
    _check(case, result, "30 bare stream_starts at max_streams=3")
    assert not [e for e in case.dlq.events() if isinstance(e, DeadLetter)]
    assert case.worker.pipeline.table.evicted >= 28


def test_a_live_stream_refuses_another_sessions_records(case: _Case) -> None:
    """Another sender's ``stream_start``, ``stream_end`` with a huge packet count, a keyframe (a real IDR of another
    picture: before, published as the victim's frame) and a packet without a session, all for the live good stream:
    refused as ``foreign_session`` (before, each cut the good stream short)."""
    sid, good = case.good()
    now = time.time()
    evil = "evil-session"
    forged: list[Any] = [
        StreamStart(stream_id=sid, session=evil, codec="h264", width=160, height=120, time_base=(1, 25), sent_time=now),
        StreamEnd(stream_id=sid, session=evil, packets=10**9, reason="eof", sent_time=now),
        _packet(sid, h264_keyframe(160, 120), session=evil, seq=3, pts=3, dts=3),
        _packet(sid, h264_keyframe(160, 120), seq=4, pts=4, dts=4),  # no session at all
    ]
    items = list(good)
    for i, msg in enumerate(forged):
        items.insert(3 + 2 * i, (sid.encode(), encode(msg)))
    result = case.run(items, sid, bad=len(forged))
    _check(case, result, "another session's records")
    assert [e.reason for e in result["letters"]] == ["foreign_session"] * len(forged)


def test_an_ingester_restarted_after_a_crash_takes_its_stream_over(case: _Case) -> None:
    """Session A sends half a stream and dies (no end); session B starts the same stream id after the stream was
    silent longer than ``session_takeover_s`` (1 s here, in stream time): B's stream is served whole."""
    sid, good = case.good()
    crashed = [(k, v) for k, v in good[:6]]  # start + 5 packets, no end
    later = time.time() + 3.0  # B's clock: 3 s of silence after A's last packet
    restarted = []
    for k, v in good:
        msg = decode(v)
        update: dict[str, Any] = {"session": "restarted"}
        if isinstance(msg, VideoPacket):
            update["capture_time"] = later
        else:
            update["sent_time"] = later
        restarted.append((k, encode(msg.model_copy(update=update))))
    result = case.run(crashed + restarted, sid, bad=0)
    _check(case, result, "ingester restarted after a crash")
    assert not [e for e in case.dlq.events() if isinstance(e, DeadLetter)]


@pytest.mark.parametrize("case", [{"max_streams": 256}], indirect=True)
def test_a_flood_of_large_decoders_stays_within_the_memory_budget(case: _Case) -> None:
    """200 streams that each send one real 960x960 IDR and fall silent, at max_streams=256 (so the count does not
    evict them): without a memory budget their decoders held ~3 MB each until they idled out (the issue saw 2.2 GB
    with 2048x2048). With ``decode.memory_mb`` the least recently active decoders are evicted and the worker's peak
    RSS stays near the budget; the flood's frames are still decoded and published, nothing is dead-lettered."""
    sid, good = case.good()
    idr = h264_keyframe(960, 960)
    flood = [
        (f"big{i}".encode(), encode(_packet(f"big{i}", idr, width=960, height=960, session="flood")))
        for i in range(200)
    ]
    # the good stream is mid-GOP when the flood comes (start, keyframe, a P-frame): one-picture decoders go first. A
    # stream that has sent only its keyframe is as new as the flood's and may be evicted with them (then its packets
    # up to its next keyframe are dead-lettered as decoder_evicted)
    items = [*good[:3], *flood[:100], *good[3:6], *flood[100:], *good[6:]]
    result = case.run(items, sid, bad=0)
    _check(case, result, f"200 streams of 960x960 at decode.memory_mb={DECODER_MEMORY_MB}")
    table = case.worker.pipeline.table
    assert not [e for e in case.dlq.events() if isinstance(e, DeadLetter)]
    # _check held the peak RSS under RSS_BUDGET_MB: here +181 MB (decoders, the queued 960x960 frames, the detector
    # at a new input size); without decode.memory_mb +568 MB
    assert table.decoders_evicted >= 180 and table.decoder_memory <= DECODER_MEMORY_MB * 2**20


@pytest.mark.parametrize("case", [{"max_step_s": 0.001}], indirect=True)
def test_a_run_of_costly_packets_cannot_hold_the_loop(case: _Case) -> None:
    """30 packets of real 960x960 noise IDRs (the costliest pictures within max_pixels) between the good stream's
    packets, at ``max_step_s`` = 1 ms: every poll round stops after its first record and the rest are fetched again.
    Nothing is lost or reordered by the seeks back, and the longest loop step is about one costly packet."""
    sid, good = case.good()
    rng = np.random.default_rng(1)
    costly = []
    for i in range(30):
        buf = io.BytesIO()
        with av.open(buf, "w", format="h264") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 960, 960, "yuv420p"
            stream.options = {"preset": "ultrafast", "crf": "10"}
            img = rng.integers(0, 255, (960, 960, 3), np.uint8)
            data = b"".join(
                bytes(p)
                for p in [*stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")), *stream.encode(None)]
            )
        pkt = _packet("costly", data, width=960, height=960, seq=i, pts=i, dts=i, session="noise")
        costly.append((b"costly", encode(pkt)))
    items = [*good[:3], *costly[:15], *good[3:7], *costly[15:], *good[7:]]
    result = case.run(items, sid, bad=0)
    _check(case, result, "30 noise IDRs of 960x960 at max_step_s=1 ms")
    assert not [e for e in case.dlq.events() if isinstance(e, DeadLetter)]
    assert case.worker.stats.step_cuts > 0
    decoded = [e for e in case.out.events() if isinstance(e, FrameEvent) and e.stream_id == "costly"]
    assert sorted({e.frame_seq for e in decoded}) == list(range(30)), "the costly stream's frames are all served"
