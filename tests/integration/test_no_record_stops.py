"""Nothing a record carries stops a worker (issue 12), on the real embedded broker.

* property-based: hypothesis generates schema-shaped hostile records (every field at and beyond its limits, wrong
  types, truncated and random payloads, huge extradata, streams without start or end) mixed into a good stream;
  the worker stays alive, the good stream is complete and in order, every record the schema refuses is in the DLQ,
  and every partition commits to its end (the silent hostile streams close by the idle timeout);
* a stream whose ingester is killed (no ``stream_end``) closes as idle and releases its partition;
* the rewind scan reads the log itself (``find_rewind`` on the broker, window doubling included);
* kill -9 mid-stream: the worker taking over keeps the previous owner's track ids and publishes complete windows.
"""

from __future__ import annotations

import itertools
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from expnet_stream.aggregate import StreamTemporal, TemporalSettings
from expnet_stream.config.settings import WorkerSettings, load_settings
from expnet_stream.engines.onnxruntime_engine import OrtEngine
from expnet_stream.errors import SchemaError
from expnet_stream.events.aggregate_schema import EmotionAggregate
from expnet_stream.events.codec import decode, encode
from expnet_stream.events.schema import (
    DeadLetter,
    FrameEvent,
    StreamEnd,
    StreamStart,
    StreamSummary,
    TrackState,
    VideoPacket,
)
from expnet_stream.kafka.broker import EmbeddedBroker
from expnet_stream.kafka.topics import ensure_topics
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.pipeline import Source
from expnet_stream.worker.resume import STATE_MAC_HEADER, find_rewind, state_mac
from expnet_stream.worker.runtime import build_detector, build_engine
from expnet_stream.worker.worker import Worker
from tests.conftest import broker_settings, h264_keyframe, make_face_video
from tests.integration.fleet_util import Collector, start_ingester, start_worker, stop, worker_config

pytestmark = pytest.mark.integration


def _producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_in_flight_requests_per_connection=1, max_request_size=8 << 20
    )


def _send_all(producer: KafkaProducer, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> list[Source]:
    futures = [producer.send(topic, key=k, value=v) for k, v in items]
    producer.flush()
    return [Source(m.partition, m.offset) for m in (f.get(timeout=10) for f in futures)]


def _drained(worker: Worker, settings: WorkerSettings) -> bool:
    """Every input partition committed up to its end."""
    tps = [TopicPartition(settings.topics.input, p) for p in worker.assigned]
    if not tps or worker.partitions.scanning:
        return False
    # the fetch high watermark, not end_offsets(): Tansu's ListOffsets "latest" answers the last batch's base + 1
    ends = {tp: worker.consumer.highwater(tp) for tp in tps}
    return all(ends[tp] is not None and (worker.consumer.committed(tp) or 0) >= ends[tp] for tp in tps)


# ------------------------------------------------------------------------------------------ hostile records
_PACKET: dict[str, Any] = {
    "v": 1,
    "type": "packet",
    "stream_id": "hostile",
    "seq": 3,
    "pts": 3,
    "dts": 3,
    "time_base": [1, 25],
    "keyframe": True,
    "codec": "h264",
    "extradata": None,
    "width": 160,
    "height": 120,
    "data": b"\x00\x00\x00\x01\x65",
    "capture_time": 1.0,
}
_BEYOND: dict[str, list[Any]] = {  # values the schema must refuse, per field (at-limit values are in _EDGE)
    "time_base": [[1, 0], [0, 25], [-1, 25], [1, 2**31], [2**40, 1], [1], "1/25", None, [1.5, 25]],
    "width": [-1, 16385, 2**63, "w", None],
    "height": [-1, 10**9, 1.5],
    "pts": [2**62 + 1, -(2**62) - 1, 2**64 - 1, "x", 1.5],
    "dts": [2**63, "y"],
    "seq": [-1, 2**63, None, "0"],
    "capture_time": [math.nan, math.inf, -math.inf, "now"],
    "codec": ["", "x" * 40, "h264; rm -rf /", 5],
    "stream_id": ["", "s" * 300, 7, None],
    "data": [None, 5, [1, 2]],
    "v": [0, 3, -1, "1", None],
    "type": ["teleport", None, 3],
}
_EDGE: dict[str, list[Any]] = {  # values at the limits the schema accepts: decoders must cope
    "time_base": [(1, 1), (1, 2**31 - 1), (2**31 - 1, 1), (1, 90000)],
    "width": [0, 1, 16384, 160],
    "height": [0, 1, 16384, 120],
    "pts": [None, 0, 2**62, -(2**62)],
    "dts": [None, 0, 2**62, -(2**62)],
    "seq": [0, 1, 2**62 - 1],
    "codec": ["h264", "hevc", "vp9", "av1", "mpeg4", "mjpeg", "no_such_codec"],
    "capture_time": [0.0, -1.0, 1e15, 1.0],
}


def _refused() -> st.SearchStrategy[bytes]:
    """Records the schema refuses: a packet with one field beyond its limit, truncated, random, non-maps."""
    field_beyond = st.sampled_from(sorted(_BEYOND)).flatmap(
        lambda f: st.sampled_from(_BEYOND[f]).map(lambda v, f=f: msgpack.packb({**_PACKET, f: v}, use_bin_type=True))
    )
    truncated = st.integers(1, 60).map(lambda k: msgpack.packb(_PACKET, use_bin_type=True)[:k])
    ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
    scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=20))
    trees = st.recursive(
        scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4)
    )
    return st.one_of(field_beyond, truncated, st.binary(max_size=300), trees.map(msgpack.packb))


