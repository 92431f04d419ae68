"""FER+ votes as emotion targets (issue 21): the vote-distribution loss, contempt as a class, the framing choice,
resuming a training run, and a model from before the change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from expnet_stream.models.emotion import EMOTIONS, FER_CLASSES
from expnet_stream.train.ferplus import (
    FERPLUS_COLUMNS,
    fer_to_emotion_index,
    majority_labels,
    usable_for_emotions,
    vote_distribution,
)
from tests.conftest import ASTRONAUT_FACE, astronaut_bgr

pytestmark = pytest.mark.unit


def ferplus_npz(fer_npz: Path, out: Path) -> Path:
    """FER+-shaped votes for a FER2013-shaped file: 10 votes per face, most on its FER2013 label, one vote of
    contempt on every face and a contempt majority on every 8th; row 5 is unmatched, row 6 mostly 'unknown'."""
    with np.load(fer_npz) as d:
        labels = [str(k) for k in d["label"]]
    n = len(labels)
    votes = np.zeros((n, len(FERPLUS_COLUMNS)), np.uint8)
    for i, k in enumerate(labels):
        if i % 8 == 7:
            votes[i, FERPLUS_COLUMNS.index("contempt")] = 7
            votes[i, FERPLUS_COLUMNS.index(k)] += 3
        else:
            votes[i, FERPLUS_COLUMNS.index(k)] = 7
            votes[i, FERPLUS_COLUMNS.index("contempt")] += 1
            votes[i, FERPLUS_COLUMNS.index("neutral")] += 2
    row = np.arange(n, dtype=np.int32)
    votes[5], row[5] = 0, -1
    votes[6] = 0
    votes[6, FERPLUS_COLUMNS.index("unknown")], votes[6, FERPLUS_COLUMNS.index("NF")] = 6, 2
    votes[6, FERPLUS_COLUMNS.index("happiness")] = 2
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, votes=votes, columns=np.array(FERPLUS_COLUMNS), row=row, match_corr=np.ones(n, np.float32))
    return out


# -- the votes ------------------------------------------------------------------------------------------------------


def test_vote_distribution_majority_and_exclusion_rules() -> None:
    col = FERPLUS_COLUMNS.index
    votes = np.zeros((4, 10), np.int64)
    votes[0, [col("anger"), col("contempt"), col("disgust")]] = [5, 4, 1]
    votes[1, [col("unknown"), col("NF"), col("fear")]] = [3, 3, 4]  # 6 of 10 not an emotion: out
    votes[2, [col("surprise"), col("fear")]] = [5, 5]  # a tie: surprise comes first in FER+ order
    dist = vote_distribution(votes)
    assert dist.shape == (4, 8) and dist.dtype == np.float32
    np.testing.assert_allclose(dist[0], [0.5, 0.4, 0.1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(dist[3], 0.0)  # no votes at all: no target
    assert usable_for_emotions(votes).tolist() == [True, False, True, False]
    assert [EMOTIONS[i] if i >= 0 else None for i in majority_labels(votes)] == ["anger", None, "surprise", None]
    assert [EMOTIONS[i] for i in fer_to_emotion_index(np.arange(7))] == list(FER_CLASSES)


def test_soft_cross_entropy_is_cross_entropy_against_the_vote_distribution() -> None:
    torch = pytest.importorskip("torch", reason="the loss is torch")
    from expnet_stream.train.choices import soft_cross_entropy

    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    onehot = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2]))
    assert torch.allclose(soft_cross_entropy(logits, onehot), ref)
    # against a distribution: -sum p log q, minimised (over q) at q = p
    p = torch.tensor([[0.6, 0.3, 0.1]])
    z = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.SGD([z], lr=2.0)
    for _ in range(300):
        opt.zero_grad()
        soft_cross_entropy(z, p).backward()
        opt.step()
    np.testing.assert_allclose(torch.softmax(z, 1).detach().numpy(), p.numpy(), atol=1e-3)
    # a face of weight 0 does not count; weights scale faces
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    only_first = soft_cross_entropy(logits[:1], t[:1])
    assert torch.allclose(soft_cross_entropy(logits, t, torch.tensor([1.0, 0.0])), only_first)


def test_emotion_data_from_votes_with_contempt_and_left_out_faces(tmp_path: Path) -> None:
    from expnet_stream.train.emotion_data import load_emotion_data
    from expnet_stream.train.fer import build_fer_cache
    from tests.unit.test_emotions import _fer_npz

    (tmp_path / "data" / "train" / "fer2013").mkdir(parents=True)
    fer = _fer_npz(tmp_path / "data" / "train" / "fer2013" / "fer2013.npz", n=16)
    ferplus_npz(fer, tmp_path / "data" / "train" / "fer2013" / "ferplus.npz")
    build_fer_cache(fer, tmp_path / "cache" / "faces" / "fer2013.npz", label=False, progress=False)
    basis = "mp478-blendshape-pca29-v1"
    emo = load_emotion_data(tmp_path / "cache", "fer2013", basis, 138, data_dir=tmp_path / "data")
    assert emo.classes == EMOTIONS and emo.dist.shape == (16, 8)
    assert emo.weight[5] == 0 and emo.labels[5] == -1  # unmatched: left out by default
    assert emo.weight[6] == 0 and emo.labels[6] == -1  # mostly unknown / not a face: left out
    assert EMOTIONS[emo.labels[7]] == "contempt" and emo.dist[7, EMOTIONS.index("contempt")] == pytest.approx(0.7)
    kept = load_emotion_data(tmp_path / "cache", "fer2013", basis, 138, data_dir=tmp_path / "data", keep_unmatched=True)
    with np.load(fer) as d:
        fer_label = str(d["label"][5])
    assert kept.weight[5] == 1 and kept.dist[5, EMOTIONS.index(fer_label)] == 1.0  # its FER2013 label, one-hot
    old = load_emotion_data(tmp_path / "cache", "fer2013", basis, 138, targets="fer2013")
    assert old.classes == FER_CLASSES and old.dist.shape == (16, 7) and (old.weight == 1).all()


# -- framing ---------------------------------------------------------------------------------------------------------


def test_lower_face_mask_covers_mouth_and_chin_only() -> None:
    from expnet_stream.train.dataset import mask_lower_face

    crops = np.full((2, 114, 114, 3), 200, np.uint8)
    m = mask_lower_face(crops, (10, 20, 30))
    assert (crops == 200).all()  # a copy
    box = slice(19, 95)  # the face box is the central 1/1.5 of the crop
    assert (m[:, :69] == 200).all()  # eyes, brows and nose untouched
    np.testing.assert_array_equal(m[0, 70:, box][0, 0], [10, 20, 30])
    assert (m[:, 70:, :19] == 200).all() and (m[:, 70:, 95:] == 200).all()


def test_eye_levelling_levels_the_eyes_of_a_real_rolled_face() -> None:
    """The framing choice on a real face: YuNet's landmarks read the roll of a face rotated by 20 degrees (they read
    about half of it: YuNet's five points lean towards an upright face, the model card says so), and the levelled
    crop of it has the eyes nearer level than the upright crop (measured by YuNet on the crops)."""
    from expnet_stream.faces.crop import crop_faces
    from expnet_stream.plugin_registry import create
    from expnet_stream.train.dataset import level_crops
    from expnet_stream.train.fer import eye_roll_deg
    from expnet_stream.train.sources import WIDE_CROP, WIDE_EXPAND, label_contract

    img = astronaut_bgr()
    x1, y1, x2, y2 = ASTRONAUT_FACE
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    detector = create("face_detector", "yunet")

    def roll_of(image: np.ndarray) -> float:
        _, _, kps = detector.detect_landmarks(image)
        return float(eye_roll_deg(kps[:1])[0])

    try:
        roll0 = roll_of(img)
        rolled = cv2.warpAffine(img, cv2.getRotationMatrix2D(centre, -20.0, 1.0), img.shape[1::-1])
        roll = roll_of(rolled)
        assert 6.0 < roll - roll0 < 24.0  # the image-right eye went down: positive roll
        det = detector.detect(rolled)  # the worker's path carries the same roll on its Detections
        assert det.roll_deg[0] == pytest.approx(roll, abs=0.5)
        wide = crop_faces(rolled, det.xyxy[:1], label_contract(WIDE_CROP, WIDE_EXPAND))
        upright, level = level_crops(wide, [0.0], 114), level_crops(wide, [roll], 114)
        np.testing.assert_array_equal(upright[0], wide[0, 12:126, 12:126])  # roll 0: the plain centre crop

        def crop_roll(c: np.ndarray) -> float:
            return roll_of(np.ascontiguousarray(cv2.resize(c, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)))

        assert abs(crop_roll(level[0])) < 0.7 * abs(crop_roll(upright[0]))
    finally:
        detector.close()


def test_recipe_choices_are_made_on_val_with_linear_probes(tmp_path: Path) -> None:
    """`choose-recipe` on FER-shaped data: both choices are scored on val (never test), and a variant is kept only
    when it beats the simpler recipe by the minimum gain."""
    pytest.importorskip("torch", reason="the probes run the trunk")
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import create_model, save_checkpoint
    from expnet_stream.train.choices import probe_choices
    from expnet_stream.train.fer import build_fer_cache
    from tests.unit.test_emotions import _fer_npz

    (tmp_path / "data" / "train" / "fer2013").mkdir(parents=True)
    fer = _fer_npz(tmp_path / "data" / "train" / "fer2013" / "fer2013.npz", n=56)
    ferplus_npz(fer, tmp_path / "data" / "train" / "fer2013" / "ferplus.npz")
    build_fer_cache(fer, tmp_path / "cache" / "faces" / "fer2013.npz", label=False, progress=False)
    model, contract = create_model("expnet_lite18.s112", seed=0)
    save_checkpoint(tmp_path / "m.pt", model, contract)
    table = probe_choices(tmp_path / "m.pt", tmp_path / "cache", tmp_path / "data")
    acc = table["val_accuracy"]
    assert set(acc) == {"plain/drop_unmatched", "plain/keep_unmatched", "levelled/drop_unmatched"}
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert table["keep_unmatched"] == (acc["plain/keep_unmatched"] > acc["plain/drop_unmatched"] + 0.005)
    assert table["level_eyes"] == (acc["levelled/drop_unmatched"] > acc["plain/drop_unmatched"] + 0.005)
    assert "ferplus/test" in table["test_sets_not_used"]


# -- training: the vote loss with contempt, warm start from a seven-class model, resume ----------------------------


def _vote_config(tmp_path: Path, **overrides: Any) -> Any:
    from tests.unit.test_emotions import multitask_config

    cfg = multitask_config(tmp_path, **overrides)
    data = tmp_path / "data"
    ferplus_npz(tmp_path / "fer.npz", data / "train" / "fer2013" / "ferplus.npz")
    cfg.data_dir = str(data)
    return cfg


def test_vote_training_learns_eight_classes_and_warm_starts_from_a_seven_class_model(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="training needs torch (train extra)")
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import create_model, load_checkpoint, save_checkpoint
    from expnet_stream.train.trainer import train

    old, old_contract = create_model("expnet_lite18.s112", seed=1)
    old.add_emotion_head(len(FER_CLASSES), seed=1)
    old_contract = old_contract.model_copy(
        update={"emotion_output_name": "emotion", "emotion_classes": FER_CLASSES, "basis_id": "other-basis-v0"}
    )
    save_checkpoint(tmp_path / "old.pt", old, old_contract)
    cfg = _vote_config(
        tmp_path, init_from=str(tmp_path / "old.pt"), lr=0.0, basis_id="mp478-blendshape-pca29-v1", p_mask_lower=0.5
    )
    summary = train(cfg, progress=False)
    assert summary["emotion_classes"] == list(EMOTIONS)
    rec = summary["history"][0]
    assert {"val_emotion_accuracy", "val_emotion_accuracy_lower_masked", "val_emotion_min_recall"} <= set(rec)
    model, _ = load_checkpoint(tmp_path / "run" / "final.pt")
    assert model.num_emotions == 8
    w_old, w_new = old.emotion_fc.weight.detach(), model.emotion_fc.weight.detach().float()
    for i, k in enumerate(FER_CLASSES):  # lr 0: the warm rows are where the class names say
        assert torch.allclose(w_new[EMOTIONS.index(k)], w_old[i].float(), atol=1e-3)
    assert not torch.allclose(w_new[EMOTIONS.index("contempt")], w_old[0].float(), atol=1e-3)
    # another basis: the coefficient head starts afresh, the trunk is the warm one
    assert not torch.allclose(model.fc.weight.float(), old.fc.weight.float(), atol=1e-3)
    assert torch.allclose(model.trunk.conv1.weight.float(), old.trunk.conv1.weight.float(), atol=1e-3)


def test_a_training_run_resumes_from_its_last_epoch(tmp_path: Path) -> None:
    """A run stopped after epoch 1 of 2 (a session ending) continues at epoch 2 from last.pt and ends where an
    uninterrupted run ends; another configuration refuses the state."""
    torch = pytest.importorskip("torch", reason="training needs torch (train extra)")
    from expnet_stream.errors import ModelError
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import load_checkpoint
    from expnet_stream.train.trainer import train

    straight = _vote_config(tmp_path / "a", epochs=2)
    train(straight, progress=False)
    cut = _vote_config(tmp_path / "b", epochs=2)
    first = train(cut, progress=False, until_epoch=1)  # the session ends after epoch 1
    assert not first["complete"] and torch.load(Path(cut.out) / "last.pt", weights_only=True)["epoch"] == 1
    summary = train(cut, resume=True, progress=False)
    assert summary["complete"] and [h["epoch"] for h in summary["history"]] == [1, 2]
    a, _ = load_checkpoint(Path(straight.out) / "final.pt")
    b, _ = load_checkpoint(Path(cut.out) / "final.pt")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    other = _vote_config(tmp_path / "b", epochs=2, p_mask_lower=0.1)
    with pytest.raises(ModelError, match="another training configuration"):
        train(other, resume=True, progress=False)


# -- contempt end to end, and models from before the change ---------------------------------------------------------


def test_contempt_is_published_in_events_aggregates_and_tables(face_video: tuple[Path, list[bool]]) -> None:
    """The shipped model on a real H.264 clip through the real pipeline: every face carries all eight emotions,
    contempt included; the window aggregates use the same eight labels; the table has a filled contempt column.
    A window whose faces lean to contempt names it dominant."""
    pytest.importorskip("pyarrow", reason="tables need the table extra")
    from expnet_stream.aggregate.settings import TemporalSettings
    from expnet_stream.aggregate.temporal import StreamTemporal
    from expnet_stream.config.settings import load_settings
    from expnet_stream.events.aggregate_schema import EmotionAggregate
    from expnet_stream.events.schema import FrameEvent
    from expnet_stream.faces.detections import Detections
    from expnet_stream.models.emotion import ModelEmotions
    from expnet_stream.table import events_to_arrow
    from expnet_stream.worker.local import run_local
    from expnet_stream.worker.runtime import build_detector, build_emotion_head, build_engine

    path, has_face = face_video
    settings = load_settings(None, {"model": {"threads": 1}, "temporal": {"enabled": True}})
    engine = build_engine(settings)
    head = build_emotion_head(settings, engine)
    assert isinstance(head, ModelEmotions) and head.classes == EMOTIONS and head.unsupported == ()
    assert engine.contract.crop_level_eyes  # the shipped model levels the eyes (chosen on FER+ val)
    events: list[object] = []
    run_local([(str(path), "cam")], settings, build_detector(settings), engine, events.append, emotion_head=head)
    faces = [f for e in events if isinstance(e, FrameEvent) for f in e.faces]
    assert len(faces) >= sum(has_face) - 2
    for f in faces:
        assert f.emotions is not None and tuple(f.emotions) == EMOTIONS
        assert abs(sum(f.emotions.values()) - 1.0) < 1e-3
        # tracked faces also carry their track's smoothed probabilities, over the same classes
        assert f.track_id >= 0 and f.emotions_smoothed is not None and tuple(f.emotions_smoothed) == EMOTIONS
        assert abs(sum(f.emotions_smoothed.values()) - 1.0) < 1e-3
    aggs = [e for e in events if isinstance(e, EmotionAggregate) and e.emotions]
    assert all(a.dominant_emotion in EMOTIONS for a in aggs)
    assert aggs and all(set(a.emotions or {}) == set(EMOTIONS) for a in aggs)
    table = events_to_arrow(events)
    contempt = table.column("emotion_contempt").to_pylist()
    assert sum(v is not None for v in contempt) == len(faces)
    assert all(0.0 <= v <= 1.0 for v in contempt if v is not None)
    # a window of faces whose top emotion is contempt: the aggregate names it
    st = StreamTemporal(TemporalSettings(), model_id="m", emotion_labels=EMOTIONS)
    probs = np.full((1, 8), 0.05, np.float32)
    probs[0, EMOTIONS.index("contempt")] = 0.65
    box = Detections(np.array([[0, 0, 60, 60]], np.float32), np.array([0.9], np.float32))
    out = []
    for i in range(40):
        out += st.on_frame("s", i * 0.1, box, np.zeros((1, 29), np.float32), probs).aggregates
    out += st.on_end("s")
    assert out and all(a.dominant_emotion == "contempt" for a in out if a.emotions)


def test_a_seven_class_model_from_before_still_runs(tmp_path: Path, emotion_onnx: Path) -> None:
    """A model from before this change (FER2013's seven classes, contract version 2 without crop_level_eyes) loads
    and publishes its seven classes: contempt stays absent from events (unsupported) and its table column is null."""
    import json

    pytest.importorskip("pyarrow", reason="tables need the table extra")
    from expnet_stream.config.settings import load_settings
    from expnet_stream.events.schema import FrameEvent
    from expnet_stream.models.contract import PreprocessContract, contract_path_for
    from expnet_stream.models.emotion import ModelEmotions
    from expnet_stream.table import events_to_arrow
    from expnet_stream.worker.local import run_local
    from expnet_stream.worker.runtime import build_detector, build_emotion_head, build_engine
    from tests.conftest import make_face_video

    old = tmp_path / "old.onnx"
    old.write_bytes(emotion_onnx.read_bytes())
    data = json.loads(contract_path_for(emotion_onnx).read_text())
    data.pop("crop_level_eyes")
    data["schema_version"] = 2
    contract_path_for(old).write_text(json.dumps(data))
    assert PreprocessContract.from_json(contract_path_for(old)).crop_level_eyes is False
    settings = load_settings(None, {"model": {"onnx": str(old), "threads": 1}, "temporal": {"enabled": True}})
    engine = build_engine(settings)
    head = build_emotion_head(settings, engine)
    assert isinstance(head, ModelEmotions) and head.classes == FER_CLASSES and head.unsupported == ("contempt",)
    video = tmp_path / "clip.mp4"
    make_face_video(video, n_frames=12)
    events: list[object] = []
    run_local([(str(video), "cam")], settings, build_detector(settings), engine, events.append, emotion_head=head)
    faces = [f for e in events if isinstance(e, FrameEvent) for f in e.faces]
    assert faces and all(f.emotions is not None and "contempt" not in f.emotions for f in faces)
    table = events_to_arrow(events)
    assert set(table.column("emotion_contempt").to_pylist()) == {None}
    face_rows = [i is not None for i in table.column("face_index").to_pylist()]
    anger = table.column("emotion_anger").to_pylist()
    assert sum(face_rows) == len(faces) and all(a is not None for a, f in zip(anger, face_rows, strict=True) if f)


# -- robustness to speech: per-track smoothing of the published probabilities ----------------------------------------


def test_track_smoothed_emotions_flip_less_and_frame_v1_still_reads() -> None:
    """A face whose top emotion flips with every syllable (anger/happiness alternating around 50%) keeps one top
    emotion in its smoothed probabilities; the raw ones stay as they were. A frame event of version 1 (no
    emotions_smoothed) still decodes."""
    from expnet_stream.aggregate.settings import TemporalSettings
    from expnet_stream.aggregate.temporal import StreamTemporal
    from expnet_stream.events.codec import decode, encode
    from expnet_stream.events.schema import FrameEvent
    from expnet_stream.faces.detections import Detections
    from expnet_stream.train.evaluate_emotions import flip_rate

    st = StreamTemporal(TemporalSettings(), model_id="m", emotion_labels=EMOTIONS)
    box = Detections(np.array([[0, 0, 60, 60]], np.float32), np.array([0.9], np.float32))
    a, h = EMOTIONS.index("anger"), EMOTIONS.index("happiness")
    raw_track, smooth_track = [], []
    for i in range(30):
        p = np.full((1, 8), 0.02, np.float32)
        p[0, a], p[0, h] = (0.6, 0.28) if i % 3 != 2 else (0.28, 0.6)  # anger; every 3rd syllable looks happy
        res = st.on_frame("s", i * 0.1, box, np.zeros((1, 29), np.float32), p)
        assert res.emotions_smoothed is not None
        assert abs(float(res.emotions_smoothed.sum()) - 1.0) < 1e-5
        raw_track.append((i * 0.1, p[0].astype(np.float64)))
        smooth_track.append((i * 0.1, res.emotions_smoothed[0].astype(np.float64)))
    raw_flips, seconds = flip_rate({0: raw_track})
    smooth_flips, _ = flip_rate({0: smooth_track})
    assert raw_flips >= 18 and smooth_flips == 0 and seconds == pytest.approx(2.9)
    assert int(smooth_track[-1][1].argmax()) == a
    off = StreamTemporal(
        TemporalSettings.model_validate({"smoothing": {"emotion_half_life_s": 0}}),
        model_id="m",
        emotion_labels=EMOTIONS,
    )
    assert off.on_frame("s", 0.0, box, np.zeros((1, 29), np.float32), p).emotions_smoothed is None

    v2 = FrameEvent.model_validate(
        {
            "event_id": "e",
            "stream_id": "s",
            "frame_seq": 0,
            "pts": 0,
            "time_base": (1, 25),
            "pts_time": 0.0,
            "capture_time": 0.0,
            "publish_time": 0.0,
            "width": 64,
            "height": 64,
            "model_id": "m",
            "model_trained": True,
            "basis_id": "b",
            "faces": [],
        }
    )
    assert v2.v == 2
    import msgpack

    old = msgpack.unpackb(encode(v2), raw=False)
    old["v"] = 1
    ev = decode(msgpack.packb(old, use_bin_type=True))
    assert isinstance(ev, FrameEvent) and ev.v == 1
