"""The numpy-only coefficient emotion head (runtime part in models/, fitting in train/) and the shipped head file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expnet_stream.errors import ModelError
from expnet_stream.models.emotion import EMOTIONS, EmotionHead

pytestmark = pytest.mark.unit


def test_proba_rows_sum_to_one_and_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    head = EmotionHead(rng.normal(size=(8, 29)).astype(np.float32), rng.normal(size=8).astype(np.float32))
    x = rng.normal(size=(5, 29)).astype(np.float32) * 10
    p = head.predict_proba(x)
    assert p.shape == (5, 8)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert np.all(p >= 0)
    again = EmotionHead.load(head.save(tmp_path / "h.npz"))
    np.testing.assert_array_equal(again.predict_proba(x), p)
    assert again.classes == EMOTIONS


def test_bad_input_and_bad_file(tmp_path: Path) -> None:
    head = EmotionHead(np.zeros((8, 29), np.float32), np.zeros(8, np.float32))
    with pytest.raises(ValueError, match=r"\(N, 29\)"):
        head.predict_proba(np.zeros((2, 28)))
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError):
        EmotionHead.load(tmp_path / "x.npz")


def test_fit_recovers_separable_classes() -> None:
    pytest.importorskip("sklearn", reason="fitting the head needs scikit-learn (train extra)")
    from expnet_stream.train.emotion_head import fit_emotion_head

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 29)) * 4
    y = np.repeat(["happiness", "neutral", "surprise"], 40)
    x = centres[np.repeat(np.arange(3), 40)] + rng.normal(size=(120, 29))
    head = fit_emotion_head(x, y, basis_id="test")
    assert np.mean(np.asarray(head.predict(x)) == y) > 0.95
    # classes without training faces are left out and reported unsupported, not kept as a silent ~0 column
    assert head.classes == ("happiness", "neutral", "surprise")
    assert set(head.unsupported) == set(EMOTIONS) - {"happiness", "neutral", "surprise"}


def test_shipped_head_loads() -> None:
    from expnet_stream.models.weights import default_emotion_head_path

    head = EmotionHead.load(default_emotion_head_path())
    p = head.predict_proba(np.zeros((1, head.num_coeffs), np.float32))
    assert head.classes == EMOTIONS and head.unsupported == ()  # FER+ votes: contempt is a class
    assert p.shape == (1, 8) and abs(float(p.sum()) - 1.0) < 1e-5
    assert 0.2 < head.temperature < 20  # calibrated on FER+ val
