"""No record stops a worker, broker-free parts: schema limits, failure isolation, the rewind scan, takeover state.

The takeover test runs the real pipeline (PyAV, YuNet, ONNX Runtime) three times over one real H.264 stream:
uninterrupted; as a first owner that stops mid-stream; as a second owner that rewinds with :func:`rewind_point`
over the same records (including the first owner's track state) and replays. The second owner must publish,
after the commit, exactly the track ids and window aggregates of the uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import msgpack
import numpy as np
import numpy.typing as npt
import pytest

from expnet_stream import plugin_registry
from expnet_stream.aggregate import StreamTemporal, TemporalSettings
from expnet_stream.aggregate.windows import WindowAggregator, WindowSpec
from expnet_stream.config.settings import DetectorSettings
from expnet_stream.engines.onnxruntime_engine import OrtEngine
from expnet_stream.errors import SchemaError
from expnet_stream.events.aggregate_schema import EmotionAggregate
from expnet_stream.events.codec import decode, encode
from expnet_stream.events.schema import (
    IDLE,
    FrameEvent,
    StreamEnd,
    StreamSummary,
    TrackState,
    VideoPacket,
)
from expnet_stream.faces.detections import Detections
from expnet_stream.faces.tracker import FaceTracker
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.offsets import OffsetTracker
from expnet_stream.worker.pipeline import Pipeline, Source
from expnet_stream.worker.resume import rewind_point
from tests.conftest import LOW_DELAY, astronaut_bgr, write_h264

pytestmark = pytest.mark.unit


def _packet(**over: Any) -> dict[str, Any]:
    base = {
        "v": 1,
        "type": "packet",
        "stream_id": "s",
        "seq": 0,
        "pts": 0,
        "dts": 0,
        "time_base": [1, 25],
        "keyframe": True,
        "codec": "h264",
        "extradata": None,
        "width": 320,
        "height": 240,
        "data": b"\x00\x00\x00\x01",
        "capture_time": 1.0,
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"time_base": [1, 0]}, "time_base"),
        ({"time_base": [0, 25]}, "time_base"),
        ({"time_base": [-1, 25]}, "time_base"),
        ({"time_base": [1, 2**40]}, "time_base"),
        ({"width": 10**6}, "width"),
        ({"height": -1}, "height"),
        ({"pts": 2**63}, "pts"),
        ({"dts": -(2**63)}, "dts"),
        ({"seq": -1}, "seq"),
        ({"capture_time": math.nan}, "capture_time"),
        ({"capture_time": math.inf}, "capture_time"),
        ({"extradata": b"\x00" * (1024 * 1024 + 1)}, "extradata"),
        ({"codec": ""}, "codec"),
        ({"codec": "h264; rm -rf"}, "codec"),
    ],
)
def test_hostile_numbers_fail_at_the_schema_with_the_field_named(over: dict[str, Any], field: str) -> None:
    """The record that used to kill the worker (time_base [1, 0]) and its relatives get a precise reason."""
    with pytest.raises(SchemaError) as err:
        decode(msgpack.packb(_packet(**over), use_bin_type=True))
    assert err.value.reason == "invalid_fields" and field in str(err.value)


def test_old_version_summaries_and_aggregates_still_read() -> None:
    v1 = {
        "v": 1,
        "type": "stream_summary",
        "event_id": "e",
        "stream_id": "s",
        "packets": 1,
        "packets_skipped": 0,
        "frames_decoded": 1,
        "frames_sampled": 1,
        "frames_with_faces": 0,
        "faces": 0,
        "model_id": "m",
        "publish_time": 1.0,
    }
    ev = decode(msgpack.packb(v1))
    assert isinstance(ev, StreamSummary) and ev.end_reason == "eof"
    assert msgpack.unpackb(encode(ev.model_copy(update={"v": 2, "end_reason": IDLE})))["end_reason"] == IDLE
    assert StreamSummary.model_fields["v"].default == EmotionAggregate.model_fields["v"].default == 2


# ---------------------------------------------------------------------------------------------- rewind scan
def _pkt(sid: str, seq: int, key: bool, fps: int = 25) -> bytes:
    return encode(VideoPacket.model_validate(_packet(stream_id=sid, seq=seq, pts=seq, dts=seq, keyframe=key)))


def _records(items: list[bytes]) -> list[tuple[int, bytes | None]]:
    return list(enumerate(items))


def test_rewind_point_finds_the_keyframe_before_the_window_horizon() -> None:
    # stream a: keyframes every 10 packets (0.4 s at 25 fps), 40 packets; commit after all of them
    items = [_pkt("a", i, i % 10 == 0) for i in range(40)]
    r0 = rewind_point(_records(items), 40)
    assert (r0.offset, r0.complete) == (30, True)  # decoder only: the last keyframe
    r1 = rewind_point(_records(items), 40, horizon_s=0.5)  # newest 1.56 s - 0.5 -> keyframe at or before 1.06 s
    assert (r1.offset, r1.complete) == (20, True)
    r2 = rewind_point(_records(items[5:]), 40, horizon_s=10.0)  # history beyond the scan: incomplete
    assert r2.complete is False and r2.offset == 5  # the earliest keyframe seen (seq 10); the rest is partial


def test_rewind_point_skips_ended_streams_and_honours_idle_markers() -> None:
    end_a = encode(StreamEnd(stream_id="a", packets=5, sent_time=1.0))
    idle_b = encode(StreamEnd(stream_id="b", packets=3, reason=IDLE, sent_time=1.0))
    stale_c = encode(StreamEnd(stream_id="c", packets=2, reason=IDLE, sent_time=1.0))  # c had 4 packets by then
    items = [_pkt("a", i, i == 0) for i in range(5)] + [end_a]
    items += [_pkt("b", i, i == 0) for i in range(3)] + [idle_b]
    items += [_pkt("c", i, i == 0) for i in range(4)] + [stale_c, _pkt("c", 4, False)]
    r = rewind_point(_records(items), len(items))
    assert r.complete and r.offset == items.index(_pkt("c", 0, True))  # only c is still open


def test_rewind_point_reaches_back_to_the_last_track_state() -> None:
    items = [_pkt("a", i, i % 10 == 0) for i in range(40)]
    state = TrackState(
        stream_id="a", frame_seq=12, pts_time=12 / 25, tracks=[(3, 0, 0, 9, 9)], next_id=4, worker_id="w", sent_time=1
    )
    later = state.model_copy(update={"frame_seq": 45, "pts_time": 45 / 25})  # after the commit: unusable
    r = rewind_point(_records(items), len(items), states=[state, later])
    assert r.offset == 10 and r.states["a"] == state  # keyframe at or before frame 12
    hostile = [(0, b"\xc1"), (1, None), *[(i + 2, v) for i, v in enumerate(items)]]
    assert rewind_point(hostile, len(hostile)).offset == 32  # undecodable records are skipped, not fatal


# ---------------------------------------------------------------------------------------------- renaming state
def test_tracker_and_windows_rename_tracks_without_merging() -> None:
    t = FaceTracker()
    d = Detections(np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32), np.array([0.9, 0.9], np.float32))
    assert t.update(d, 0.0).track_id.tolist() == [0, 1]
    t.rename({0: 7, 1: 3}, next_id=8)
    assert t.update(d, 0.04).track_id.tolist() == [7, 3] and t.next_id == 8
    with pytest.raises(ValueError, match="merges"):
        t.rename({7: 3}, next_id=9)
    agg = WindowAggregator([WindowSpec.tumbling(1.0)], "m")
    agg.on_frame("s", 0.1, [0, 1], np.zeros((2, 29)))
    agg.rename_tracks("s", {0: 7, 1: 3})
    out = agg.flush("s")
    assert sorted(a.track_id for a in out) == [-1, 3, 7]


def test_windows_of_a_resumed_stream_are_partial_with_coverage() -> None:
    agg = WindowAggregator([WindowSpec.tumbling(1.0)], "m", allowed_lateness_s=0.0)
    agg.mark_resumed("s")
    closed = []
    for t in (2.5, 2.9, 3.1):
        closed += agg.on_frame("s", t, [], np.zeros((0, 29)))
    first, second = closed + agg.flush("s")
    assert first.partial and first.coverage == pytest.approx(0.5) and first.window_start == 2.0
    assert not second.partial and second.coverage == 1.0
    fresh = WindowAggregator([WindowSpec.tumbling(1.0)], "m", allowed_lateness_s=0.0)
    fresh.on_frame("s", 2.5, [], np.zeros((0, 29)))
    assert not fresh.flush("s")[0].partial  # a stream that starts here is complete from its first frame


# ---------------------------------------------------------------------------------------------- failure isolation
class FlakyEngine(OrtEngine):
    """Fault injection around the real ONNX Runtime engine: fails the calls picked by ``fail(call, batch)``.
    (The real engine does not fail on demand; everything else it does is real.)"""

    calls = 0
    fail: Any = staticmethod(lambda call, batch: False)

    def infer_all(
        self, batch: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        self.calls += 1
        if self.fail(self.calls, batch):
            raise RuntimeError(f"injected failure on call {self.calls}")
        return super().infer_all(batch)


def _video(path: Path, n: int, *, gap: tuple[int, int] | None = None, gop: int = 10, fps: int = 25) -> Path:
    """An H.264 stream of the astronaut moving; frames in ``gap`` are grey (the face leaves and comes back)."""
    w, h, side = 320, 240, 140
    face = cv2.resize(astronaut_bgr(), (side, side), interpolation=cv2.INTER_AREA)

    def frames() -> Iterator[npt.NDArray[np.uint8]]:
        for i in range(n):
            img = np.full((h, w, 3), 96, np.uint8)
            if gap is None or not gap[0] <= i < gap[1]:
                x = int((w - side) * i / max(1, n - 1))
                img[50 : 50 + side, x : x + side] = face
            yield img

    return write_h264(path, frames(), (w, h), fps=fps, gop=gop, options=LOW_DELAY)


@pytest.fixture(scope="module")
def gap_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _video(tmp_path_factory.mktemp("resilience") / "gap.mp4", 80, gap=(20, 30))


def _pipe(
    onnx: Path, engine: OrtEngine | None = None, temporal: StreamTemporal | None = None
) -> tuple[Pipeline, dict[str, Any]]:
    out: dict[str, Any] = {"events": [], "done": set(), "failed": []}

    def emit(ev: object, sources: list[Source]) -> None:
        out["events"].append(ev)
        out["done"].update(sources)

    pipe = Pipeline(
        plugin_registry.create("face_detector", DetectorSettings().name),  # what the worker uses
        engine or OrtEngine(onnx, max_batch=8, intra_op_threads=1),
        emit=emit,
        done=out["done"].update,
        fail=lambda src, reason, detail, sid: out["failed"].append((src, reason, detail, sid)),
        max_batch=8,
        max_wait_ms=1e9,
        temporal=temporal,
    )
    return pipe, out


def test_a_failing_batch_is_retried_frame_by_frame_and_a_twice_failing_frame_is_dead_lettered(
    small_onnx: Path, gap_video: Path
) -> None:
    engine = FlakyEngine(small_onnx, max_batch=8, intra_op_threads=1)
    poison: list[npt.NDArray[np.float32]] = []

    def fail(call: int, batch: npt.NDArray[np.float32]) -> bool:
        # call 1 fails as a whole (transient); afterwards any batch holding the 5th face crop of the run fails
        if call == 1:
            poison.append(batch[4].copy())
            return True
        return bool(np.isclose(batch, poison[0]).all(axis=(1, 2, 3)).any())

    engine.fail = fail
    msgs = list(iter_stream_messages(str(gap_video), "s"))
    pipe, out = _pipe(small_onnx, engine)
    for i, msg in enumerate(msgs):
        pipe.handle(msg, Source(0, i))
        pipe.pump()
    pipe.pump(force=True)
    frames = [e for e in out["events"] if isinstance(e, FrameEvent)]
    assert len(out["failed"]) == 1 and out["failed"][0][1] == "infer_error" and "injected" in out["failed"][0][2]
    assert len(frames) == 79  # every frame but the poisoned one, in order
    assert [e.frame_seq for e in frames] == sorted(e.frame_seq for e in frames)
    assert out["done"] | {out["failed"][0][0]} == {Source(0, i) for i in range(len(msgs))}  # nothing pinned


# ---------------------------------------------------------------------------------------------- takeover
def _temporal() -> StreamTemporal:
    settings = TemporalSettings.model_validate(
        {
            "windows": [{"kind": "tumbling", "size_s": 0.4}, {"kind": "sliding", "size_s": 0.8, "step_s": 0.2}],
            "allowed_lateness_s": 0.0,
            "tracker": {"max_misses": 2},
        }
    )
    return StreamTemporal(settings, "m")


def test_takeover_replay_restores_track_ids_and_rebuilds_open_windows(small_onnx: Path, gap_video: Path) -> None:
    msgs = [encode(m) for m in iter_stream_messages(str(gap_video), "s")]
    # the uninterrupted run
    ref_pipe, ref = _pipe(small_onnx, temporal=_temporal())
    for i, v in enumerate(msgs):
        ref_pipe.handle(decode(v), Source(0, i))  # type: ignore[arg-type]
        ref_pipe.pump()
    ref_pipe.pump(force=True)
    ref_frames = {e.frame_seq: e for e in ref["events"] if isinstance(e, FrameEvent)}
    ref_aggs = {e.event_id: e for e in ref["events"] if isinstance(e, EmotionAggregate)}
    # the face leaves and comes back (a new track), and faint false detections make short tracks of their own
    assert len({f.track_id for e in ref_frames.values() for f in e.faces}) >= 2

    # owner A: consumes up to offset 60, records its track state (as a worker does at a commit, into the
    # worker-state topic), goes on to offset 70, and dies after committing what it finished
    a_pipe, a = _pipe(small_onnx, temporal=_temporal())
    tracker = OffsetTracker()
    checkpoint = None
    for i, v in enumerate(msgs[:70]):
        tracker.consumed(i)
        a_pipe.handle(decode(v), Source(0, i))  # type: ignore[arg-type]
        a_pipe.pump(force=True)
        if i == 59:
            checkpoint = a_pipe.streams["s"].checkpoint
    assert checkpoint is not None and checkpoint.tracks and min(t[0] for t in checkpoint.tracks) >= 1
    for src in a["done"]:
        tracker.done(src.offset)
    committed = tracker.committable()
    assert committed is not None and 60 < committed <= 70
    records = msgs

    # owner B: scans below the commit, replays from the rewind point, continues
    horizon = 0.8 + 0.0  # longest window + lateness, as the worker computes it
    rewind, b = _take_over(small_onnx, records, committed, horizon, [checkpoint])
    assert rewind.complete and rewind.offset is not None and rewind.offset < committed
    assert rewind.states["s"].frame_seq == checkpoint.frame_seq
    b_frames = [e for e in b if isinstance(e, FrameEvent)]
    assert b_frames and min(e.source_offset for e in b_frames) >= committed - 1  # nothing before the commit again
    for e in b_frames:  # the same faces with the same track ids as the uninterrupted run
        ref_e = ref_frames[e.frame_seq]
        assert [f.track_id for f in e.faces] == [f.track_id for f in ref_e.faces], e.frame_seq
    b_aggs = [e for e in b if isinstance(e, EmotionAggregate)]
    assert b_aggs and not any(e.partial for e in b_aggs)
    for e in b_aggs:  # every window B publishes is the uninterrupted run's window: same id, same counts
        assert e.event_id in ref_aggs, (e.track_id, e.window_kind, e.window_start)
        r = ref_aggs[e.event_id]
        assert (e.frames, e.faces, e.track_id) == (r.frames, r.faces, r.track_id)
        np.testing.assert_allclose(e.mean_coefficients, r.mean_coefficients, atol=1e-4)
    assert isinstance(b[-1], StreamSummary)

    # without a track state the horizon alone still rebuilds the stream's windows; with neither they are partial
    for h in (horizon, 0.0):
        _, b2 = _take_over(small_onnx, records, committed, h, [])
        stream_aggs = [e for e in b2 if isinstance(e, EmotionAggregate) and e.track_id == -1]
        complete = all(e.event_id in ref_aggs and not e.partial for e in stream_aggs)
        assert complete is (h > 0), [(e.window_start, e.partial, e.coverage) for e in stream_aggs]


def _take_over(
    onnx: Path, records: list[bytes], committed: int, horizon: float, states: list[TrackState]
) -> tuple[Any, list[object]]:
    rewind = rewind_point(list(enumerate(records[:committed])), committed, horizon, states)
    assert rewind.offset is not None
    pipe, out = _pipe(onnx, temporal=_temporal())
    pipe.carried.update(rewind.states)
    for i in range(rewind.offset, len(records)):
        pipe.handle(decode(records[i]), Source(0, i), replay=i < committed)  # type: ignore[arg-type]
        pipe.pump()
    pipe.pump(force=True)
    return rewind, out["events"]
