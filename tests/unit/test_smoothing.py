"""Per-track smoothing: One-Euro cuts jitter on a noisy still signal, follows a step; EMA; state per track."""

from __future__ import annotations

import numpy as np
import pytest

from expnet_stream.aggregate.smoothing import TrackSmoother, jitter
from expnet_stream.errors import ConfigError

pytestmark = pytest.mark.unit

FPS = 30.0


def run(smoother: TrackSmoother, signal: np.ndarray, track: int = 0) -> np.ndarray:
    out = [smoother.update(np.array([track]), row[None, :], i / FPS)[0] for i, row in enumerate(signal)]
    return np.array(out)


def test_one_euro_reduces_jitter_on_noisy_constant() -> None:
    rng = np.random.default_rng(0)
    raw = (0.5 + 0.05 * rng.standard_normal((150, 29))).astype(np.float32)
    smooth = run(TrackSmoother("one_euro", min_cutoff_hz=1.0, beta=0.05), raw)
    assert jitter(smooth) < 0.35 * jitter(raw)
    # no bias: the smoothed mean stays on the constant
    assert abs(float(smooth[30:].mean()) - 0.5) < 0.01


def test_one_euro_tracks_a_step() -> None:
    sig = np.zeros((90, 29), np.float32)
    sig[30:] = 1.0
    out = run(TrackSmoother("one_euro", min_cutoff_hz=1.0, beta=0.5), sig)
    assert np.all(out[:30] == 0.0)
    assert np.all(np.diff(out[29:, 0]) >= -1e-6)  # monotone, no overshoot
    assert out[36, 0] > 0.6  # within 0.2 s most of the way
    assert out[-1, 0] == pytest.approx(1.0, abs=0.02)
    # a higher beta follows faster
    slow = run(TrackSmoother("one_euro", min_cutoff_hz=1.0, beta=0.0), sig)
    assert out[33, 0] > slow[33, 0]


def test_ema_half_life_in_stream_time() -> None:
    s = TrackSmoother("ema", half_life_s=0.1)
    s.update(np.array([0]), np.zeros((1, 29)), 0.0)
    assert s.update(np.array([0]), np.ones((1, 29)), 0.1)[0, 0] == pytest.approx(0.5)
    assert s.update(np.array([0]), np.ones((1, 29)), 0.3)[0, 0] == pytest.approx(1 - 0.5 * 0.25)


def test_raw_unchanged_none_kind_and_untracked_faces() -> None:
    raw = np.arange(58, dtype=np.float32).reshape(2, 29)
    keep = raw.copy()
    s = TrackSmoother("one_euro")
    s.update(np.array([0, -1]), raw, 0.0)
    out = s.update(np.array([0, -1]), raw + 10, 0.04)
    np.testing.assert_array_equal(raw, keep)  # input untouched
    np.testing.assert_array_equal(out[1], raw[1] + 10)  # untracked face passes through
    assert 0 < out[0, 0] < 10
    none = TrackSmoother("none").update(np.array([0, 1]), raw, 0.0)
    np.testing.assert_array_equal(none, raw)
    assert none is not raw


def test_tracks_are_independent_and_dropped() -> None:
    s = TrackSmoother("ema", half_life_s=0.1)
    s.update(np.array([3, 7]), np.stack([np.zeros(29), np.full(29, 5.0)]), 0.0)
    out = s.update(np.array([7, 3]), np.stack([np.full(29, 5.0), np.ones(29)]), 0.1)
    assert out[0, 0] == pytest.approx(5.0) and out[1, 0] == pytest.approx(0.5)
    assert len(s) == 2
    s.drop([3])
    assert len(s) == 1
    # a dropped track starts afresh: its first face passes unchanged
    assert s.update(np.array([3]), np.full((1, 29), 9.0), 0.2)[0, 0] == pytest.approx(9.0)


def test_many_tracks_grow_state_and_out_of_order_passes() -> None:
    s = TrackSmoother("one_euro")
    ids = np.arange(40)
    s.update(ids, np.zeros((40, 29)), 0.0)
    out = s.update(ids, np.ones((40, 29)), 0.0)  # same time: passes unchanged, state kept
    np.testing.assert_array_equal(out, np.ones((40, 29)))
    assert len(s) == 40


def test_bad_settings() -> None:
    with pytest.raises(ConfigError):
        TrackSmoother("kalman")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TrackSmoother("one_euro", min_cutoff_hz=0.0)


def test_jitter_definition() -> None:
    assert jitter([[0.0], [1.0], [0.0]]) == pytest.approx(1.0)
    assert jitter([[1.0, 2.0]]) == 0.0