def _odd(stream_ids: list[str]) -> st.SearchStrategy[tuple[str, bytes]]:
    """Records the schema accepts but nothing good can come of: garbage payloads at the field limits, streams
    without a start or an end, huge extradata, worker markers from nowhere."""
    sid = st.sampled_from(stream_ids)
    packet = st.builds(
        lambda s, data, key, extra, **f: VideoPacket.model_validate(
            {**_PACKET, **f, "stream_id": s, "data": data, "keyframe": key, "extradata": extra}
        ),
        sid,
        st.binary(max_size=2048),
        st.booleans(),
        st.none() | st.binary(max_size=4096) | st.just(b"\x01" * (1024 * 1024)),
        **{f: st.sampled_from(v) for f, v in _EDGE.items()},
    )
    start = st.builds(
        lambda s, codec, w, tb: StreamStart(stream_id=s, codec=codec, width=w, height=w, time_base=tb, sent_time=0),
        sid,
        st.sampled_from(_EDGE["codec"]),
        st.sampled_from(_EDGE["width"]),
        st.sampled_from(_EDGE["time_base"]),
    )
    end = st.builds(
        lambda s, n, r: StreamEnd(stream_id=s, packets=n, reason=r, sent_time=0),
        sid,
        st.integers(0, 2**62),
        st.sampled_from(["eof", "idle", "x"]),
    )
    state = st.builds(
        lambda s, i: TrackState(
            stream_id=s, frame_seq=i, pts_time=0.0, tracks=[(1, 0, 0, 5, 5)] * 3, next_id=0, worker_id="x", sent_time=0
        ),
        sid,
        st.integers(0, 2**62),
    )
    return st.one_of(packet, start, end, state).map(lambda m: (m.stream_id, encode(m)))


