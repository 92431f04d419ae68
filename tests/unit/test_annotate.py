"""`expnet-stream annotate`: the shipped model's events drawn on a real H.264 face clip, re-encoded frame for frame."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from expnet_stream.cli.main import main
from expnet_stream.errors import ConfigError, ModelError
from expnet_stream.events.schema import Face, FrameEvent, pack_coeffs
from expnet_stream.video.annotate import annotate_video
from expnet_stream.video.draw import draw_faces, face_label

pytestmark = pytest.mark.unit

Clip = tuple[Path, list[bool], list[FrameEvent]]


@pytest.fixture(scope="module")
def clip(face_video: tuple[Path, list[bool]]) -> Clip:
    """The real default runtime (shipped model, default settings) on the astronaut clip: 36 frames, 6 without a face."""
    from expnet_stream.config.settings import load_settings
    from expnet_stream.worker.local import run_local
    from expnet_stream.worker.runtime import build_detector, build_emotion_head, build_engine

    path, has_face = face_video
    settings = load_settings(None, {"model": {"threads": 1}})
    engine = build_engine(settings)
    events: list[object] = []
    head = build_emotion_head(settings, engine)
    run_local([(str(path), "cam")], settings, build_detector(settings), engine, events.append, emotion_head=head)
    return path, has_face, [e for e in events if isinstance(e, FrameEvent)]


def _decode(path: Path) -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return [f.to_ndarray(format="bgr24") for f in frames], [float(f.time) for f in frames]


def _region(img: np.ndarray, box: tuple[float, float, float, float], margin: int = 12) -> np.ndarray:
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in box)
    return img[max(0, y1 - margin) : min(h, y2 + margin), max(0, x1 - margin) : min(w, x2 + margin)]


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def test_one_output_frame_per_input_frame_faces_drawn_elsewhere_unchanged(clip: Clip, tmp_path: Path) -> None:
    path, has_face, events = clip
    out = tmp_path / "annotated.mp4"
    stats = annotate_video(path, events, out, progress=False)
    src, src_t = _decode(path)
    dst, dst_t = _decode(out)
    assert len(dst) == len(src) == len(has_face) == stats.frames_written
    assert all(d.shape == s.shape == (360, 480, 3) for d, s in zip(dst, src, strict=True))
    np.testing.assert_allclose(dst_t, src_t, atol=1e-3)  # same timestamps
    n_faces = sum(len(e.faces) for e in events)
    assert n_faces >= sum(has_face) - 2
    assert stats.faces_drawn == n_faces and stats.frames_with_events == len(events) and stats.events_unmatched == 0
    assert all(f.emotions for e in events for f in e.faces), "the shipped model publishes emotions"
    for ev in events:
        i = ev.frame_seq
        if ev.faces:
            d = _diff(_region(dst[i], ev.faces[0].box), _region(src[i], ev.faces[0].box))
            assert (d.max(axis=2) > 60).mean() > 0.02, f"frame {i}: box, label and bars drawn"
        else:
            d = _diff(dst[i], src[i])
            assert d.mean() < 1.5 and np.percentile(d, 99) <= 8, f"frame {i} without faces is (nearly) unchanged"


def test_sampled_out_frames_hold_the_last_faces_then_none(clip: Clip, tmp_path: Path) -> None:
    """Every 5th frame processed (25 fps): with a 0.1 s hold the next 2 frames show its faces (thinner boxes), the
    2 after them none."""
    path, _, events = clip
    kept = [e for e in events if e.frame_seq % 5 == 0]
    stats = annotate_video(path, kept, tmp_path / "held.mp4", progress=False, hold_s=0.1)
    src, _ = _decode(path)
    dst, _ = _decode(tmp_path / "held.mp4")
    assert len(dst) == len(src) and stats.frames_with_events == len(kept)
    with_faces = [e for e in kept if e.faces]
    held = [e.frame_seq + k for e in with_faces for k in (1, 2) if e.frame_seq + k < len(src)]
    assert stats.frames_held == len(held)
    assert stats.frames_with_faces == len(with_faces) + len(held)
    for ev in with_faces:
        box = ev.faces[0].box
        if ev.frame_seq + 1 < len(src):
            d = _diff(_region(dst[ev.frame_seq + 1], box), _region(src[ev.frame_seq + 1], box))
            assert (d.max(axis=2) > 60).mean() > 0.02, "held frame annotated"
        if ev.frame_seq + 3 < len(src):
            d = _diff(dst[ev.frame_seq + 3], src[ev.frame_seq + 3])
            assert d.mean() < 1.5, "beyond the hold: nothing drawn"


def test_mesh_is_drawn_beside_the_face(clip: Clip, tmp_path: Path) -> None:
    path, _, events = clip
    plain = annotate_video(path, events, tmp_path / "plain.mp4", progress=False)
    stats = annotate_video(path, events, tmp_path / "mesh.mp4", progress=False, mesh=True)
    assert stats.frames_written == plain.frames_written and stats.meshes_rendered > 0
    a, _ = _decode(tmp_path / "plain.mp4")
    b, _ = _decode(tmp_path / "mesh.mp4")
    ev = next(e for e in events if e.faces)
    assert _diff(a[ev.frame_seq], b[ev.frame_seq]).max(axis=2).astype(bool).sum() > 500, "mesh pixels differ"


def test_events_that_do_not_fit_the_video_are_refused(clip: Clip, tmp_path: Path) -> None:
    path, _, events = clip
    with pytest.raises(ModelError, match="untrained"):
        untrained = [e.model_copy(update={"basis_id": "none/untrained"}) for e in events]
        annotate_video(path, untrained, tmp_path / "x.mp4", progress=False, mesh=True)
    with pytest.raises(ConfigError, match="1280x720"):
        annotate_video(path, [e.model_copy(update={"width": 1280, "height": 720}) for e in events], tmp_path / "x.mp4")
    with pytest.raises(ConfigError, match="matches a frame"):
        shifted = [e.model_copy(update={"pts": (e.pts or 0) + 10**6}) for e in events]
        annotate_video(path, shifted, tmp_path / "x.mp4", progress=False)
    assert not list(tmp_path.iterdir()), "no partial output left behind"


def test_draw_faces_with_and_without_emotions() -> None:
    img = np.full((360, 640, 3), 80, np.uint8)
    happy = Face(
        track_id=3,
        box=(100, 100, 200, 220),
        score=0.9,
        coeffs=pack_coeffs(np.zeros(29)),
        emotions={"anger": 0.1, "happiness": 0.82, "neutral": 0.08},
    )
    bare = Face(track_id=-1, box=(400, 100, 500, 220), score=0.8, coeffs=pack_coeffs(np.zeros(29)))
    assert face_label(happy) == "#3 happiness 0.82" and face_label(bare) == "face (no emotions)"
    out = draw_faces(img.copy(), [happy, bare])
    changed = out.max(axis=2) != 80
    assert changed[100, 100:200].any() and changed[100:220, 400].any(), "both boxes drawn"
    assert changed[100:200, 205:320].sum() > 500, "the bars beside the tracked face"
    assert not changed[104:220, 505:640].any(), "no bars without emotions (the label tag ends at the box top)"
    assert not changed[260:, :].any() and not changed[:, :90].any(), "nothing drawn away from the faces"
    with pytest.raises(ValueError, match="one entry per face"):
        draw_faces(img, [happy], meshes=[])


def test_cli_writes_the_video_from_a_pipeline_run(
    face_video: tuple[Path, list[bool]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, has_face = face_video
    out = tmp_path / "cli.mp4"
    assert main(["annotate", str(path), "--out", str(out), "--sample-fps", "10", "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["frames_written"] == len(has_face) == len(_decode(out)[0])
    assert report["source"] == "pipeline" and 0 < report["frames_with_events"] < len(has_face)
    assert report["frames_held"] > 0 and report["faces_drawn"] > 0


def test_cli_errors_are_clear(
    face_video: tuple[Path, list[bool]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.mp4"
    assert main(["annotate", str(missing), "--out", str(tmp_path / "o.mp4")]) == 2
    assert f"input video {missing} does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    assert main(["annotate", str(junk), "--out", str(tmp_path / "o.mp4")]) == 2
    assert "cannot read video" in capsys.readouterr().err
    assert main(["annotate", str(junk), "--out", "o.mp4", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "--stream-id" in capsys.readouterr().err
    assert main(["annotate", str(face_video[0]), "--out", str(tmp_path / "o.xyz")]) == 2
    assert "FFmpeg has no container for '.xyz'" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()
