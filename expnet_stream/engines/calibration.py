"""Real face crops for TensorRT INT8 calibration and for the parity check of a built plan, and the calibrator.

Crops come from a folder of images (each image a face crop already, or faces found by a detector plugin) or, by
default for the parity check, from scikit-image's astronaut (a real face photo shipped in its wheel).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..fileio import Buffer, atomic_write_bytes
from ..models.contract import PreprocessContract
from .manifest import EngineBuildError

logger = logging.getLogger(__name__)

__all__ = [
    "ASTRONAUT_FACE_XYXY",
    "IMAGE_SUFFIXES",
    "face_crops_from_dir",
    "fill_batches",
    "make_calibrator",
    "parity_crops",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")

# The astronaut's face in scikit-image's 512x512 astronaut image (x1, y1, x2, y2).
ASTRONAUT_FACE_XYXY = (180.0, 72.0, 270.0, 165.0)


def _image_files(folder: Path, limit: int) -> list[Path]:
    if not folder.is_dir():
        raise EngineBuildError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise EngineBuildError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files[:limit]


def face_crops_from_dir(
    folder: str | os.PathLike[str], contract: PreprocessContract, *, limit: int = 512, detector: str | None = None
) -> npt.NDArray[np.uint8]:
    """``(N, crop_size, crop_size, 3)`` uint8 BGR crops from the images in ``folder`` (recursively, sorted).

    Without ``detector`` every image is taken to be a face crop already (e.g. ExpNet's 227 px sample crops): its
    centre square is resized to ``crop_size``. With a detector plugin name (e.g. ``yuface``) faces are detected and
    cut with the contract's crop rule (:func:`~expnet_stream.faces.crop.crop_faces`).
    """
    import cv2

    folder = Path(folder)
    det = None
    if detector is not None:
        from .. import plugin_registry

        det = plugin_registry.create("face_detector", detector)
    size = contract.crop_size
    crops: list[npt.NDArray[np.uint8]] = []
    for path in _image_files(folder, limit):
        raw = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if raw is None:
            logger.warning("skipping unreadable image path=%s", path)
            continue
        img: npt.NDArray[np.uint8] = np.asarray(raw, np.uint8)
        if det is not None:
            from ..faces.crop import crop_faces

            found = det.detect(img)
            crops.extend(crop_faces(img, found.xyxy, contract))
        else:
            h, w = img.shape[:2]
            side = min(h, w)
            y, x = (h - side) // 2, (w - side) // 2
            interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
            crops.append(np.asarray(cv2.resize(img[y : y + side, x : x + side], (size, size), interpolation=interp)))
        if len(crops) >= limit:
            break
    if det is not None:
        det.close()
    if not crops:
        raise EngineBuildError(f"no face crops could be made from the images in {folder}")
    return np.stack(crops[:limit])


def parity_crops(
    contract: PreprocessContract, n: int, *, folder: str | os.PathLike[str] | None = None
) -> tuple[npt.NDArray[np.uint8], str]:
    """``n`` real face crops and where they came from: the images of ``folder``, else scikit-image's astronaut.

    The astronaut's face box is jittered (shift, scale) and mirrored deterministically to make ``n`` distinct crops.
    Crops from a folder are repeated when it holds fewer than ``n``.
    """
    if folder is not None:
        crops = face_crops_from_dir(folder, contract, limit=n)
        reps = -(-n // crops.shape[0])
        return np.concatenate([crops] * reps)[:n], str(folder)
    try:
        from skimage import data
    except ImportError as exc:
        raise EngineBuildError(
            "the parity check needs real face crops: install scikit-image (its astronaut image) or pass a folder of "
            "face images (--parity-images / --calib)"
        ) from exc
    from ..faces.crop import crop_faces

    image = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    rng = np.random.default_rng(0)
    x1, y1, x2, y2 = ASTRONAUT_FACE_XYXY
    w, h = x2 - x1, y2 - y1
    boxes = np.empty((n, 4), np.float32)
    for i in range(n):
        dx, dy = rng.uniform(-0.1, 0.1, 2) * (w, h)
        s = 1.0 if i == 0 else rng.uniform(0.9, 1.15)
        cx, cy = (x1 + x2) / 2 + dx * (i > 0), (y1 + y2) / 2 + dy * (i > 0)
        boxes[i] = (cx - w * s / 2, cy - h * s / 2, cx + w * s / 2, cy + h * s / 2)
    crops = crop_faces(image, boxes, contract)
    crops[1::2] = crops[1::2, :, ::-1]
    return np.ascontiguousarray(crops), "skimage:astronaut"


def make_calibrator(
    trt: Any,
    batches: list[npt.NDArray[np.float32]],
    cache: Path,
    device: str,
    write: Callable[[Path, Buffer], object] = atomic_write_bytes,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` from a device buffer; ``write(path, data)`` saves its cache
    (default :func:`~expnet_stream.fileio.atomic_write_bytes`: atomic, 0644, readable by the worker user)."""
    import torch

    base = trt.IInt8EntropyCalibrator2

    class _Calibrator(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._i = 0
            self._buf = torch.empty(batches[0].shape, dtype=torch.float32, device=device)

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str], *_: Any) -> list[int] | None:
            if self._i >= len(batches):
                return None
            self._buf.copy_(torch.from_numpy(batches[self._i]))
            if self._buf.is_cuda:
                torch.cuda.synchronize(self._buf.device)
            self._i += 1
            return [int(self._buf.data_ptr())] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            if cache.is_file():
                logger.info("reusing INT8 calibration cache path=%s", cache)
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            write(cache, memoryview(data).cast("B"))

    return _Calibrator()


def fill_batches(x: npt.NDArray[np.float32], size: int) -> list[npt.NDArray[np.float32]]:
    """Full batches of ``size`` (the last one filled up by wrapping around)."""
    n = x.shape[0]
    count = -(-n // size)
    idx = np.arange(count * size) % n
    return [np.ascontiguousarray(x[idx[i * size : (i + 1) * size]]) for i in range(count)]
