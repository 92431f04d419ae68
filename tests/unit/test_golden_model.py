"""Golden output of the shipped model: the same real face (the astronaut, upright and rolled) gives the same
coefficients and emotions as when the model was shipped, through the worker's own crop and engine.

A change of weights, contract, crop or engine that moves the output fails here with the numbers. After shipping a new
model on purpose, rewrite the golden file: ``python -m tests.unit.test_golden_model --update``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.conftest import ASTRONAUT_FACE, astronaut_bgr

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).with_name("golden_shipped_model.json")


def _outputs() -> dict[str, Any]:
    from expnet_stream.engines.onnxruntime_engine import OrtEngine
    from expnet_stream.faces.crop import crop_faces
    from expnet_stream.models.contract import PreprocessContract, contract_path_for
    from expnet_stream.models.weights import default_model_path
    from expnet_stream.plugin_registry import create

    path = default_model_path()
    contract = PreprocessContract.from_json(contract_path_for(path))
    img = astronaut_bgr()
    x1, y1, x2, y2 = ASTRONAUT_FACE
    rolled = cv2.warpAffine(img, cv2.getRotationMatrix2D(((x1 + x2) / 2, (y1 + y2) / 2), -15.0, 1.0), img.shape[1::-1])
    detector = create("face_detector", "yunet")
    try:
        dets = [detector.detect(im)[:1] for im in (img, rolled)]
    finally:
        detector.close()
    crops = np.concatenate(
        [crop_faces(im, d.xyxy, contract, d.roll_deg) for im, d in zip((img, rolled), dets, strict=True)]
    )
    with OrtEngine(path, max_batch=4, intra_op_threads=1) as engine:
        coeffs, probs = engine.infer_all(contract.normalize(crops))
    assert probs is not None
    return {
        "model_id": contract.model_id,
        "roll_deg": [round(float(d.roll_deg[0]), 3) for d in dets],
        "coeffs": np.round(coeffs, 4).tolist(),
        "emotions": [dict(zip(contract.emotion_classes, np.round(p, 4).tolist(), strict=True)) for p in probs],
    }


def test_shipped_model_matches_its_golden_output() -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = _outputs()
    assert got["model_id"] == golden["model_id"], "a new model was shipped: update the golden file (module docstring)"
    np.testing.assert_allclose(got["roll_deg"], golden["roll_deg"], atol=0.05)
    np.testing.assert_allclose(got["coeffs"], golden["coeffs"], atol=2e-3)
    for a, b in zip(got["emotions"], golden["emotions"], strict=True):
        assert list(a) == list(b)
        np.testing.assert_allclose(list(a.values()), list(b.values()), atol=2e-3)
    # the two faces are the same face: levelled, the rolled one reads like the upright one
    assert max(golden["emotions"][0], key=golden["emotions"][0].get) == max(
        golden["emotions"][1], key=golden["emotions"][1].get
    )


if __name__ == "__main__" and "--update" in sys.argv:
    GOLDEN.write_text(json.dumps(_outputs(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")
