"""Each worker stage on its own: no broker, no model, no video.

The stages are the objects :class:`~expnet_stream.worker.pipeline.Pipeline` and
:class:`~expnet_stream.worker.worker.Worker` drive (see their module docstrings). The whole pipeline on real video
with the real model is in ``test_pipeline*.py``; the worker on a real broker in ``tests/integration``. Where a stage
needs a collaborator that is not under test here (a detector, an engine's id and contract), the test uses a small
scripted stand-in and says so.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from kafka import TopicPartition

from expnet_stream.aggregate.settings import TemporalSettings
from expnet_stream.aggregate.temporal import StreamTemporal
from expnet_stream.config.settings import IdleSettings, WorkerSettings
from expnet_stream.engines.base import Engine
from expnet_stream.errors import DecodeError
from expnet_stream.events.schema import IDLE, StreamEnd, TrackState, VideoPacket
from expnet_stream.faces.detections import Detections
from expnet_stream.models.contract import PreprocessContract
from expnet_stream.video.decode import DecodedFrame
from expnet_stream.worker.batcher import Batcher
from expnet_stream.worker.commits import CommitLedger
from expnet_stream.worker.face_finder import FaceFinder
from expnet_stream.worker.finisher import Finisher
from expnet_stream.worker.idle import silent
from expnet_stream.worker.intake import Intake
from expnet_stream.worker.partitions import input_drained, plan_backpressure, round_robin
from expnet_stream.worker.publisher import make_dead_letter
from expnet_stream.worker.schedule import DetectionSchedule, Sampler, scene_cut
from expnet_stream.worker.stages import StageTimes
from expnet_stream.worker.state_topic import due_checkpoints
from expnet_stream.worker.streams import FUTURE_SLACK_S, Source, StreamState, StreamTable
from expnet_stream.worker.track_ids import TrackIdHandoff
from expnet_stream.worker.work import FrameWork, WorkQueue


def _dets(*boxes: tuple[float, float, float, float], score: float = 0.9, ids: list[int] | None = None) -> Detections:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    track = np.array(ids if ids is not None else [-1] * n, np.int64)
    return Detections(xyxy, np.full(n, score, np.float32), track, np.zeros(n, np.float32))


def _frame_work(table: StreamTable, sid: str = "s", partition: int = 0, **kw: object) -> FrameWork:
    state = table.get(sid) or table.open(sid, partition)
    return FrameWork(stream=state, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ streams
def test_stream_table_capacity_resume_and_release() -> None:
    table = StreamTable(max_streams=2)
    table.open("a", 0)
    state, new = table.resume("b", 1)
    assert new and state.partition == 1
    assert table.resume("b", 1) == (state, False)
    with pytest.raises(DecodeError) as err:
        table.resume("c", 0)
    assert err.value.reason == "too_many_streams"
    table.open("a", 0, replace=True)  # a restart takes its own slot, never refused
    # a stream met mid-way takes the carried track state of the previous owner, once
    carried = TrackState(stream_id="d", frame_seq=3, pts_time=0.1, tracks=[], next_id=2, worker_id="w", sent_time=0)
    table.carried["d"] = carried
    table.close(table.streams["b"])
    d, _ = table.resume("d", 0)
    assert d.carry == carried and "d" not in table.carried
    assert sorted(table.drop_partitions({0})) == ["a", "d"] and table.streams == {}


def test_at_capacity_a_bare_start_is_evicted_before_a_stream_that_sends() -> None:
    table = StreamTable(max_streams=2)
    evicted: list[str] = []
    table.on_evict = lambda st: evicted.append(st.stream_id)
    sending, _ = table.resume("cam", 0)
    sending.counters.packets = 5
    table.open("bare", 0)
    table.open("flood1", 0)  # full: the bare start goes, not the stream that sends
    table.open("flood2", 0)
    assert evicted == ["bare", "flood1"] and sorted(table.streams) == ["cam", "flood2"] and table.evicted == 2
    table.streams["flood2"].counters.packets = 1
    sending.last_seen, table.streams["flood2"].last_seen = 10.0, 20.0
    table.open("new", 0)  # every stream sends: the least recently active goes
    assert evicted[-1] == "cam"


def test_stream_state_releases_sources_in_pts_order() -> None:
    state = StreamTable().open("s", 0)
    state.hold(3, Source(0, 10))  # B-frames: decode order 3, 1, 2
    state.hold(1, Source(0, 11))
    state.hold(None, Source(0, 12))  # no pts: released with the next frame
    state.hold(2, Source(0, 13))
    assert state.release(1) == [Source(0, 11), Source(0, 12)]
    assert state.release(None) == []
    assert state.release(2) == [Source(0, 13)]
    assert state.release_all() == [Source(0, 10)] and state.outstanding == []


def test_a_capture_time_from_the_future_counts_a_few_seconds_ahead_at_most() -> None:
    table = StreamTable()
    state = table.open("s", 4)
    table.saw_capture(state, 4, time.time() + 86400.0)
    assert table.partition_time[4] <= time.time() + FUTURE_SLACK_S and state.last_capture == table.partition_time[4]
    assert IdleSettings().stream_s / 2 > FUTURE_SLACK_S  # one skewed producer cannot close the others as idle


# ------------------------------------------------------------------------------------------------ work queue
def test_work_queue_counts_and_control_sources() -> None:
    table, queue = StreamTable(), WorkQueue()
    assert not queue.finish_after(Source(0, 1))  # nothing queued: the caller finishes the source now
    w = _frame_work(table)
    queue.append(w)
    queue.defer(w, np.zeros((4, 4, 3), np.uint8), 0.5)
    assert queue.pending == 1 and queue.waiting() == [w] and w.frame_time == 0.5
    assert queue.found(w) is not None and queue.pending == 0 and w.image is None
    assert queue.finish_after(Source(0, 2)) and w.after == [Source(0, 2)]
    queue.append(_frame_work(table, "t", partition=3))
    assert queue.by_partition() == {0: 1, 3: 1}


# ------------------------------------------------------------------------------------------------ schedule
def test_sampler_keeps_the_first_frame_of_each_slot_of_stream_time() -> None:
    state = StreamTable().open("s", 0)
    image = np.zeros((2, 2, 3), np.uint8)
    kept = [Sampler(5.0).sample(state, DecodedFrame(image, pts, (1, 25))) for pts in range(12)]
    assert [i for i, k in enumerate(kept) if k] == [0, 5, 10]  # 25 fps at 5 fps: every fifth
    again = StreamTable().open("s", 0)
    assert all(Sampler(None).sample(again, DecodedFrame(image, p, (1, 25))) for p in range(3))


def test_scene_cut_compares_thumbnails_of_consecutive_sampled_frames() -> None:
    state = StreamTable().open("s", 0)
    dark, light = np.zeros((72, 128, 3), np.uint8), np.full((72, 128, 3), 200, np.uint8)
    assert not scene_cut(state, dark, 30.0)  # the first frame has nothing to differ from
    assert not scene_cut(state, dark + 5, 30.0)
    assert scene_cut(state, light, 30.0)
    assert not scene_cut(state, dark, 0.0)  # threshold 0: off


def _temporal(**tracker: object) -> StreamTemporal:
    return StreamTemporal(TemporalSettings.model_validate({"tracker": tracker}), "m@test")


def test_detection_schedule_says_why_the_detector_runs() -> None:
    t = _temporal(detect_every_n=3)
    schedule = DetectionSchedule(t, sample_fps=None)
    table = StreamTable()
    state = table.open("s", 0)
    image = np.zeros((36, 64, 3), np.uint8)
    reasons = []
    for seq in range(4):
        w = _frame_work(table, frame_seq=seq, width=64, height=36)
        state.keyframe_pending = seq == 2
        schedule.note(state, image, w)
        reasons.append(schedule.reason(w))
    assert reasons == ["schedule", None, "keyframe", "schedule"]
    cut = _frame_work(table, frame_seq=4, width=64, height=36)
    schedule.note(state, np.full_like(image, 255), cut)
    assert cut.cut and schedule.reason(cut) == "scene_cut"


# ------------------------------------------------------------------------------------------------ face finder
class _ScriptedDetector:
    """Stand-in detector (the real ones run in test_pipeline*.py): one box per frame; frames whose top-left pixel is
    255 make it raise, and ``batch_fails`` makes every multi-frame call raise (the fallback path)."""

    max_side = None

    def __init__(self, batch_fails: bool = False) -> None:
        self.batch_fails = batch_fails
        self.calls: list[int] = []

    def detect(self, image: np.ndarray) -> Detections:
        if image[0, 0, 0] == 255:
            raise RuntimeError("bad frame")
        return _dets((8, 8, 40, 40))

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        self.calls.append(len(images))
        if self.batch_fails and len(images) > 1:
            raise RuntimeError("batch failed")
        return [self.detect(i) for i in images]


def _finder_queue(detector: _ScriptedDetector, images: list[np.ndarray]) -> tuple[FaceFinder, list[FrameWork]]:
    table, queue = StreamTable(), WorkQueue()
    contract = PreprocessContract(model_name="expnet_resnet18", input_size=32, crop_size=34)
    finder = FaceFinder(detector, contract, queue, stages=StageTimes())  # type: ignore[arg-type]
    works = []
    for i, image in enumerate(images):
        w = _frame_work(table, f"s{i}")
        queue.append(w)
        queue.defer(w, image, 0.0)
        works.append(w)
    return finder, works


def test_face_finder_detects_one_round_across_streams_and_crops() -> None:
    detector = _ScriptedDetector()
    finder, works = _finder_queue(detector, [np.zeros((64, 64, 3), np.uint8) for _ in range(3)])
    finder.resolve()
    assert detector.calls == [3]  # one detector call for the three streams' frames
    assert all(w.n_faces == 1 and w.crops is not None and w.crops.shape == (1, 34, 34, 3) for w in works)
    assert finder.queue.faces == 3 and finder.queue.pending == 0 and all(w.image is None for w in works)


def test_face_finder_isolates_the_frame_the_detector_fails_on() -> None:
    bad = np.zeros((64, 64, 3), np.uint8)
    bad[0, 0] = 255
    detector = _ScriptedDetector(batch_fails=True)
    finder, works = _finder_queue(detector, [np.zeros((64, 64, 3), np.uint8), bad, np.zeros((64, 64, 3), np.uint8)])
    finder.resolve()
    assert [w.error is None for w in works] == [True, False, True]
    assert works[1].error is not None and works[1].error[0] == "detect_error" and works[1].dets is None
    assert finder.queue.faces == 2


# ------------------------------------------------------------------------------------------------ track ids
@pytest.mark.parametrize(
    ("reported", "expected", "next_id"),
    [
        (9, [8, 9], 10),  # the unreported track lines up with the owner's numbering (same confirmation order)
        (8, [10, 8], 11),  # where that id is taken, it gets a fresh one past the owner's
    ],
)
def test_takeover_renames_rebuilt_tracks_to_the_previous_owners_ids(
    reported: int, expected: list[int], next_id: int
) -> None:
    t = _temporal()
    queue, table = WorkQueue(), StreamTable()
    state = table.open("s", 0)
    assert list(t.track("s", 0.0, _dets((0, 0, 10, 10), (50, 50, 60, 60))).track_id) == [0, 1]
    state.carry = TrackState(
        stream_id="s",
        frame_seq=7,
        pts_time=0,
        tracks=[(reported, 50, 50, 60, 60)],
        next_id=10,
        worker_id="w",
        sent_time=0,
    )
    queued = _frame_work(table, tracked=True, dets=_dets((0, 0, 10, 10), ids=[0]))  # tracked, not finished yet
    queue.append(queued)
    handoff = TrackIdHandoff(t, queue)
    same = _dets((0, 0, 10, 10), (50, 50, 60, 60), ids=[0, 1])
    assert handoff.restore(state, 6, same) is same  # before the carried frame: nothing yet
    renamed = handoff.restore(state, 7, same)
    assert list(renamed.track_id) == expected and state.carry is None  # the box the owner reported keeps its id
    assert queued.dets is not None and list(queued.dets.track_id) == expected[:1]
    assert t.next_track_id("s") == next_id


# ------------------------------------------------------------------------------------------------ batcher
class _IdOnlyEngine(Engine):
    """Stand-in engine: the batcher's due/take and the finisher read only an engine's model id and contract
    (inference runs in test_pipeline*.py)."""

    name = "none"
    max_batch = 1

    def __init__(self) -> None:
        self.contract = PreprocessContract(model_name="expnet_resnet18", input_size=32, crop_size=34)
        self.model_id = self.contract.model_id

    def infer(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - never called
        raise AssertionError("never called here")


def test_batcher_due_and_take_whole_frames() -> None:
    table, queue = StreamTable(), WorkQueue()
    batcher = Batcher(_IdOnlyEngine(), queue, max_batch=4, max_wait_s=10.0, stages=StageTimes())
    assert not batcher.due()
    for n in (3, 0, 2):
        w = _frame_work(table, dets=_dets(*[(0, 0, 9, 9)] * n) if n else Detections.empty())
        queue.append(w)
        queue.faces += n
    assert batcher.due()  # 5 faces found >= max_batch 4
    take = batcher.take()
    assert [w.n_faces for w in take] == [3, 0]  # the next frame's 2 faces would overflow: it waits, whole
    assert queue.faces == 2 and len(queue) == 1
    assert not batcher.due(now=time.monotonic())  # 2 faces, waited less than max_wait
    assert batcher.due(now=time.monotonic() + 11.0)
    faceless = WorkQueue()
    faceless.append(_frame_work(table))
    assert Batcher(_IdOnlyEngine(), faceless, stages=StageTimes()).due()


# ------------------------------------------------------------------------------------------------ intake
def test_a_replay_decides_session_takeovers_as_the_first_reading_did() -> None:
    """A live stream of session A (last packet at T, two minutes ago) and another session's keyframe claiming T+60:
    read when it was written (its record timestamp T), the claim counts only 5 s ahead and the stream is not silent
    long enough to change hands (``foreign_session``). A takeover re-reading the same record now must decide the
    same, not measure the claim against today's clock (60 s of "silence": taken over). No packet is decoded here."""
    table, queue = StreamTable(), WorkQueue()
    finisher = Finisher(_IdOnlyEngine(), table, queue, emit=lambda e, s: None, done=lambda s: None)
    intake = Intake(table, queue, finisher, sampler=Sampler(None), stages=StageTimes(), session_takeover_s=10.0)
    t = time.time() - 120.0
    state = table.open("s", 0)
    state.session, state.last_capture = "A", t
    forged = VideoPacket(
        stream_id="s", session="B", seq=9, pts=9, dts=9, time_base=(1, 25), keyframe=True, codec="h264",
        extradata=None, width=16, height=16, data=b"\x00\x00\x00\x01\x65", capture_time=t + 60.0,
    )  # fmt: skip
    for replay in (False, True):
        with pytest.raises(DecodeError) as err:
            intake.handle(forged, Source(0, 7), replay, arrived=t)
        assert err.value.reason == "foreign_session"
    assert table.get("s") is state and state.session == "A"