def _forged() -> st.SearchStrategy[Callable[[str, float], Any]]:
    """Records of another sender (another session, or none) for the good stream while it is live: ``stream_start``,
    ``stream_end`` (any count and reason, ``idle`` included), keyframes (garbage or a real IDR of another picture) and
    other packets, at the stream's own time or up to a minute ahead. Each is a function of (stream id, its time)."""
    session = st.sampled_from(["intruder", None])
    ahead = st.floats(-1.0, 60.0)
    start = st.builds(
        lambda se, dt: (
            lambda sid, now: StreamStart(
                stream_id=sid, session=se, codec="h264", width=160, height=120, time_base=(1, 25), sent_time=now + dt
            )
        ),
        session,
        ahead,
    )
    end = st.builds(
        lambda se, n, r, dt: (
            lambda sid, now: StreamEnd(stream_id=sid, session=se, packets=n, reason=r, sent_time=now + dt)
        ),
        session,
        st.integers(0, 2**62),
        st.sampled_from(["eof", "idle", "x"]),
        ahead,
    )
    packet = st.builds(
        lambda se, key, data, seq, dt: (
            lambda sid, now: VideoPacket.model_validate(
                {
                    **_PACKET,
                    "v": 2,
                    "stream_id": sid,
                    "session": se,
                    "keyframe": key,
                    "data": data,
                    "seq": seq,
                    "pts": seq,
                    "dts": seq,
                    "capture_time": now + dt,
                }
            )
        ),
        session,
        st.booleans(),
        st.sampled_from([b"\x00\x00\x00\x01\x65", h264_keyframe(160, 120)]),
        st.integers(0, 12),
        ahead,
    )
    return st.one_of(start, end, packet)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "clip.mp4"
    make_face_video(path, n_frames=10, blank_frames=2, size=(160, 120), gop=5)
    return path


def test_hostile_records_never_stop_the_worker(
    broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, short_clip: Path
) -> None:
    settings = broker_settings(
        broker,
        topic_prefix,
        small_onnx,
        topics={"input_partitions": 2},
        idle={"wall_s": 1.5},
        max_packet_bytes=4 << 20,
    )
    ensure_topics(settings.kafka, settings.topics)
    worker = Worker(settings, build_detector(settings), build_engine(settings))
    producer = _producer(broker.bootstrap)
    out = Collector(broker.bootstrap, settings.topics.expressions)
    dlq = Collector(broker.bootstrap, settings.topics.dlq)
    clip = list(iter_stream_messages(str(short_clip), "good"))
    n_frames = sum(isinstance(m, VideoPacket) for m in clip)
    counter = itertools.count()
    tally = {"records": 0, "refused": 0, "odd": 0, "forged": 0}

    @hsettings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        refused=st.lists(_refused(), min_size=1, max_size=6),
        odd=st.lists(_odd(["h0", "h1", "h2"]), max_size=6),
        forged=st.lists(_forged(), max_size=4),
        data=st.data(),
    )
    def run(
        refused: list[bytes],
        odd: list[tuple[str, bytes]],
        forged: list[Callable[[str, float], Any]],
        data: st.DataObject,
    ) -> None:
        sid = f"good{next(counter)}"
        now = time.time()  # a live stream: captured now
        good = [
            (sid.encode(), encode(m.model_copy(update={"stream_id": sid, "capture_time": now})))
            if isinstance(m, VideoPacket)
            else (sid.encode(), encode(m.model_copy(update={"stream_id": sid, "sent_time": now})))
            for m in clip
        ]
        bad = [(data.draw(st.sampled_from([sid.encode(), b"h0", None])), v) for v in refused]
        weird = [(k.encode(), v) for k, v in odd]
        for v in refused:  # the reference: the schema refuses each (else hypothesis generated a valid one)
            with pytest.raises(SchemaError):
                decode(v)
        # bad and odd records at random places between the good stream's messages
        items: list[tuple[bytes | None, bytes | None, str]] = [(k, v, "good") for k, v in good]
        for make in forged:  # while the good stream is live: after its start, before its end
            items.insert(data.draw(st.integers(1, len(items) - 1)), (sid.encode(), encode(make(sid, now)), "forged"))
        for k, v in bad:
            items.insert(data.draw(st.integers(0, len(items))), (k, v, "refused"))
        for k, v in weird:
            items.insert(data.draw(st.integers(0, len(items))), (k, v, "odd"))
        where = _send_all(producer, settings.topics.input, [(k, v) for k, v, _ in items])
        refused_at = {src for src, (_, _, kind) in zip(where, items, strict=True) if kind == "refused"}
        forged_at = {src for src, (_, _, kind) in zip(where, items, strict=True) if kind == "forged"}
        tally["records"] += len(items)
        tally["refused"] += len(refused_at)
        tally["odd"] += len(weird)
        tally["forged"] += len(forged_at)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            worker.step()
            summaries = [e for e in out.events() if isinstance(e, StreamSummary) and e.stream_id == sid]
            letters = [e for e in dlq.events() if isinstance(e, DeadLetter)]
            lettered = {(e.source_partition, e.source_offset) for e in letters}
            foreign = {(e.source_partition, e.source_offset) for e in letters if e.reason == "foreign_session"}
            if summaries and refused_at <= lettered and forged_at <= foreign and _drained(worker, settings):
                break
        else:
            stuck = {p: sorted(t._open)[:5] for p, t in worker.commits.ledger.trackers.items() if t.pending}
            open_streams = {
                sid: (st.partition, st.last_seq, len(st.outstanding)) for sid, st in worker.pipeline.streams.items()
            }
            pytest.fail(
                f"not done in 90 s: summary={bool(summaries)} dlq_missing={refused_at - lettered} "
                f"forged_not_refused={forged_at - foreign} "
                f"pending={stuck} streams={open_streams} queued={worker.pipeline.queued}"
            )
        frames = [e for e in out.events() if isinstance(e, FrameEvent) and e.stream_id == sid]
        first: dict[str, int] = {}
        for e in frames:
            first.setdefault(e.event_id, e.frame_seq)
        assert list(first.values()) == list(range(n_frames)), "the good stream is complete and in order"

    try:
        run()
    finally:
        worker.close()
        producer.close()
        out.close()
        dlq.close()
    reasons = sorted(worker.stats.dead_letters)
    print(
        f"hostile: records={tally} dead_letters={dict(worker.stats.dead_letters)} "
        f"idle_closed={worker.stats.idle_closed}"
    )
    assert "invalid_fields" in reasons and worker.stats.idle_closed > 0 and tally["forged"] > 0


