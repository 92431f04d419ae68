"""Detection off the hot path (issue 14): YuNet on ONNX Runtime, and tracker-driven detection with triggers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from expnet_stream import plugin_registry
from expnet_stream.aggregate import StreamTemporal, TemporalSettings
from expnet_stream.engines.onnxruntime_engine import OrtEngine
from expnet_stream.events.schema import FrameEvent
from expnet_stream.faces.detections import Detections
from expnet_stream.faces.detector import FaceDetector
from expnet_stream.faces.tracker import iou_matrix
from expnet_stream.video.ingest import iter_stream_messages
from expnet_stream.worker.pipeline import Pipeline, Source
from tests.conftest import LOW_DELAY, astronaut_bgr, write_h264

pytestmark = pytest.mark.unit


def test_yunet_finds_the_face_yuface_finds_and_batches_frames_of_any_size() -> None:
    img = astronaut_bgr()
    yunet = plugin_registry.create("face_detector", "yunet")
    yuface = plugin_registry.create("face_detector", "yuface")
    a, b = yunet.detect(img), yuface.detect(img)
    assert len(a) == len(b) == 1 and iou_matrix(a.xyxy, b.xyxy)[0, 0] > 0.8
    odd = np.ascontiguousarray(img[7:301, 3:397])  # not a multiple of 32: padded, boxes stay in frame pixels
    big = cv2.resize(img, (1280, 1280))  # downscaled to max_side 640 and mapped back
    batch = yunet.detect_batch([img, odd, big, img])
    for frame, got in zip([img, odd, big, img], batch, strict=True):
        one = yunet.detect(frame)
        np.testing.assert_allclose(got.xyxy, one.xyxy, atol=0.5)
        assert len(got) == 1 and (got.xyxy[:, 2] <= frame.shape[1]).all() and (got.xyxy[:, 3] <= frame.shape[0]).all()
    assert len(yunet.detect(np.full((360, 640, 3), 96, np.uint8))) == 0  # no face, no box


def test_yunet_runs_one_frame_per_call_on_cpu_and_chunks_larger_batches() -> None:
    """On the CPU provider a batch is no faster per frame and keeps more memory, so frames run one per call by
    default; ``max_batch`` chunks the frames of one size into calls of that many, with the same faces."""
    img = astronaut_bgr()
    frames = [img, np.ascontiguousarray(img[:, ::-1]), img, np.full_like(img, 90), img]
    one = plugin_registry.create("face_detector", "yunet")
    three = plugin_registry.create("face_detector", "yunet", max_batch=3)
    assert one.max_batch == 1 and three.max_batch == 3
    for a, b in zip(one.detect_batch(frames), three.detect_batch(frames), strict=True):
        assert len(a) == len(b)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.5)
    with pytest.raises(ValueError, match="max_batch"):
        plugin_registry.create("face_detector", "yunet", max_batch=0)


def test_yunet_options_are_checked() -> None:
    with pytest.raises(ValueError, match="no such file"):
        plugin_registry.create("face_detector", "yunet", model="/nope.onnx")
    s = plugin_registry.create("face_detector", "yunet", model="s", nms_threshold=0.4, threads=2)
    assert len(s.detect(astronaut_bgr())) == 1


def _exit_video(path: Path, n: int = 40, gop: int = 20) -> Path:
    """Grey for 10 frames, then a cut: a darker scene with the astronaut, who drifts right until half of the face
    has left the frame."""
    w, h, side = 320, 240, 160
    face = cv2.resize(astronaut_bgr(), (side, side), interpolation=cv2.INTER_AREA)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            img = np.full((h, w, 3), 160 if i < 10 else 40, np.uint8)
            if i >= 10:
                x = int(200 + (i - 10) * 1.5)
                vis = min(side, w - x)
                img[40 : 40 + side, x : x + vis] = face[:, :vis]
            yield img

    return write_h264(path, frames(), (w, h), gop=gop, options=LOW_DELAY)


def _run(onnx: Path, video: Path, tracker: dict[str, object]) -> tuple[Pipeline, list[FrameEvent]]:
    settings = TemporalSettings.model_validate({"tracker": tracker})
    events: list[FrameEvent] = []
    pipe = Pipeline(
        plugin_registry.create("face_detector", "yunet"),
        OrtEngine(onnx, max_batch=8, intra_op_threads=1),
        emit=lambda ev, _s: events.append(ev) if isinstance(ev, FrameEvent) else None,
        done=lambda _s: None,
        max_batch=8,
        max_wait_ms=1e9,
        temporal=StreamTemporal(settings, "m"),
    )
    for i, msg in enumerate(iter_stream_messages(str(video), "cam")):
        pipe.handle(msg, Source(0, i))
        pipe.pump()
    pipe.pump(force=True)
    return pipe, events


def test_adaptive_detection_fires_on_keyframes_cuts_and_faces_leaving(small_onnx: Path, tmp_path: Path) -> None:
    video = _exit_video(tmp_path / "exit.mp4")
    pipe, events = _run(small_onnx, video, {"detect_every_n": 8})
    reasons = pipe.detect_reasons
    assert reasons["schedule"] == 5  # frames 0, 8, 16, 24, 32
    assert reasons.get("keyframe", 0) >= 1  # frame 20 (frames 0 and 40 are scheduled or absent)
    with_face = [e.frame_seq for e in events if e.faces]
    assert with_face[0] == 10, "the face after the cut is detected on the cut's frame"
    assert reasons["scene_cut"] >= 1 and reasons["weak_track"] >= 1  # leaving the frame re-detects
    assert pipe.stages.calls["detect"] == sum(reasons.values()) < 40
    predicted = [e for e in events if e.faces and "predicted" in e.faces[0].quality]
    assert predicted and all(f.track_id == 0 for e in events for f in e.faces)
    # the schedule alone (triggers off) misses the first frames of the face
    off = {
        "detect_every_n": 8,
        "redetect_on_keyframe": False,
        "scene_cut_threshold": 0,
        "redetect_below_score": 0,
        "redetect_at_edge": False,
    }
    pipe_off, events_off = _run(small_onnx, video, off)
    assert set(pipe_off.detect_reasons) == {"schedule"} and pipe_off.stages.calls["detect"] == 5
    assert next(e.frame_seq for e in events_off if e.faces) == 16


def test_detection_bench_scenario_quick(tmp_path: Path, face_video: tuple[Path, list[bool]]) -> None:
    """`expnet-stream bench detection --quick` writes its JSON and PNG with the comparison filled in."""
    from expnet_stream.bench import run_scenario

    result, json_path, png_path = run_scenario(
        "detection", tmp_path, quick=True, progress=False, video=str(face_video[0])
    )
    assert json_path.is_file() and png_path.is_file()
    s = result["summary"]
    assert set(s["frames_per_s"]) == {"before", "every frame", "default", "refine"} and all(s["frames_per_s"].values())
    runs = result["samples"]["runs"]
    assert runs["default"]["detect_calls"] < runs["every frame"]["detect_calls"] == runs["every frame"]["frames"]
    assert s["default_faces_on_every_frame_face_frames"] is not None


def test_gpu_check_without_cuda_says_so_and_measures_nothing(tmp_path: Path) -> None:
    """The prepared device check, run here (no CUDA): it reports why it measured nothing; no GPU figure is made up."""
    import json

    import torch

    from expnet_stream.bench.gpu_check import main

    if torch.cuda.is_available():  # pragma: no cover - the device machine runs the real check instead
        pytest.skip("a CUDA device is present: run `make gpu-check` there")
    assert main(["--out", str(tmp_path), "--no-tests"]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["device"] is None and "no CUDA" in result["skipped"] and result["engine_faces_per_s"] == {}


class _Recording(FaceDetector):
    """The real YuNet detector, recording how many frames each call carries. ``batch_broken`` makes every
    ``detect_batch`` call fail and ``fail_single`` the n-th single-frame call (fault injection: YuNet does not fail on
    demand; every detection that returns is YuNet's own)."""

    def __init__(self, *, batched: bool = True, batch_broken: bool = False, fail_single: int | None = None) -> None:
        self.inner = plugin_registry.create("face_detector", "yunet")
        self.batched, self.batch_broken, self.fail_single = batched, batch_broken, fail_single
        self.calls: list[int] = []
        self.singles = 0

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        self.singles += 1
        if self.singles == self.fail_single:
            raise RuntimeError("injected detector failure")
        self.calls.append(1)
        return self.inner.detect(frame_bgr)

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        if self.batch_broken:
            raise RuntimeError("injected batch failure")
        if not self.batched:
            return [self.detect(f) for f in frames]
        self.calls.append(len(frames))
        return self.inner.detect_batch(frames)


def _interleaved(video: Path, ids: list[str]) -> list[tuple[object, Source]]:
    per = [list(iter_stream_messages(str(video), sid)) for sid in ids]
    out: list[tuple[object, Source]] = []
    for i in range(max(map(len, per))):
        for p, msgs in enumerate(per):
            if i < len(msgs):
                out.append((msgs[i], Source(p, i)))
    return out


def _run_streams(
    onnx: Path, msgs: list[tuple[object, Source]], detector: FaceDetector
) -> tuple[dict[str, list[FrameEvent]], list[tuple[Source, str, str, str]], set[Source]]:
    events: dict[str, list[FrameEvent]] = {}
    failed: list[tuple[Source, str, str, str]] = []
    done: set[Source] = set()

    def emit(ev: object, sources: list[Source]) -> None:
        done.update(sources)
        if isinstance(ev, FrameEvent):
            events.setdefault(ev.stream_id, []).append(ev)

    pipe = Pipeline(
        detector,
        OrtEngine(onnx, max_batch=8, intra_op_threads=1),
        emit=emit,
        done=done.update,
        fail=lambda src, reason, detail, sid: failed.append((src, reason, detail, sid)),
        max_batch=8,
        max_wait_ms=1e9,
        temporal=StreamTemporal(TemporalSettings(), "m"),  # the default schedule: tracker-driven detection
    )
    for msg, src in msgs:
        pipe.handle(msg, src)  # type: ignore[arg-type]
        pipe.pump()
    pipe.pump(force=True)
    return events, failed, done


def test_detection_is_batched_across_streams_with_the_same_faces(small_onnx: Path, tmp_path: Path) -> None:
    msgs = _interleaved(_exit_video(tmp_path / "exit.mp4"), ["a", "b", "c"])
    batched, one_by_one = _Recording(), _Recording(batched=False)
    got, failed, _ = _run_streams(small_onnx, msgs, batched)
    ref, _, _ = _run_streams(small_onnx, msgs, one_by_one)
    assert not failed and max(batched.calls) == 3  # one frame of each stream per detector call
    assert sum(batched.calls) == sum(one_by_one.calls) and len(batched.calls) < len(one_by_one.calls)
    for sid in ("a", "b", "c"):
        assert [e.frame_seq for e in got[sid]] == list(range(40))  # every frame, in order
        for e, r in zip(got[sid], ref[sid], strict=True):
            assert [f.track_id for f in e.faces] == [f.track_id for f in r.faces]
            assert [f.quality for f in e.faces] == [f.quality for f in r.faces]
            if e.faces:
                np.testing.assert_allclose(
                    np.array([f.box for f in e.faces]), np.array([f.box for f in r.faces]), atol=1.0
                )


def test_a_frame_the_detector_fails_on_is_dead_lettered_and_the_rest_go_on(small_onnx: Path, tmp_path: Path) -> None:
    msgs = _interleaved(_exit_video(tmp_path / "exit.mp4"), ["a", "b"])
    detector = _Recording(batch_broken=True, fail_single=5)  # each batch falls back to frame by frame
    events, failed, done = _run_streams(small_onnx, msgs, detector)
    assert len(failed) == 1 and failed[0][1] == "detect_error" and "injected detector failure" in failed[0][2]
    assert sum(len(v) for v in events.values()) == 2 * 40 - 1
    for evs in events.values():
        assert [e.frame_seq for e in evs] == sorted(e.frame_seq for e in evs)
    assert done | {failed[0][0]} == {src for _, src in msgs}  # nothing pinned


def test_refining_predicted_boxes_finds_the_face_around_each_prediction(small_onnx: Path, tmp_path: Path) -> None:
    """Opt-in ``refine_predicted``: frames between detections get the box YuNet finds in a square around each
    predicted box (flag ``refined``), batched with the detections; frames and track ids as without it."""
    video = _exit_video(tmp_path / "exit.mp4")
    plain_pipe, plain = _run(small_onnx, video, {"detect_every_n": 8})
    pipe, events = _run(small_onnx, video, {"detect_every_n": 8, "refine_predicted": True})
    assert [e.frame_seq for e in events] == [e.frame_seq for e in plain]
    assert [[f.track_id for f in e.faces] for e in events] == [[f.track_id for f in e.faces] for e in plain]
    assert not any("refined" in f.quality for e in plain for f in e.faces)
    refined = [(e.frame_seq, f) for e in events for f in e.faces if "refined" in f.quality]
    assert len(refined) >= 10
    assert pipe.detect_reasons["schedule"] == plain_pipe.detect_reasons["schedule"]  # the full-frame schedule
    # a refined box is the face YuNet finds on that whole frame
    yunet = plugin_registry.create("face_detector", "yunet")
    with av.open(str(video)) as c:
        decoded = [frame.to_ndarray(format="bgr24") for frame in c.decode(video=0)]
    for seq, face in refined[::5]:
        full = yunet.detect(decoded[seq])
        assert len(full) and iou_matrix(np.array([face.box], np.float32), full.xyxy).max() > 0.7