# ------------------------------------------------------------------------------------------------ finisher
def test_finisher_flags_faces_emits_in_order_and_releases_sources() -> None:
    table, queue = StreamTable(), WorkQueue()
    events: list[tuple[object, list[Source]]] = []
    done: list[Source] = []
    finisher = Finisher(_IdOnlyEngine(), table, queue, emit=lambda e, s: events.append((e, s)), done=done.extend)
    state = table.open("s", 0)
    state.hold(0, Source(0, 5))
    state.hold(1, Source(0, 6))
    boxes = _dets((100, 100, 200, 200), (600, 10, 640, 50), score=0.3)  # big; small, clipped at the right, low score
    w = FrameWork(stream=state, pts=0, width=640, height=360, dets=boxes, source=Source(0, 5), after=[Source(0, 9)])
    w.predicted, w.refined = True, np.array([True, False])
    assert finisher.finish(w, np.zeros((2, 29), np.float32)) == 1
    event, released = events[0]
    assert released == [Source(0, 5), Source(0, 9)] and state.outstanding == [(1.0, Source(0, 6))]
    assert [f.quality for f in event.faces] == [  # type: ignore[attr-defined]
        ["low_score", "refined"],
        ["small_face", "clipped", "low_score", "predicted"],
    ]
    end = FrameWork(stream=state, end=StreamEnd(stream_id="s", packets=2, sent_time=0.0), source=Source(0, 7))
    assert finisher.finish(end, np.zeros((0, 29), np.float32)) == 1
    summary, sources = events[1]
    assert summary.frames_sampled == 1 and summary.faces == 2  # type: ignore[attr-defined]
    assert sources == [Source(0, 6), Source(0, 7)] and "s" not in table.streams