# ------------------------------------------------------------------------------------------ silent streams
def test_a_killed_ingester_leaves_a_stream_that_closes_as_idle(
    broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, tmp_path: Path
) -> None:
    video = tmp_path / "long.mp4"
    make_face_video(video, n_frames=250, blank_frames=0, size=(160, 120), gop=10)
    settings = broker_settings(broker, topic_prefix, small_onnx, topics={"input_partitions": 1}, idle={"wall_s": 2.0})
    ensure_topics(settings.kafka, settings.topics)
    ingester = start_ingester(video, "cut", broker.bootstrap, settings.topics.input)
    worker = Worker(settings, build_detector(settings), build_engine(settings))
    out = Collector(broker.bootstrap, settings.topics.expressions)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.stats.frame_events < 20:
            worker.step()
        ingester.send_signal(signal.SIGKILL)  # no stream_end, ever
        ingester.wait(timeout=10)
        t_kill = time.monotonic()
        worker.run(max_seconds=30, until=lambda w: w.stats.summaries >= 1 and _drained(w, settings))
        took = time.monotonic() - t_kill
    finally:
        worker.close()
        if ingester.poll() is None:
            ingester.kill()
    try:
        assert out.wait(lambda ev: any(isinstance(e, StreamSummary) for e in ev), 15)
    finally:
        out.close()
    (summary,) = [e for e in out.events() if isinstance(e, StreamSummary)]
    assert summary.end_reason == "idle" and summary.stream_id == "cut"
    packets = _read_packets(broker, settings.topics.input, "cut")
    frames = {e.pts for e in out.events() if isinstance(e, FrameEvent)}
    assert frames == {p.pts for p in packets}, "every packet sent before the kill has its frame (decoder flushed)"
    assert "cut" not in worker.pipeline.streams and worker.stats.idle_closed == 1
    assert 2.0 <= took < 20, took
    print(f"idle: {len(packets)} packets before the kill, closed {took:.1f} s after it")


def _read_packets(broker: EmbeddedBroker, topic: str, sid: str) -> list[VideoPacket]:
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", group_id=None)
    out: list[VideoPacket] = []
    try:
        deadline = time.monotonic() + 10
        idle = 0
        while time.monotonic() < deadline and idle < 3:
            batch = consumer.poll(timeout_ms=300)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for r in records:
                    msg = decode(r.value)
                    if isinstance(msg, VideoPacket) and msg.stream_id == sid:
                        out.append(msg)
    finally:
        consumer.close()
    return out


