"""YuNet on ONNX Runtime (``yunet``): the network inside ``yuface``, run by the engine family that runs ExpNet.

YuNet (Wu, Peng, Yu, 2023; Apache-2.0) ships inside this package (``yunet/``, with its licence and notice): nothing is
downloaded and no native wheel is needed, so it runs wherever ONNX Runtime does. The ONNX file takes a dynamic batch
and size, so :meth:`YuNetDetector.detect_batch` runs the frames of several streams in one call (grouped by padded
size); on a GPU host the same file runs on the CUDA execution provider (``providers``).

Post-processing follows OpenCV's ``FaceDetectorYN``: per stride 8/16/32, score = sqrt(cls * obj), boxes decoded from
the grid cell plus the predicted offset (centre) and ``exp`` of the predicted log size, then ``cv2.dnn.NMSBoxes``.
The image is zero-padded on the right and bottom to a multiple of 32 (the network's largest stride).

Options (besides ``min_score``, ``max_side``, ``min_face_px``; see :mod:`._base`): ``model`` (``"n"``, default, or
``"s"``, or a path to a YuNet ONNX file), ``nms_threshold`` (0.3), ``top_k`` (100), ``threads`` (ONNX Runtime
intra-op threads, default 1: decode and ExpNet share the cores), ``providers`` (default CPU), ``max_batch`` (frames
per ONNX Runtime call in :meth:`YuNetDetector.detect_batch`; default 1 on the CPU provider, 16 with a GPU provider:
on CPU a batch is no faster per frame (640x360: 10.2 ms at 1, 11.2 at 4, 12.2 at 8) and ONNX Runtime's arena keeps
the larger activations (+65 MB RSS at 4 frames, +130 MB at 8), on a GPU batching is the point).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from expnet_stream.engines.onnxruntime_engine import session_options
from expnet_stream.errors import ConfigError
from expnet_stream.faces.detections import Detections, eye_roll_deg
from expnet_stream.faces.detector import BGRImage
from expnet_stream.plugin_registry import register

from ._base import ScaledFaceDetector, _number, check_frame, downscale, finish

WEIGHTS = Path(__file__).with_name("yunet")
MODELS = {"n": WEIGHTS / "yunet_n_dynamic.onnx", "s": WEIGHTS / "yunet_s_dynamic.onnx"}
STRIDES = (8, 16, 32)

F32 = npt.NDArray[np.float32]


def pad32(image: BGRImage) -> BGRImage:
    """Zero-pad ``image`` right and bottom to multiples of 32 (boxes keep their pixel coordinates)."""
    h, w = image.shape[:2]
    ph, pw = -h % 32, -w % 32
    if ph == 0 and pw == 0:
        return image
    return np.asarray(cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0)), np.uint8)


def decode(outputs: dict[str, F32], index: int, width: int, score_threshold: float) -> tuple[F32, F32, F32]:
    """Boxes ``xyxy``, scores and the five landmarks ``(M, 5, 2)`` (right eye, left eye, nose tip, right and left mouth
    corner, in the image's pixels) of image ``index`` of a batch, before NMS, for a padded input ``width`` wide."""
    boxes, scores, points = [], [], []
    for s in STRIDES:
        cols = width // s
        cls = np.clip(outputs[f"cls_{s}"][index, :, 0], 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{s}"][index, :, 0], 0.0, 1.0)
        score = np.sqrt(cls * obj)
        keep = np.nonzero(score >= score_threshold)[0]
        if keep.size == 0:
            continue
        bbox = outputs[f"bbox_{s}"][index, keep].astype(np.float32)
        r, c = np.divmod(keep, cols)
        cx = (c + bbox[:, 0]) * s
        cy = (r + bbox[:, 1]) * s
        w = np.exp(np.clip(bbox[:, 2], -10, 10)) * s
        h = np.exp(np.clip(bbox[:, 3], -10, 10)) * s
        boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        scores.append(score[keep])
        kps = outputs[f"kps_{s}"][index, keep].astype(np.float32).reshape(-1, 5, 2)
        points.append((np.stack([c, r], axis=1).astype(np.float32)[:, None, :] + kps) * s)
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(points).astype(np.float32),
    )


def nms(xyxy: F32, scores: F32, score_threshold: float, nms_threshold: float, top_k: int) -> npt.NDArray[np.intp]:
    """Indices kept by OpenCV's NMS (highest score first)."""
    if len(xyxy) == 0:
        return np.zeros(0, np.intp)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), score_threshold, nms_threshold, top_k=top_k)
    return np.asarray(keep, np.intp).reshape(-1)