def test_finisher_dead_letters_a_failed_frame_and_still_releases_it() -> None:
    table, queue = StreamTable(), WorkQueue()
    failed: list[tuple[Source, str]] = []
    done: list[Source] = []
    finisher = Finisher(
        _IdOnlyEngine(),
        table,
        queue,
        emit=lambda e, s: None,
        done=done.extend,
        fail=lambda src, reason, detail, sid: failed.append((src, reason)),
    )
    state = table.open("s", 0)
    state.hold(0, Source(0, 1))
    w = FrameWork(stream=state, pts=0, dets=_dets((0, 0, 9, 9)), source=Source(0, 1))
    assert finisher.finish(w, np.zeros((0, 29), np.float32)) == 0  # no row for its face: finishing fails
    assert failed == [(Source(0, 1), "finish_error")] and done == [Source(0, 1)]


# ------------------------------------------------------------------------------------------------ commits
def test_commit_ledger_never_skips_unfinished_work_nor_moves_back() -> None:
    ledger = CommitLedger()
    for o in range(10, 14):
        ledger.consumed(Source(0, o))
    ledger.done([Source(0, 10), Source(0, 12)])
    assert ledger.acknowledged() == {0: 11}  # 11 is not done: the group offset stops there
    ledger.committed_at({0: 11})
    ledger.done([Source(0, 13)])
    assert ledger.acknowledged() == {}  # still 11: nothing new to commit
    ledger.done([Source(0, 11)])
    ledger.unacknowledged()  # a send failed before the confirm: 11 does not count
    assert ledger.acknowledged() == {}
    ledger.done([Source(0, 11)])
    assert ledger.acknowledged() == {0: 14}


