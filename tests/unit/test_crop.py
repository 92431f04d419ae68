"""Face crop geometry (hand-computed boxes), zero padding and the 227 -> 224 step of the contract."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from expnet_stream.errors import ModelError
from expnet_stream.faces.crop import crop_boxes, crop_faces, square_boxes
from expnet_stream.models.contract import PreprocessContract

pytestmark = pytest.mark.unit

H, W = 100, 120


@pytest.fixture
def frame() -> np.ndarray:
    """B = x + 1, G = y + 1, R = 200: every pixel is non-zero and tells where it came from."""
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = (np.arange(W) + 1)[None, :]
    img[..., 1] = (np.arange(H) + 1)[:, None]
    img[..., 2] = 200
    return img


def contract(size: int, **kw: object) -> PreprocessContract:
    return PreprocessContract(model_name="test", input_size=size, crop_size=size, **kw)  # type: ignore[arg-type]


def test_square_boxes_hand_computed() -> None:
    boxes = np.array(
        [
            [10, 20, 50, 40],  # w=40, h=20, centre (30, 30), side 40, expanded 60 -> (0, 0, 60, 60)
            [0, 0, 10, 20],  # w=10, h=20, centre (5, 10), side 20, expanded 30 -> (-10, -5, 20, 25)
            [100, 50, 104, 54],  # 4x4 at centre (102, 52) -> 6x6
        ],
        np.float32,
    )
    out = square_boxes(boxes)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, [[0, 0, 60, 60], [-10, -5, 20, 25], [99, 49, 105, 55]])
    np.testing.assert_array_equal(square_boxes(boxes[:1], expand=0.0), [[10, 10, 50, 50]])


def test_square_boxes_empty_and_invalid() -> None:
    assert square_boxes(np.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        square_boxes(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        square_boxes(np.array([[0, 0, np.nan, 1]]))


def test_crop_boxes_snap_like_official() -> None:
    # centre (30.5, 30.5), side 40, expanded half-side 30 -> (0.5, 0.5, 60.5, 60.5) -> ceil -> (1, 1, 61, 61)
    np.testing.assert_array_equal(crop_boxes(np.array([[10.5, 20.5, 50.5, 40.5]])), [[1, 1, 61, 61]])
    np.testing.assert_allclose(
        crop_boxes(np.array([[10.5, 20.5, 50.5, 40.5]]), snap_to_pixels=False), [[0.5, 0.5, 60.5, 60.5]]
    )


def test_crop_inside_is_exact_copy(frame: np.ndarray) -> None:
    crops = crop_faces(frame, np.array([[10, 20, 50, 40]], np.float32), contract(60))
    assert crops.shape == (1, 60, 60, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[0], frame[0:60, 0:60])


def test_crop_top_left_edge_zero_padded(frame: np.ndarray) -> None:
    # (0, 0, 20, 20): centre (10, 10), side 20 -> expanded (-5, -5, 25, 25)
    crop = crop_faces(frame, np.array([[0, 0, 20, 20]]), contract(30))[0]
    assert (crop[:5] == 0).all() and (crop[:, :5] == 0).all()
    np.testing.assert_array_equal(crop[5:, 5:], frame[0:25, 0:25])
    assert crop[5, 5].tolist() == [1, 1, 200]  # frame pixel (0, 0)


def test_crop_bottom_right_edge_zero_padded(frame: np.ndarray) -> None:
    # (110, 90, 130, 110): centre (120, 100), side 20 -> (105, 85, 135, 115); the frame ends at x=120, y=100
    crop = crop_faces(frame, np.array([[110, 90, 130, 110]]), contract(30))[0]
    np.testing.assert_array_equal(crop[:15, :15], frame[85:100, 105:120])
    assert (crop[15:] == 0).all() and (crop[:, 15:] == 0).all()
    assert crop[14, 14].tolist() == [120, 100, 200]  # frame pixel (x=119, y=99)


def test_crop_outside_frame_is_black(frame: np.ndarray) -> None:
    crop = crop_faces(frame, np.array([[500, 500, 520, 520]]), contract(30))[0]
    assert (crop == 0).all()


def test_crop_pad_value(frame: np.ndarray) -> None:
    crop = crop_faces(frame, np.array([[0, 0, 20, 20]]), contract(30, pad_value=7))[0]
    assert (crop[:5] == 7).all()


def test_crop_resamples_like_cv2_resize(frame: np.ndarray) -> None:
    # (20, 20, 80, 80) -> square (5, 5, 95, 95), 90 px -> 45 px: cv2.resize of the same region, up to the border
    # taps, which warpAffine takes from the real neighbouring pixels instead of replicating the region's edge, and up
    # to 1 grey level of fixed-point rounding (warpAffine quantises sub-pixel positions to 1/32).
    crop = crop_faces(frame, np.array([[20, 20, 80, 80]]), contract(45))[0].astype(int)
    ref = cv2.resize(frame[5:95, 5:95], (45, 45), interpolation=cv2.INTER_CUBIC).astype(int)
    assert np.abs(crop[1:-1, 1:-1] - ref[1:-1, 1:-1]).max() <= 1


def test_crop_batch_matches_single_and_empty(frame: np.ndarray) -> None:
    boxes = np.array([[10, 20, 50, 40], [0, 0, 20, 20], [60, 30, 100, 90]], np.float32)
    c = PreprocessContract(model_name="t")
    batch = crop_faces(frame, boxes, c)
    assert batch.shape == (3, 227, 227, 3)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], crop_faces(frame, boxes[i : i + 1], c)[0])
    assert crop_faces(frame, np.zeros((0, 4)), c).shape == (0, 227, 227, 3)


def test_crop_rejects_bad_frame() -> None:
    with pytest.raises(ValueError, match="uint8"):
        crop_faces(np.zeros((10, 10, 3), np.float32), np.array([[0, 0, 5, 5]]), contract(8))


def test_normalize_tf1_bilinear_ramp() -> None:
    # A horizontal ramp (value = column) resized 227 -> 224 the TF1 way: output column j samples j * 227 / 224.
    c = PreprocessContract(model_name="t", mean_bgr=(0.0, 0.0, 0.0))
    crops = np.broadcast_to(np.arange(227, dtype=np.uint8)[None, None, :, None], (2, 227, 227, 3)).copy()
    x = c.normalize(crops)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = np.arange(224, dtype=np.float32) * np.float32(227 / 224)
    np.testing.assert_allclose(x[1, 2, 100], expected, atol=1e-3)
    np.testing.assert_allclose(x[0, 0, :, 0], 0.0)  # rows: constant per column


def test_normalize_mean_std_and_layout() -> None:
    c = PreprocessContract(model_name="t", input_size=4, crop_size=4, mean_bgr=(10, 20, 30), std=(2, 2, 2))
    crops = np.zeros((1, 4, 4, 3), np.uint8)
    crops[..., 0], crops[..., 1], crops[..., 2] = 50, 60, 70
    x = c.normalize(crops)
    assert x.shape == (1, 3, 4, 4)
    assert x[0, :, 0, 0].tolist() == [20.0, 20.0, 20.0]
    with pytest.raises(ModelError, match="uint8"):
        c.normalize(np.zeros((1, 5, 5, 3), np.uint8))


def test_normalize_center_crop() -> None:
    c = PreprocessContract(model_name="t", input_size=2, crop_size=4, crop_to_input="center_crop", mean_bgr=(0, 0, 0))
    crops = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1).repeat(3, axis=3)
    assert c.normalize(crops)[0, 0].tolist() == [[5.0, 6.0], [9.0, 10.0]]


@pytest.mark.data
def test_matches_official_expnet_crops(shared_data: Path) -> None:
    """Our crop of the official sample frames reproduces the official repository's 227 px crops (JPEG noise aside)."""
    samples = shared_data / "eval" / "expnet_samples"
    labels = samples / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"ExpNet sample data not found at {samples}")
    c = PreprocessContract(model_name="t")
    with labels.open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        img = cv2.imread(str(samples / row["file"]))
        ref = cv2.imread(str(samples / row["crop_227"])).astype(np.float32)
        x, y, w, h = (float(row[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
        ours = crop_faces(img, np.array([[x, y, x + w, y + h]]), c)[0].astype(np.float32)
        assert np.abs(ours - ref).mean() < 2.0, row["file"]
