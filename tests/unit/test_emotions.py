"""Emotion outputs: calibration, the trunk head through export/ONNX Runtime/fake TensorRT, older models without it,
the runtime's choice, FER2013 framing, multi-task training and the ship-time choice on val."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from expnet_stream.errors import ModelError
from expnet_stream.models.emotion import (
    EMOTIONS,
    FER_CLASSES,
    EmotionHead,
    ModelEmotions,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from tests.conftest import ASTRONAUT_FACE, astronaut_bgr

pytestmark = pytest.mark.unit


def _calibrated_sample(t_true: float, n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / t_true): t_true is the calibrating temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 7)) * 3.0
    p = softmax(logits, t_true)
    labels = np.array([rng.choice(7, p=row) for row in p])
    return logits, labels


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fit_temperature_recovers_the_calibrating_temperature_and_lowers_ece(t_true: float) -> None:
    logits, labels = _calibrated_sample(t_true)
    t = fit_temperature(logits, labels)
    assert abs(np.log(t / t_true)) < 0.1
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert after < 0.03 < before
    # temperature never changes the prediction
    np.testing.assert_array_equal(softmax(logits, t).argmax(1), logits.argmax(1))


def test_ece_of_perfect_and_overconfident_predictions() -> None:
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(np.eye(2)[y], y) == 0.0
    # always 100% sure, right half the time: ECE 0.5
    assert expected_calibration_error(np.eye(2)[[0, 0, 0, 0]], y) == pytest.approx(0.5)
    with pytest.raises(ModelError):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, np.int64))


def test_head_temperature_roundtrip_and_older_head_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    head = EmotionHead(rng.normal(size=(7, 29)).astype(np.float32), np.zeros(7, np.float32), FER_CLASSES)
    assert head.unsupported == ("contempt",)
    hot = head.with_temperature(3.0)
    x = rng.normal(size=(4, 29)).astype(np.float32)
    assert hot.predict_proba(x).max() < head.predict_proba(x).max()
    again = EmotionHead.load(hot.save(tmp_path / "h.npz"))
    assert again.temperature == 3.0 and again.classes == FER_CLASSES
    # a head written before temperatures existed (v1 meta without the key) reads as uncalibrated
    meta = {"format": "expnet-stream/emotion-head-v1", "classes": list(EMOTIONS), "basis_id": "b", "info": {}}
    np.savez(
        tmp_path / "old.npz", weight=np.zeros((8, 29), np.float32), bias=np.zeros(8, np.float32), meta=json.dumps(meta)
    )
    old = EmotionHead.load(tmp_path / "old.npz")
    assert old.temperature == 1.0 and old.unsupported == ()


def test_model_emotions_checks_the_engine_output() -> None:
    out = ModelEmotions(FER_CLASSES)
    p = np.full((2, 7), 1 / 7, np.float32)
    np.testing.assert_array_equal(out.predict_proba(np.zeros((2, 29)), p), p)
    with pytest.raises(ModelError, match="no emotion output"):
        out.predict_proba(np.zeros((2, 29)), None)
    with pytest.raises(ModelError, match="shape"):
        out.predict_proba(np.zeros((3, 29)), p)


# -- the trunk head through export and the engines ---------------------------------------------------------------


def _crops(contract: object, n: int = 3) -> np.ndarray:
    from expnet_stream.faces.crop import crop_faces

    boxes = np.tile(np.array([ASTRONAUT_FACE], np.float32), (n, 1)) + np.arange(n, dtype=np.float32)[:, None] * 4
    return crop_faces(astronaut_bgr(), boxes, contract)  # type: ignore[arg-type]


def test_exported_trunk_head_matches_torch_with_temperature(emotion_onnx: Path) -> None:
    import torch

    from expnet_stream.engines.onnxruntime_engine import OrtEngine
    from expnet_stream.models.contract import PreprocessContract, contract_path_for

    contract = PreprocessContract.from_json(contract_path_for(emotion_onnx))
    assert contract.schema_version == 3 and contract.emotion_classes == FER_CLASSES
    x = contract.normalize(_crops(contract))
    with OrtEngine(emotion_onnx, max_batch=2, intra_op_threads=1) as engine:
        assert engine.has_emotion_output
        coeffs, probs = engine.infer_all(x)
        np.testing.assert_array_equal(engine.infer(x), coeffs)
    assert probs is not None and probs.shape == (3, 7)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # the same weights in torch: softmax(logits / 1.7) is what the file publishes
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import create_model

    model, _ = create_model("expnet_lite18.s112", seed=3)
    model.add_emotion_head(7, seed=3)
    with torch.no_grad():
        model.emotion_fc.weight.mul_(300.0)
        c_ref, logits = model.forward_all(torch.from_numpy(x))
    np.testing.assert_allclose(coeffs, c_ref.numpy(), atol=1e-3)
    np.testing.assert_allclose(probs, softmax(logits.numpy(), 1.7), atol=1e-4)
    assert probs.max() > 0.3  # not the uniform 1/7: the check above compares real distributions


def test_checkpoint_with_emotion_head_roundtrips(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import create_model, load_checkpoint, save_checkpoint

    model, contract = create_model("expnet_lite18.s112", seed=1)
    model.add_emotion_head(7, seed=1)
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, contract))
    assert loaded.num_emotions == 7
    x = torch.zeros(1, 3, 112, 112)
    with torch.no_grad():
        for a, b in zip(model.forward_all(x), loaded.forward_all(x), strict=True):
            assert a is not None and b is not None and torch.equal(a, b)


def test_older_model_without_second_head_uses_the_coefficient_head(tmp_path: Path, small_onnx: Path) -> None:
    """A version-1 contract (written before emotion outputs existed) and a single-output ONNX file still run; the
    runtime's 'default' then publishes the coefficient head, 'coefficients' always does."""
    import shutil

    from expnet_stream.config.settings import load_settings
    from expnet_stream.engines.onnxruntime_engine import OrtEngine
    from expnet_stream.models.contract import contract_path_for
    from expnet_stream.worker.runtime import build_emotion_head, build_engine

    old = tmp_path / "old.onnx"
    shutil.copy(small_onnx, old)
    data = json.loads(contract_path_for(small_onnx).read_text())
    for key in ("emotion_output_name", "emotion_classes", "emotion_temperature"):
        data.pop(key, None)
    from expnet_stream.models.weights import default_emotion_head_path

    shipped_basis = EmotionHead.load(default_emotion_head_path()).basis_id  # the fallback head needs its basis
    data.update(schema_version=1, basis_id=shipped_basis, weights="old-v1")
    contract_path_for(old).write_text(json.dumps(data))
    with OrtEngine(old, intra_op_threads=1) as engine:
        assert not engine.has_emotion_output
        coeffs, probs = engine.infer_all(np.zeros((2, 3, 112, 112), np.float32))
        assert coeffs.shape == (2, 29) and probs is None
    settings = load_settings(None, {"model": {"onnx": str(old), "threads": 1}})
    engine = build_engine(settings)
    head = build_emotion_head(settings, engine)
    assert isinstance(head, EmotionHead) and head.source == "coefficients"