def test_commit_ledger_replay_window() -> None:
    ledger = CommitLedger()
    ledger.found_committed(0, 100)
    ledger.replay(0, 100)  # a takeover re-reads from 95, a keyframe below the commit
    assert ledger.is_replay(Source(0, 99)) and not ledger.is_replay(Source(0, 100)) and ledger.replaying(0)
    for o in range(95, 102):
        ledger.consumed(Source(0, o))
    ledger.done([Source(0, o) for o in range(95, 99)])
    assert ledger.acknowledged() == {} and ledger.replaying(0)  # below the commit: nothing to move, still replaying
    ledger.done([Source(0, 99)])
    assert ledger.acknowledged() == {} and not ledger.replaying(0)  # the committable position reached the window
    ledger.done([Source(0, 100)])
    assert ledger.acknowledged() == {0: 101}
    ledger.forget({0})
    assert not ledger.trackers and not ledger.committed


# ------------------------------------------------------------------------------------------------ partitions
def test_backpressure_pauses_the_busiest_half_and_resumes_when_drained() -> None:
    assert plan_backpressure(50, {0: 30, 1: 15, 2: 5}, set(), limit=40) == ({0}, False)
    assert plan_backpressure(50, {0: 30, 1: 15, 2: 5, 3: 0}, {0}, limit=40) == ({1}, False)
    assert plan_backpressure(30, {0: 30}, {0}, limit=40) == (set(), False)  # between half and the limit: hold
    assert plan_backpressure(20, {0: 20}, {0}, limit=40) == (set(), True)
    assert plan_backpressure(20, {0: 20}, set(), limit=40) == (set(), False)


