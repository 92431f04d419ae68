"""The broker-free pipeline: cross-stream batching, per-stream order, and which inputs count as done."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from expnet_stream import plugin_registry
from expnet_stream.engines.onnxruntime_engine import OrtEngine
from expnet_stream.events.schema import FrameEvent, StreamSummary
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.pipeline import Pipeline, Source
from tests.conftest import make_face_video

pytestmark = pytest.mark.unit


class RecordingEngine(OrtEngine):
    """The real ONNX Runtime engine, remembering the batch sizes it was given."""

    sizes: list[int]

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.sizes.append(len(batch))
        return super().infer(batch)


def _run(onnx: Path, videos: list[tuple[Path, str]], max_batch: int) -> tuple[list[object], set[Source], list[int]]:
    engine = RecordingEngine(onnx, max_batch=max_batch, intra_op_threads=1)
    engine.sizes = []
    detector = plugin_registry.create("face_detector", "yunet")
    events: list[object] = []
    done: set[Source] = set()

    def emit(ev: FrameEvent | StreamSummary, sources: list[Source]) -> None:
        events.append(ev)
        done.update(sources)

    pipe = Pipeline(detector, engine, emit=emit, done=done.update, max_batch=max_batch, max_wait_ms=1e9)
    streams = [list(iter_stream_messages(str(path), sid)) for path, sid in videos]
    offset = 0
    # interleave the streams message by message, as a partition holding both would
    for i in range(max(len(s) for s in streams)):
        for s in streams:
            if i < len(s):
                pipe.handle(s[i], Source(0, offset))
                offset += 1
                pipe.pump()
    pipe.pump(force=True)
    assert pipe.queued == 0
    return events, done, engine.sizes


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    d = tmp_path_factory.mktemp("pipe")
    make_face_video(d / "a.mp4", n_frames=20, blank_frames=4)
    make_face_video(d / "b.mp4", n_frames=16, blank_frames=2, size=(400, 320))
    return [(d / "a.mp4", "a"), (d / "b.mp4", "b")]


def test_batching_across_streams_keeps_faces_and_order(small_onnx: Path, two_videos: list[tuple[Path, str]]) -> None:
    single, done1, sizes1 = _run(small_onnx, two_videos, max_batch=1)
    batched, done8, sizes8 = _run(small_onnx, two_videos, max_batch=8)
    assert set(sizes1) == {1}
    assert max(sizes8) == 8 and all(s <= 8 for s in sizes8), "batches fill up across streams, never beyond max"
    assert len(sizes8) < len(sizes1) / 4
    frames1 = {e.event_id: e for e in single if isinstance(e, FrameEvent)}
    frames8 = [e for e in batched if isinstance(e, FrameEvent)]
    assert len(frames8) == len(frames1) == 36
    for ev in frames8:
        ref = frames1[ev.event_id]
        assert [f.box for f in ev.faces] == [f.box for f in ref.faces]
        for f, g in zip(ev.faces, ref.faces, strict=True):
            np.testing.assert_allclose(f.coefficients, g.coefficients, atol=1e-4)
    for sid, n in (("a", 20), ("b", 16)):
        seqs = [e.frame_seq for e in frames8 if e.stream_id == sid]
        assert seqs == list(range(n)), f"stream {sid} in order"
        summary = [e for e in batched if isinstance(e, StreamSummary) and e.stream_id == sid]
        assert len(summary) == 1 and summary[0].frames_sampled == n
    # every input message is done exactly when its work is emitted: all of them by the end
    n_messages = (1 + 20 + 1) + (1 + 16 + 1)  # stream_start + packets + stream_end, per stream
    assert done8 == done1 == {Source(0, o) for o in range(n_messages)}


def test_frames_without_faces_still_get_events(small_onnx: Path, two_videos: list[tuple[Path, str]]) -> None:
    events, _, _ = _run(small_onnx, two_videos[:1], max_batch=4)
    frames = [e for e in events if isinstance(e, FrameEvent)]
    assert [bool(e.faces) for e in frames] == [False] * 4 + [True] * 16