def test_runtime_prefers_the_model_output(emotion_onnx: Path) -> None:
    from expnet_stream.config.settings import load_settings
    from expnet_stream.worker.runtime import build_emotion_head, build_engine

    settings = load_settings(None, {"model": {"onnx": str(emotion_onnx), "threads": 1}})
    engine = build_engine(settings)
    out = build_emotion_head(settings, engine)
    assert isinstance(out, ModelEmotions) and out.classes == FER_CLASSES and out.unsupported == ("contempt",)
    forced = build_emotion_head(
        load_settings(None, {"model": {"onnx": str(emotion_onnx), "emotion_head": "coefficients"}}), engine
    )
    # the shipped coefficient head reads coefficients of its own basis only; this model outputs another: no emotions
    assert engine.contract.basis_id != "mp478-procrustes-pca29-v1" and forced is None


def test_fake_trt_engine_returns_the_emotion_output(
    emotion_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a FAKE tensorrt module (TensorRT cannot run here): the plan's second output comes back from
    ``infer_all`` and matches ONNX Runtime."""
    from expnet_stream.engines import tensorrt_runtime
    from expnet_stream.engines.onnxruntime_engine import OrtEngine
    from expnet_stream.engines.tensorrt_build import build_engine
    from expnet_stream.engines.tensorrt_engine import GpuTarget, TrtEngine
    from tests.unit.fake_tensorrt import make_fake_tensorrt

    gpu = GpuTarget("Fake GPU 9000", "8.9", 0, "cpu")
    monkeypatch.setattr(tensorrt_runtime, "cuda_gpu", lambda index=0: gpu)
    build_engine(emotion_onnx, tmp_path, min_batch=1, opt_batch=2, max_batch=4, trt_module=make_fake_tensorrt())
    x = np.random.default_rng(0).uniform(-100, 100, (5, 3, 112, 112)).astype(np.float32)
    with OrtEngine(emotion_onnx, intra_op_threads=1) as ref_engine:
        ref_c, ref_p = ref_engine.infer_all(x)
    with TrtEngine(tmp_path, trt_module=make_fake_tensorrt()) as engine:
        assert engine.has_emotion_output
        c, p = engine.infer_all(x)
    assert p is not None and ref_p is not None
    np.testing.assert_allclose(c, ref_c, atol=1e-4)
    np.testing.assert_allclose(p, ref_p, atol=1e-5)


# -- FER2013 framing, multi-task training, the choice at ship time ------------------------------------------------


def _fer_npz(path: Path, n: int = 56) -> Path:
    """A FER2013-shaped file from a real face (the astronaut, grey, 48 px, tight like FER2013), jittered per row."""
    x1, y1, x2, y2 = ASTRONAUT_FACE
    face = cv2.cvtColor(astronaut_bgr()[y1 - 5 : y2 + 5, x1:x2], cv2.COLOR_BGR2GRAY)
    rng = np.random.default_rng(0)
    images = np.stack(
        [
            np.clip(cv2.resize(face, (48, 48)).astype(np.int16) + rng.integers(-20, 20), 0, 255).astype(np.uint8)
            for _ in range(n)
        ]
    )
    labels = np.array(FER_CLASSES * (n // 7 + 1))[:n]  # every block of 7 rows holds every class
    blocks = ["train"] * 4 + ["val"] * 2 + ["test"]
    split = np.array([blocks[(i // 7) % 7] for i in range(n)])
    np.savez(path, images=images, label=labels, split=split, id=np.array([f"img{i}" for i in range(n)]))
    return path


def test_fer_cache_frames_faces_through_the_detector(tmp_path: Path) -> None:
    from expnet_stream.train.fer import build_fer_cache, load_fer_cache

    out = build_fer_cache(
        _fer_npz(tmp_path / "fer.npz"), tmp_path / "faces" / "fer2013.npz", label=False, progress=False
    )
    cache = load_fer_cache(out)
    assert len(cache) == 56 and cache.crops.shape == (56, 138, 138, 3)
    assert cache.detected.mean() > 0.8  # yunet finds the real face in the padded, upscaled 48 px image
    assert np.all(np.abs(cache.roll[cache.detected]) < 10)  # an upright face: its eyes are about level
    # the box is the face, not the whole padded frame: about the 48 px image, centred in it
    side = (cache.boxes[:, 2:] - cache.boxes[:, :2]).max(1)
    assert np.all((side > 25) & (side < 70))
    assert set(cache.split) == {"train", "val", "test"} and cache.label_index().max() == 6
    with pytest.raises(Exception, match="FER2013"):
        np.savez(
            tmp_path / "bad.npz",
            images=np.zeros((2, 48, 48), np.uint8),
            label=np.array(["x", "y"]),
            split=np.array(["train"] * 2),
            id=np.array(["a", "b"]),
        )
        build_fer_cache(tmp_path / "bad.npz", tmp_path / "faces" / "bad.npz", label=False, progress=False)


def multitask_config(tmp_path: Path, **overrides: Any) -> Any:
    """A tiny multi-task run: a synthetic coefficient cache and a FER2013-shaped cache of a real face (the GPU test
    uses it too)."""
    from expnet_stream.train.fer import build_fer_cache
    from expnet_stream.train.trainer import TrainConfig
    from tests.unit.test_ferplus import ferplus_npz
    from tests.unit.test_train_small import _fake_cache

    cache = tmp_path / "cache"
    _fake_cache(cache / "faces" / "synthetic.npz")
    build_fer_cache(_fer_npz(tmp_path / "fer.npz"), cache / "faces" / "fer2013.npz", label=False, progress=False)
    ferplus_npz(tmp_path / "fer.npz", tmp_path / "data" / "train" / "fer2013" / "ferplus.npz")
    options: dict[str, Any] = {
        "model": "expnet_lite18.s112",
        "epochs": 1,
        "batch_size": 8,
        "seed": 2,
        "out": str(tmp_path / "run"),
        "cache_dir": str(cache),
        "caches": ("synthetic",),
        "val_fraction": 0.3,
        "max_batches_per_epoch": 2,
        "threads": 1,
        "data_dir": str(tmp_path / "data"),
        **overrides,
    }
    return TrainConfig(**options)


def test_multitask_training_and_ship_choice(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="training needs torch (train extra)")
    pytest.importorskip("sklearn", reason="the coefficient head needs scikit-learn (train extra)")
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import load_checkpoint
    from expnet_stream.train.emotion_fit import fit_emotion_outputs
    from expnet_stream.train.trainer import train

    cfg = multitask_config(tmp_path)
    cache = tmp_path / "cache"
    summary = train(cfg, progress=False)
    rec = summary["history"][0]
    assert {"val_emotion_accuracy", "val_emotion_min_recall", "val_r2_mean"} <= set(rec)
    model, contract = load_checkpoint(tmp_path / "run" / "final.pt")
    assert model.num_emotions == 8  # FER+ votes: contempt is a class
    new_contract, head, info = fit_emotion_outputs(model, contract, cache, data_dir=tmp_path / "data")
    assert info["published"] in ("trunk_head", "coefficient_head") and info["labels"] == "FER+ majority (val)"
    assert head.classes == EMOTIONS and head.temperature > 0
    assert 0.0 <= info["trunk_head"]["val_accuracy_flip_averaged"] <= 1.0
    from expnet_stream.train.emotion_fit import TAU_GRID

    adj = info["prior_adjustment"]  # the logit adjustment for rare classes, chosen on val
    assert adj["tau"] in TAU_GRID and len(adj["val_table"]) == len(TAU_GRID) and adj["chosen_on"] == "val"
    for key in ("coefficient_head", "trunk_head"):
        assert {"val_accuracy", "val_ece_before", "val_ece_after", "temperature", "val_confusion"} <= set(info[key])
    if info["published"] == "trunk_head":
        assert new_contract.emotion_output_name == "emotion" and new_contract.emotion_classes == EMOTIONS
        assert info["trunk_head"]["val_accuracy"] >= info["coefficient_head"]["val_accuracy"]
    else:
        assert new_contract.emotion_output_name is None


def test_evaluate_emotions_report_on_fer_shaped_data_and_a_real_clip(
    tmp_path: Path, face_video: tuple[Path, list[bool]]
) -> None:
    """The emotion part of `evaluate` end to end on the shipped model: FER2013-shaped cache (a real face), no JAFFE
    folder (skipped with a reason), and a real H.264 clip through the pipeline; the PNGs are written."""
    pytest.importorskip("matplotlib", reason="the report plots need matplotlib")
    from expnet_stream.models.weights import default_emotion_head_path, default_model_path
    from expnet_stream.train.evaluate_emotions import evaluate_emotions
    from expnet_stream.train.fer import build_fer_cache

    build_fer_cache(
        _fer_npz(tmp_path / "fer.npz"), tmp_path / "cache" / "faces" / "fer2013.npz", label=False, progress=False
    )
    path, _ = face_video
    rep = evaluate_emotions(
        str(default_model_path()),
        str(default_emotion_head_path()),
        tmp_path / "no-data",
        tmp_path / "cache",
        tmp_path / "out",
        threads=1,
        timeline_plots=1,
        extra_videos=(str(path),),
    )
    assert rep["published_source"] == "model" and rep["unsupported"] == []
    test = rep["fer2013"]["test"]
    assert test["published"]["faces"] == 7 and np.asarray(test["published"]["confusion"]).sum() == 7
    assert test["published"]["scored_over"] == list(FER_CLASSES)  # FER2013 has no contempt label
    assert set(test["coefficient_head"]["recall"]) <= set(FER_CLASSES)
    assert "skipped" in rep["jaffe"] and "skipped" in rep["ferplus"]  # no votes in this data folder
    clip = rep["videos"]["clips"][path.name]
    assert clip["faces"] > 0 and abs(sum(clip["top_emotion_share"].values()) - 1.0) < 1e-3
    assert clip["track_seconds"] > 0 and clip["top_flips_per_track_second"] >= 0
    assert set(rep["plots"]) == {"emotion_confusion.png", "emotion_videos.png"}
    assert (tmp_path / "out" / f"timeline_{path.stem}.png").is_file()


def test_torch_engine_returns_the_shipped_emotion_output_on_cpu() -> None:
    """The torch engine (CPU here; CUDA buckets and graphs use the same joined output) publishes the same calibrated
    emotions as ONNX Runtime for the shipped checkpoint."""
    pytest.importorskip("torch", reason="the torch engine needs torch")
    from expnet_stream.engines.onnxruntime_engine import OrtEngine
    from expnet_stream.engines.torch_engine import TorchEngine
    from expnet_stream.models.weights import default_checkpoint_path, default_model_path

    x = np.random.default_rng(1).uniform(-100, 100, (5, 3, 112, 112)).astype(np.float32)
    with OrtEngine(default_model_path(), intra_op_threads=1) as ref_engine:
        ref_c, ref_p = ref_engine.infer_all(x)
    with TorchEngine(
        default_model_path(), checkpoint=default_checkpoint_path(), device="cpu", max_batch=4, intra_op_threads=1
    ) as engine:
        assert engine.has_emotion_output
        c, p = engine.infer_all(x)
        np.testing.assert_array_equal(engine.infer(x), c)
    assert p is not None and ref_p is not None and p.shape == (5, 8)
    np.testing.assert_allclose(c, ref_c, atol=2e-2)  # ONNX stores fp16 weights; the checkpoint's are cast from fp16
    np.testing.assert_allclose(p, ref_p, atol=5e-3)