def test_input_is_drained_only_when_the_poll_read_up_to_the_high_watermark() -> None:
    a, b = TopicPartition("in", 0), TopicPartition("in", 1)
    high = {a: 10, b: 5}.get
    assert input_drained({a: 9, b: 4}, high, 2, 64)
    assert not input_drained({a: 7, b: 4}, high, 2, 64)  # three more records of partition 0 wait in the broker
    assert not input_drained({a: 9}, high, 64, 64)  # a full poll: there may be more
    assert input_drained({a: 3}, lambda tp: None, 1, 64)  # no high watermark known yet
    assert input_drained({}, high, 0, 64)


def test_after_a_cut_round_the_next_one_starts_with_the_next_partition() -> None:
    """max_step_s: the partition that spent a round's budget goes last in the next round (round robin)."""
    tps = [TopicPartition("in", p) for p in (2, 0, 3, 1)]
    assert [t.partition for t in round_robin(tps, None)] == [0, 1, 2, 3]
    assert [t.partition for t in round_robin(tps, 0)] == [1, 2, 3, 0]
    assert [t.partition for t in round_robin(tps, 3)] == [0, 1, 2, 3]
    assert [t.partition for t in round_robin(tps[:2], 1)] == [2, 0]  # the cut partition polled nothing this time


