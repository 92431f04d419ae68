"""Shared fixtures: a real Kafka-protocol broker on loopback, H.264 face videos made with PyAV, a small model."""

from __future__ import annotations

import io
import os
import stat
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from expnet_stream.config.settings import WorkerSettings, load_settings
from expnet_stream.kafka.broker import EmbeddedBroker

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Astronaut (scikit-image, public domain): face box measured in the 512x512 image.
ASTRONAUT_FACE = (180, 72, 270, 165)


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


LOW_DELAY = {"bf": "0", "preset": "veryfast", "sc_threshold": "0"}
"""x264 options of the synthetic clips that need keyframes only every ``gop`` frames and no B-frames."""


def write_h264(
    path: Path,
    frames: Iterator[np.ndarray],
    size: tuple[int, int],
    *,
    fps: int = 25,
    gop: int = 12,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode BGR ``frames`` of ``size`` (w, h) into an H.264 MP4 (frame i at pts i, time base 1/fps)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = options or {"bf": "2", "preset": "veryfast"}
        stream.codec_context.time_base = Fraction(1, fps)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts = i
            for pkt in stream.encode(vf):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)
    return path


def h264_keyframe(width: int, height: int) -> bytes:
    """One real H.264 IDR (Annex B, SPS/PPS in band) of a flat grey ``width x height`` picture."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 90, np.uint8), format="bgr24")
        packets = [*stream.encode(frame), *stream.encode(None)]
    return b"".join(bytes(p) for p in packets)


def make_face_video(
    path: Path,
    *,
    n_frames: int = 36,
    blank_frames: int = 6,
    size: tuple[int, int] = (480, 360),
    fps: int = 25,
    gop: int = 12,
) -> list[bool]:
    """Write an H.264 MP4: ``blank_frames`` grey frames, then the astronaut moving across the frame.

    Returns, per frame in presentation order, whether the frame shows a face.
    """
    w, h = size
    side = min(300, int(min(w, h) * 0.8))
    face_img = cv2.resize(astronaut_bgr(), (side, side), interpolation=cv2.INTER_AREA)
    has_face = [i >= blank_frames for i in range(n_frames)]

    def frames() -> Iterator[np.ndarray]:
        for i in range(n_frames):
            frame = np.full((h, w, 3), 96, np.uint8)
            if has_face[i]:
                x = int((w - side) * (i - blank_frames) / max(1, n_frames - blank_frames - 1))
                y = (h - side) // 2
                frame[y : y + side, x : x + side] = face_img
            yield frame

    write_h264(path, frames(), size, fps=fps, gop=gop)
    return has_face


@pytest.fixture(scope="session")
def face_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bool]]:
    path = tmp_path_factory.mktemp("video") / "astronaut.mp4"
    return path, make_face_video(path)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture()
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small CPU variant exported once per session (untrained weights, seed 0)."""
    from expnet_stream.models.export import ensure_onnx

    return ensure_onnx("expnet_resnet18.s112", tmp_path_factory.mktemp("models"))


@pytest.fixture()
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (third-party data is never in the repository)")
    return SHARED_DATA


def broker_settings(broker: EmbeddedBroker, prefix: str, onnx: Path, **extra: Any) -> WorkerSettings:
    """Worker settings for a test on the embedded broker: topics named by ``prefix``, fast group settings, the small
    model; ``extra`` sections are merged into the defaults (``topics={"input_partitions": 1}``)."""
    over: dict[str, Any] = {
        "group_id": f"{prefix}-group",
        "kafka": {"bootstrap": broker.bootstrap, "session_timeout_ms": 3000, "heartbeat_interval_ms": 500},
        "topics": {
            "input": f"{prefix}.video",
            "expressions": f"{prefix}.expr",
            "emotions": f"{prefix}.emo",
            "dlq": f"{prefix}.dlq",
            "state": f"{prefix}.state",
            "input_partitions": 2,
        },
        "model": {"onnx": str(onnx)},
        "batch": {"max_batch": 8, "max_wait_ms": 20},
        "commit_interval_ms": 100,
    }
    for key, value in extra.items():
        over[key] = {**over[key], **value} if isinstance(value, dict) and isinstance(over.get(key), dict) else value
    return load_settings(None, over)


@pytest.fixture()
def strict_umask() -> Iterator[None]:
    """umask 077: files come out 0644 because the writer says so, not because of a friendly umask."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def file_mode(path: Path) -> int:
    """A file's permission bits."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="session")
def emotion_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seven-class (FER2013) model with its own emotion output, as models before FER+ were (untrained trunk)."""
    pytest.importorskip("torch", reason="exporting needs torch")
    from expnet_stream.models import light  # noqa: F401
    from expnet_stream.models.export import export_onnx
    from expnet_stream.models.registry import create_model

    model, contract = create_model("expnet_lite18.s112", seed=3)
    model.add_emotion_head(7, seed=3)
    with __import__("torch").no_grad():
        model.emotion_fc.weight.mul_(
            300.0
        )  # untrained heads are near-uniform; spread them so the check means something
    contract = contract.model_copy(
        update={
            "emotion_output_name": "emotion",
            "emotion_classes": ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"),
            "emotion_temperature": 1.7,
            "basis_id": "mp478-blendshape-pca29-v1",
        }
    )
    return export_onnx(model, contract, tmp_path_factory.mktemp("emo") / "emo.onnx")