# ------------------------------------------------------------------------------------------ the rewind scan
def test_find_rewind_reads_back_through_the_log(broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path) -> None:
    """On the broker: the scan doubles its window until it has the keyframe and returns the last track state."""
    settings = broker_settings(broker, topic_prefix, small_onnx, topics={"input_partitions": 1})
    ensure_topics(settings.kafka, settings.topics)
    pk = dict(_PACKET, stream_id="r", time_base=[1, 25])
    start = StreamStart(stream_id="r", codec="h264", width=1, height=1, time_base=(1, 25), sent_time=0)
    items: list[tuple[bytes | None, bytes | None]] = [(b"r", encode(start))]
    for i in range(600):  # one keyframe every 250 packets: 0, 250, 500
        items.append((b"r", msgpack.packb({**pk, "seq": i, "pts": i, "dts": i, "keyframe": i % 250 == 0})))
    producer = _producer(broker.bootstrap)
    where = _send_all(producer, settings.topics.input, items)
    state = TrackState(
        stream_id="r", frame_seq=240, pts_time=240 / 25, tracks=[(4, 1, 1, 9, 9)], next_id=5, worker_id="w", sent_time=0
    )
    _send_all(producer, settings.topics.state, [(b"r", encode(state))])
    tp = TopicPartition(settings.topics.input, 0)
    end = where[-1].offset + 1
    kw = settings.kafka.client_kwargs()
    assert find_rewind(kw, tp, end, window=16).offset == where[501].offset  # packet 500 (after the start record)
    deep = find_rewind(kw, tp, end, horizon_s=12.0, window=16)  # newest 599/25 s - 12 s -> keyframe 250
    assert deep.complete and deep.offset == where[251].offset and not deep.states
    with_state = find_rewind(kw, tp, end, window=16, state_topic=settings.topics.state)  # frame 240 -> keyframe 0
    assert with_state.complete and with_state.offset == where[1].offset and with_state.states["r"] == state
    short = find_rewind(kw, tp, end, horizon_s=12.0, window=16, max_window=64)
    assert not short.complete  # the keyframe lies beyond the window limit: said so, windows become partial

    # with a state_secret only signed states count: a newer forged one (unsigned, or signed with another key) is not
    secret = b"fleet-secret"
    signed = state.model_copy(update={"frame_seq": 260, "pts_time": 260 / 25})
    forged = state.model_copy(update={"frame_seq": 270, "pts_time": 270 / 25, "tracks": [(2**31 - 1, 1, 1, 9, 9)]})
    for msg, key in ((signed, secret), (forged, None), (forged, b"another key")):
        value = encode(msg)
        headers = None if key is None else [(STATE_MAC_HEADER, state_mac(key, value))]
        producer.send(settings.topics.state, key=b"r", value=value, partition=0, headers=headers).get(timeout=10)
    trusted = find_rewind(kw, tp, end, window=16, state_topic=settings.topics.state, state_secret=secret)
    assert trusted.states["r"] == signed
    unchecked = find_rewind(kw, tp, end, window=16, state_topic=settings.topics.state)
    assert unchecked.states["r"] == forged  # without a secret the newest record on the topic wins