@register("face_detector", "yunet")
class YuNetDetector(ScaledFaceDetector):
    """YuNet face detector on ONNX Runtime; batched across frames with :meth:`detect_batch`."""

    name: ClassVar[str] = "yunet"
    # sqrt(cls * obj); 0.8 chosen on the detector evaluation (plugins/detectors/README.md): at 0.5 it finds more small
    # faces than yuface but also 0.33 false faces per non-face photo; at 0.8 none, and recall still >= yuface's
    default_min_score: ClassVar[float] = 0.8

    def __init__(
        self,
        *,
        model: str = "n",
        nms_threshold: float = 0.3,
        top_k: int = 100,
        threads: int = 1,
        providers: list[str] | None = None,
        max_batch: int | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)  # min_score, max_side, min_face_px: declared once, in ScaledFaceDetector
        path = MODELS.get(model, Path(model))
        if not path.is_file():
            raise ConfigError(f"yunet model {model!r}: no such file {path} (use 'n', 's' or a path to a YuNet ONNX)")
        self.nms_threshold = _number("nms_threshold", nms_threshold, 0, 1)
        self.top_k = int(_number("top_k", top_k, 1))
        opts = session_options(int(_number("threads", threads, 1)))
        self.model_path = path
        self._session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        on_gpu = any(p != "CPUExecutionProvider" for p in self._session.get_providers())
        self.max_batch = int(_number("max_batch", max_batch if max_batch is not None else 16 if on_gpu else 1, 1))
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._run_lock = threading.Lock()

    def _run(self, batch: F32) -> dict[str, F32]:
        with self._run_lock:
            values = self._session.run(self._outputs, {"input": batch})
        return dict(zip(self._outputs, values, strict=True))

    def _detect_small(self, image: BGRImage, min_face_px: float) -> tuple[npt.ArrayLike, npt.ArrayLike]:
        padded = pad32(image)
        out = self._run(padded.transpose(2, 0, 1)[None].astype(np.float32))
        xyxy, score, _ = self._post_landmarks(out, 0, padded.shape[1])
        return xyxy, score

    def _post_landmarks(self, out: dict[str, F32], index: int, w: int) -> tuple[F32, F32, F32]:
        xyxy, score, kps = decode(out, index, w, self.min_score)
        keep = nms(xyxy, score, self.min_score, self.nms_threshold, self.top_k)
        return xyxy[keep], score[keep], kps[keep]

    def detect(self, frame_bgr: BGRImage) -> Detections:
        """Faces of one frame, each with the roll of its eye line (:meth:`detect_batch` of one frame)."""
        return self.detect_batch([frame_bgr])[0]

    def detect_landmarks(self, image: BGRImage) -> tuple[F32, F32, F32]:
        """``(xyxy (N, 4), score (N,), landmarks (N, 5, 2))`` of one image at its own size (no ``max_side``
        downscale, no ``min_face_px``): the faces and their five YuNet landmarks, highest score first. Used where the
        eyes matter (levelling the eyes of training faces); the worker's per-frame path is :meth:`detect_batch`."""
        padded = pad32(check_frame(image))
        out = self._run(padded.transpose(2, 0, 1)[None].astype(np.float32))
        w = padded.shape[1]
        return self._post_landmarks(out, 0, w)

    def detect_batch(self, frames: Sequence[BGRImage]) -> list[Detections]:
        """Faces of several frames (of any streams and sizes): frames with the same padded size share a call, up to
        ``max_batch`` frames each."""
        prepared = []
        for frame in frames:
            f = check_frame(frame)
            small, sx, sy = downscale(f, self.max_side)
            prepared.append((f.shape[:2], pad32(small), sx, sy))
        results: list[Detections | None] = [None] * len(frames)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (_, padded, _, _) in enumerate(prepared):
            groups.setdefault(padded.shape[:2], []).append(i)
        chunks = [
            (w, idx[k : k + self.max_batch])
            for (_, w), idx in groups.items()
            for k in range(0, len(idx), self.max_batch)
        ]
        for w, idx in chunks:
            batch = np.stack([prepared[i][1] for i in idx]).transpose(0, 3, 1, 2).astype(np.float32)
            out = self._run(batch)
            for j, i in enumerate(idx):
                xyxy, score, kps = self._post_landmarks(out, j, w)
                frame_hw, _, sx, sy = prepared[i]
                # the roll of the eye line is the same in the frame (downscaling keeps the aspect ratio)
                roll = eye_roll_deg(kps)
                results[i] = finish(xyxy, score, sx, sy, frame_hw, self.min_score, self.min_face_px, roll)
        return [r if r is not None else Detections.empty() for r in results]
