"""Weights shipped with the package: the trained default ExpNet (ONNX + contract, and a torch checkpoint) and its
coefficient emotion head. The model's own calibrated emotion output is inside the ONNX file; ``emotion_head.npz`` is
the fallback on the 29 coefficients. Nothing is downloaded; see ``MODEL_CARD.md`` in this folder for data, recipe and
measured numbers.

>>> default_model_path().suffix, default_model_path().is_file()
('.onnx', True)
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ModelError

__all__ = [
    "DEFAULT_MODEL_ID",
    "WEIGHTS_DIR",
    "default_checkpoint_path",
    "default_emotion_head_path",
    "default_model_path",
]

WEIGHTS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_ID = "expnet_lite18.s112@lfw-videos-ferplus-v2"


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelError(f"the shipped {what} {path} is missing (a broken install or checkout?)")
    return path


def default_model_path() -> Path:
    """The shipped trained ONNX model; its contract is ``contract_path_for(path)`` next to it."""
    return _existing(WEIGHTS_DIR / f"{DEFAULT_MODEL_ID}.onnx", "default model")


def default_checkpoint_path() -> Path:
    """The same weights as a torch checkpoint: ``create_model("expnet_lite18.s112", pretrained_path=...)``."""
    return _existing(WEIGHTS_DIR / f"{DEFAULT_MODEL_ID}.pt", "default checkpoint")


def default_emotion_head_path() -> Path:
    """The shipped coefficient emotion head (numpy-only): ``EmotionHead.load(default_emotion_head_path())``."""
    return _existing(WEIGHTS_DIR / "emotion_head.npz", "emotion head")