# ------------------------------------------------------------------------------------------------ idle
def test_a_stream_is_silent_by_stream_time_or_by_wall_clock_when_caught_up() -> None:
    idle = IdleSettings(stream_s=30.0, wall_s=60.0)
    state = StreamState("s", 0, None)  # type: ignore[arg-type]
    state.last_seq, state.last_capture, state.last_seen = 5, 1000.0, 500.0
    asked: list[bool] = []

    def caught_up(answer: bool) -> bool:
        asked.append(answer)
        return answer

    assert silent(state, 1031.0, 501.0, idle, lambda: caught_up(False))  # the partition ran on 31 s of stream time
    assert not asked
    assert not silent(state, 1010.0, 550.0, idle, lambda: caught_up(True))  # 50 s wall: not yet, and not asked
    assert not asked
    assert not silent(state, 1010.0, 561.0, idle, lambda: caught_up(False))  # lagging: packets may still come
    assert silent(state, 1010.0, 561.0, idle, lambda: caught_up(True))


# ------------------------------------------------------------------------------------------------ state topic
def test_track_states_are_due_once_an_interval_on_our_partitions() -> None:
    table = StreamTable()
    cp = TrackState(stream_id="a", frame_seq=1, pts_time=0, tracks=[], next_id=1, worker_id="w", sent_time=0)
    a, b, c = table.open("a", 0), table.open("b", 1), table.open("c", 0)
    a.checkpoint, b.checkpoint = cp, cp
    a.checkpoint_sent_at, b.checkpoint_sent_at = 99.5, 0.0
    ours = {0: True, 1: False}.__getitem__
    assert due_checkpoints([a, b, c], 100.0, 1.0, ours) == []  # a sent 0.5 s ago, b not ours, c has none
    assert due_checkpoints([a, b, c], 100.6, 1.0, ours) == [a]


# ------------------------------------------------------------------------------------------------ publisher
def test_dead_letters_keep_bytes_up_to_the_limit_and_always_the_pointer() -> None:
    settings = WorkerSettings(dlq_max_value_bytes=8, worker_id="w1")
    small = make_dead_letter(
        "in", Source(2, 7), "oversize", "x" * 5000, "s", key=b"s", value=b"1234", settings=settings
    )
    assert small.value == b"1234" and small.value_size == 4 and len(small.detail) == 2000
    big = make_dead_letter("in", Source(2, 7), "oversize", "d", None, key=None, value=b"x" * 9, settings=settings)
    assert big.value is None and big.value_size == 9
    assert (big.source_topic, big.source_partition, big.source_offset, big.worker_id) == ("in", 2, 7, "w1")
    assert not math.isnan(big.time)


def test_idle_marker_is_a_stream_end() -> None:
    """What IdleWatch writes: a ``stream_end`` with reason idle and the packet count seen (read by the intake)."""
    marker = StreamEnd(stream_id="s", packets=6, reason=IDLE, sent_time=1.0)
    assert marker.reason == IDLE and marker.packets == 6
