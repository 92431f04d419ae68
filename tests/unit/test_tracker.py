"""IoU tracker on synthetic boxes: identities through crossings and short occlusions, new ids for new faces."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from expnet_stream.errors import ConfigError
from expnet_stream.faces.detections import Detections
from expnet_stream.faces.tracker import FaceTracker, iou_matrix, linear_assignment

pytestmark = pytest.mark.unit

FPS = 25.0


def box(cx: float, cy: float, side: float = 60.0) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def dets(*boxes: list[float]) -> Detections:
    if not boxes:
        return Detections.empty()
    return Detections(np.array(boxes, np.float32), np.full(len(boxes), 0.9, np.float32))


def test_iou_matrix_hand_computed() -> None:
    iou = iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0, 0.0]])


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 2), (4, 4), (5, 3)])
def test_linear_assignment_matches_brute_force(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    n, m = shape
    for _ in range(20):
        cost = rng.random((n, m))
        rows, cols = linear_assignment(cost)
        assert len(rows) == min(n, m) and len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        if n <= m:
            best = min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
        else:
            best = min(sum(cost[p[j], j] for j in range(m)) for p in itertools.permutations(range(n), m))
        assert cost[rows, cols].sum() == pytest.approx(best)


def test_linear_assignment_empty() -> None:
    rows, cols = linear_assignment(np.zeros((0, 3)))
    assert rows.size == 0 and cols.size == 0


def test_stable_ids_and_order_independence() -> None:
    t = FaceTracker()
    first = t.update(dets(box(100, 100), box(300, 100)), 0.0)
    assert first.track_id.tolist() == [0, 1]
    # same faces, listed in the other order, slightly moved
    second = t.update(dets(box(303, 101), box(102, 99)), 1 / FPS)
    assert second.track_id.tolist() == [1, 0]
    np.testing.assert_array_equal(second.xyxy, dets(box(303, 101), box(102, 99)).xyxy)  # boxes unchanged


def test_identity_through_crossing() -> None:
    """Two faces cross (boxes overlap almost fully mid-way); constant-velocity prediction keeps the ids."""
    t = FaceTracker(iou_threshold=0.3, max_misses=3)
    speed = 6.0  # px per frame each, 12 px per frame relative; boxes of 60 px
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    for f in range(60):
        ax, bx = 100 + speed * f, 100 + speed * 59 - speed * f
        d = dets(box(ax, 100), box(bx, 106))
        out = t.update(d, f / FPS)
        seen["a"].add(int(out.track_id[0]))
        seen["b"].add(int(out.track_id[1]))
    assert seen == {"a": {0}, "b": {1}}


def test_identity_through_crossing_with_merged_detection() -> None:
    """At the crossing the detector sees one face for 3 frames; both ids survive and do not swap."""
    t = FaceTracker(iou_threshold=0.3, max_misses=5)
    speed = 6.0
    ids_a, ids_b = [], []
    for f in range(60):
        ax, bx = 100 + speed * f, 100 + speed * 59 - speed * f
        if 28 <= f <= 30:  # only the front face is detected
            out = t.update(dets(box(ax, 100)), f / FPS)
            ids_a.append(int(out.track_id[0]))
            continue
        out = t.update(dets(box(ax, 100), box(bx, 104)), f / FPS)
        ids_a.append(int(out.track_id[0]))
        ids_b.append(int(out.track_id[1]))
    assert set(ids_a) == {0}
    assert set(ids_b) == {1}


def test_short_occlusion_keeps_id_long_one_gets_new_id() -> None:
    t = FaceTracker(max_misses=4)
    times = iter(np.arange(200) / FPS)
    x = 100.0
    for _ in range(10):  # moving right 3 px/frame
        x += 3
        assert t.update(dets(box(x, 100)), next(times)).track_id.tolist() == [0]
    for _ in range(4):  # occluded for 4 frames: coasting on the prediction
        x += 3
        assert len(t.update(dets(), next(times))) == 0
    assert t.track_ids == [0]
    x += 3
    assert t.update(dets(box(x, 100)), next(times)).track_id.tolist() == [0]
    for _ in range(5):  # 5 misses > max_misses: the track ends
        x += 3
        t.update(dets(), next(times))
    assert t.ended == [0] and t.track_ids == []
    assert t.update(dets(box(x, 100)), next(times)).track_id.tolist() == [1]


def test_new_face_gets_new_id_and_ids_are_not_reused() -> None:
    t = FaceTracker()
    assert t.update(dets(box(100, 100)), 0.0).track_id.tolist() == [0]
    assert t.update(dets(box(100, 100), box(400, 300)), 0.04).track_id.tolist() == [0, 1]
    assert t.end_all() == [0, 1]
    assert t.update(dets(box(100, 100)), 0.08).track_id.tolist() == [2]


def test_min_hits_tentative_then_confirmed() -> None:
    t = FaceTracker(min_hits=3)
    got = [t.update(dets(box(100, 100)), f / FPS).track_id.tolist() for f in range(4)]
    assert got == [[-1], [-1], [0], [0]]
    # a tentative track that misses once is dropped without ever getting an id
    t.update(dets(box(100, 100), box(400, 400)), 4 / FPS)
    t.update(dets(box(100, 100)), 5 / FPS)
    assert t.update(dets(box(100, 100), box(400, 400)), 6 / FPS).track_id.tolist() == [0, -1]


def test_predict_extrapolates_without_changing_state() -> None:
    t = FaceTracker(beta=0.5)
    for f in range(20):
        t.update(dets(box(100 + 5 * f, 100)), f / FPS)
    p = t.predict(21 / FPS)  # two frames after the last update
    assert p.track_id.tolist() == [0]
    cx = float(p.xyxy[0, [0, 2]].mean())
    assert cx == pytest.approx(100 + 5 * 21, abs=2.0)
    assert float(p.score[0]) == pytest.approx(0.9)
    # predict is read-only: the next detection still matches and no miss was counted
    assert t.update(dets(box(100 + 5 * 22, 100)), 22 / FPS).track_id.tolist() == [0]


def test_predict_skips_coasting_tracks_and_handles_empty() -> None:
    t = FaceTracker()
    assert len(t.predict(0.0)) == 0
    t.update(dets(box(100, 100)), 0.0)
    t.update(dets(), 0.04)
    assert len(t.predict(0.08)) == 0


def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        FaceTracker(iou_threshold=0.0)
    with pytest.raises(ConfigError):
        FaceTracker(min_hits=0)


def test_refine_corrects_only_the_measured_tracks() -> None:
    t = FaceTracker(alpha=1.0, beta=0.0, max_misses=0)
    t.update(dets(box(100, 100), box(300, 100)), 0.0)
    before = t.predict(1 / FPS)
    measured = Detections(np.array([box(110, 104)], np.float32), np.array([0.7], np.float32), np.array([1]))
    t.refine(measured, 1 / FPS)  # track 1 measured, track 0 not: no miss for it (max_misses 0 would end it)
    after = t.predict(1 / FPS)
    assert after.track_id.tolist() == [0, 1] and t.ended == []
    np.testing.assert_allclose(after.xyxy[0], before.xyxy[0])  # untouched
    np.testing.assert_allclose(after.xyxy[1], box(110, 104), atol=1e-4)  # alpha 1: the measurement
    assert float(after.score[1]) == pytest.approx(0.7)
    t.refine(Detections(np.array([box(0, 0)], np.float32), np.array([0.9], np.float32), np.array([7])), 2 / FPS)
    assert t.predict(2 / FPS).track_id.tolist() == [0, 1]  # an unknown id changes nothing