# ------------------------------------------------------------------------------------------ kill -9 takeover
def test_kill9_takeover_keeps_track_ids_and_rebuilds_open_windows(
    broker: EmbeddedBroker, topic_prefix: str, small_onnx: Path, tmp_path: Path
) -> None:
    """A face leaves and comes back (track id 1+, never 0 again); the owner is killed with -9 well after that; the
    worker taking over publishes, for every frame after its takeover, the track ids of an uninterrupted run, and
    only complete windows, each one equal (same id, same frame count) to the uninterrupted run's."""
    from tests.unit.test_resilience import _pipe, _video

    video = _video(tmp_path / "gap.mp4", 200, gap=(20, 30))
    temporal = {
        "windows": [{"kind": "tumbling", "size_s": 0.4}, {"kind": "sliding", "size_s": 0.8, "step_s": 0.2}],
        "allowed_lateness_s": 0.0,
        "tracker": {"max_misses": 2},
    }
    extra = {
        "temporal": temporal,
        "track_state_interval_s": 0.2,
        "topics": {"input_partitions": 1},
        "state_secret": "fleet-secret",  # the states are signed by A and checked by B
    }
    cfg_a = worker_config(tmp_path, "k9-a", broker.bootstrap, topic_prefix, small_onnx, **extra)
    cfg_b = worker_config(tmp_path, "k9-b", broker.bootstrap, topic_prefix, small_onnx, **extra)
    settings = load_settings(cfg_a)
    ensure_topics(settings.kafka, settings.topics)
    messages = list(iter_stream_messages(str(video), "gap"))
    # the uninterrupted reference, in process
    model_id = OrtEngine(small_onnx, max_batch=1, intra_op_threads=1).model_id
    ref_pipe, ref = _pipe(small_onnx, temporal=StreamTemporal(TemporalSettings.model_validate(temporal), model_id))
    for i, m in enumerate(messages):
        ref_pipe.handle(m, Source(0, i))
        ref_pipe.pump()
    ref_pipe.pump(force=True)
    ref_ids = {e.frame_seq: [f.track_id for f in e.faces] for e in ref["events"] if isinstance(e, FrameEvent)}
    out = Collector(broker.bootstrap, settings.topics.expressions)
    emo = Collector(broker.bootstrap, settings.topics.emotions)
    a = start_worker(cfg_a, tmp_path / "a.log")
    b = None
    try:
        producer = _producer(broker.bootstrap)
        # the owner gets the stream up to packet 150 only, so it is killed mid-stream however fast it runs
        head, tail = messages[:151], messages[151:]
        _send_all(producer, settings.topics.input, [(b"gap", encode(m)) for m in head])
        assert out.wait(lambda ev: sum(isinstance(e, FrameEvent) for e in ev) >= 120, 120), "no progress"
        time.sleep(0.5)  # a commit and a track state after frame 120
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        t_kill = time.time()
        _send_all(producer, settings.topics.input, [(b"gap", encode(m)) for m in tail])
        b = start_worker(cfg_b, tmp_path / "b.log")
        assert out.wait(lambda ev: any(isinstance(e, StreamSummary) for e in ev), 120), "stream unfinished"
    finally:
        for p in (a, b):
            if p is not None:
                stop(p)
        out.close()
        emo.close()
    frames = [e for e in out.events() if isinstance(e, FrameEvent)]
    assert {e.frame_seq for e in frames} == set(ref_ids), "every frame has an event"
    after = [e for e in frames if e.publish_time > t_kill]
    assert after and min(e.frame_seq for e in after) > 100, "the taker-over started after the gap"
    for e in after:
        assert [f.track_id for f in e.faces] == ref_ids[e.frame_seq], f"frame {e.frame_seq}: track ids changed"
    assert any(tid > 0 for e in after for tid in ref_ids[e.frame_seq]), (
        "the test needs ids a fresh tracker would not give"
    )
    ref_aggs = {e.event_id: e for e in ref["events"] if isinstance(e, EmotionAggregate)}
    aggs_b = [e for e in emo.events() if isinstance(e, EmotionAggregate) and e.publish_time > t_kill]
    assert aggs_b and not any(e.partial for e in aggs_b)
    for e in aggs_b:
        r = ref_aggs.get(e.event_id)
        same = [
            (x.first_time, x.frames, x.closed_by)
            for x in ref_aggs.values()
            if (x.track_id, x.window_kind, x.window_start) == (e.track_id, e.window_kind, e.window_start)
        ]
        detail = (e.window_start, e.first_time, e.frames, e.closed_by, same)
        assert r is not None and (r.frames, r.faces) == (e.frames, e.faces), detail
    print(
        f"kill -9 takeover: {len(after)} frames and {len(aggs_b)} aggregates from the taker-over, "
        "ids and windows as uninterrupted"
    )
