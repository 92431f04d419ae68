"""The preprocessing contract that travels with ExpNet weights, ONNX files and engines.

What the official ExpNet code does (fengju514/Expression-Net @ 85f8320, ``pose_utils.preProcessImage`` and
``main_ExpShapePoseNet.py``), and what this contract reproduces:

1. The face box is made square around its centre (side = max(w, h)) and grown by ``factor = 0.25`` of the side on
   every edge (1.5x), zero padded where it leaves the image, and resized to 227x227 with ``cv2.INTER_CUBIC``.
   The official code snaps the box to whole pixels with ``ceil`` (we do too, ``crop_snap_to_pixels``) and round-trips
   the crop through a JPEG file (we do not). See :func:`expnet_stream.faces.crop.crop_faces`.
2. The 227x227 uint8 BGR crop is RESIZED (not centre-cropped) to 224x224 with TF1 ``tf.image.resize_bilinear``
   (``align_corners=False``, legacy sampling ``src = dst * 227 / 224``, no half-pixel offset, no antialiasing), then a
   224x224x3 BGR mean IMAGE in [0, 255] (``Expression_Model/3DMM_expr_mean.npy``, not redistributable, not available
   here) is subtracted. There is no division by a std. :meth:`PreprocessContract.normalize` does step 2.

Without the official mean image we subtract a per-channel BGR mean (``mean_bgr``); a trained model records the mean of
its own training crops. ``mean_image_path`` lets a converted official model subtract its mean image instead.

>>> c = PreprocessContract(model_name="expnet_resnet18.s112", input_size=112, crop_size=114)
>>> c.model_id, c.trained
('expnet_resnet18.s112@UNTRAINED-random-init-seed0', False)
>>> c.normalize(np.zeros((2, 114, 114, 3), np.uint8)).shape
(2, 3, 112, 112)
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from ..errors import ModelError
from ..fileio import read_json, write_model_json

logger = logging.getLogger(__name__)

__all__ = ["CONTRACT_SCHEMA_VERSION", "PreprocessContract", "contract_path_for"]

CONTRACT_SCHEMA_VERSION = 3
UNTRAINED_PREFIX = "untrained"

# Per-channel mean of the Caffe MSRA ResNet (ImageNet), BGR order, [0, 255].
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


def contract_path_for(onnx_path: str | os.PathLike[str]) -> Path:
    """Where the contract of a model file lives: ``model.onnx`` -> ``model.contract.json`` (same folder)."""
    return Path(onnx_path).with_suffix(".contract.json")


_Taps = tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32]]


@functools.lru_cache(maxsize=8)
def _tf1_bilinear_taps(src: int, dst: int) -> _Taps:
    """Taps of TF1 ``resize_bilinear(align_corners=False, half_pixel_centers=False)``: ``src_pos = dst_pos * src/dst``.

    Returns ``lo, hi, frac`` per output row (and column).
    """
    scale = np.float32(src) / np.float32(dst)
    pos = np.arange(dst, dtype=np.float32) * scale
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    frac = (pos - lo).astype(np.float32)
    for arr in (lo, hi, frac):
        arr.setflags(write=False)
    return lo, hi, frac


class PreprocessContract(BaseModel):
    """Everything needed to turn a frame and a face box into the model input, and to name the model's output.

    Frozen and versioned; written as JSON next to every exported ONNX file (:func:`contract_path_for`) and stored
    inside every checkpoint.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1, 2, 3] = Field(
        default=3,
        description="Version of this contract's JSON layout (CONTRACT_SCHEMA_VERSION); a change is a new one. "
        "2 added the emotion output fields, 3 crop_level_eyes; files of versions 1 and 2 still read.",
    )
    model_name: str = Field(description="Registered model name, e.g. 'expnet_resnet101' or 'expnet_resnet18.s112'.")
    input_size: int = Field(default=224, gt=0, description="Side of the square network input in pixels (paper: 224).")
    crop_size: int = Field(
        default=227,
        gt=0,
        description="Side of the uint8 face crop cut from the frame (paper: 227); reduced to input_size by "
        "crop_to_input inside normalize().",
    )
    crop_expand: float = Field(
        default=0.25,
        ge=0.0,
        description="The box is made square (side = max(w, h)) around its centre, then grown by crop_expand * side "
        "on EACH edge (0.25 -> 1.5x side, as in the paper). Outside the image is filled with pad_value.",
    )
    crop_interpolation: Literal["cubic", "linear"] = Field(
        default="cubic", description="Interpolation from the expanded box to crop_size (official: cv2 INTER_CUBIC)."
    )
    crop_snap_to_pixels: bool = Field(
        default=True,
        description="Snap the expanded square to whole pixels like the official code (top-left ceil-ed, side from the "
        "ceiled corners); False keeps sub-pixel boxes.",
    )
    crop_level_eyes: bool = Field(
        default=False,
        description="Level the eyes before the crop: the crop is rotated about the box centre by the roll of the "
        "eye line (from the detector's landmarks, carried by the tracker between detections), as the model was "
        "trained. Faces without a known roll are cropped upright. Not in the paper (its crops are upright).",
    )
    pad_value: int = Field(
        default=0, ge=0, le=255, description="Fill value of crop pixels outside the frame (official 0)."
    )
    crop_to_input: Literal["resize_tf1_bilinear", "center_crop"] = Field(
        default="resize_tf1_bilinear",
        description="How the crop_size crop becomes input_size: 'resize_tf1_bilinear' (official ExpNet: TF1 "
        "resize_bilinear, align_corners=False, legacy src = dst * crop/input) or 'center_crop'.",
    )
    channel_order: Literal["BGR"] = Field(default="BGR", description="Channel order of crops and network input.")
    mean_bgr: tuple[float, float, float] = Field(
        default=IMAGENET_MEAN_BGR, description="Per-channel mean subtracted from the [0, 255] input, BGR order."
    )
    mean_image_path: str | None = Field(
        default=None,
        description="Optional .npy mean image, (input_size, input_size, 3) BGR [0, 255] float, subtracted INSTEAD of "
        "mean_bgr (official ExpNet uses a mean image). A relative path is resolved against the folder of the "
        "contract JSON it was read from.",
    )
    std: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0), description="Per-channel divisor applied after the mean (official ExpNet: none, 1)."
    )
    input_name: str = Field(
        default="image", description="ONNX/engine input name: float32 (N, 3, input_size, input_size)"
    )
    output_name: str = Field(default="expr", description="ONNX/engine output name: float32 (N, num_coeffs).")
    num_coeffs: int = Field(default=29, gt=0, description="Number of expression coefficients (paper: 29).")
    emotion_output_name: str | None = Field(
        default=None,
        description="ONNX/engine output holding calibrated emotion probabilities, float32 (N, len(emotion_classes)), "
        "from a second head on the trunk; None when the model has no emotion output (a coefficient head is used).",
    )
    emotion_classes: tuple[str, ...] = Field(
        default=(),
        description="Class names of the emotion output, in column order; emotions of the product missing here are "
        "unsupported by this model (e.g. 'contempt' for FER2013-trained heads).",
    )
    emotion_temperature: float = Field(
        default=1.0,
        gt=0.0,
        description="Calibration temperature already applied inside the model: probabilities = softmax(logits / T), "
        "T fitted on validation data. Informational.",
    )
    basis_id: str = Field(
        default="none/untrained",
        min_length=1,
        description="Id of the 3D expression basis the coefficients refer to; 'none/untrained' until one exists.",
    )
    weights: str = Field(
        default=f"{UNTRAINED_PREFIX}-random-init-seed0",
        min_length=1,
        description="Weights tag. Tags starting with 'untrained' mark random weights whose output means nothing.",
    )

    _base_dir: Path | None = PrivateAttr(default=None)
    _mean_image: npt.NDArray[np.float32] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> PreprocessContract:
        if self.crop_size < self.input_size:
            raise ValueError(f"crop_size ({self.crop_size}) must be >= input_size ({self.input_size})")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if (self.emotion_output_name is None) != (not self.emotion_classes):
            raise ValueError("emotion_output_name and emotion_classes go together (both set or both empty)")
        if self.emotion_output_name in (self.input_name, self.output_name):
            raise ValueError(f"emotion_output_name {self.emotion_output_name!r} clashes with another tensor name")
        return self

    def __eq__(self, other: object) -> bool:
        # Field values only: where a contract was read from (a private attribute) does not change what it says.
        if not isinstance(other, PreprocessContract):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(self.model_dump_json())

    # -- identity ------------------------------------------------------------------------------------------------

    @property
    def trained(self) -> bool:
        """False for random-init weights (tag starts with 'untrained'): their coefficients mean nothing."""
        return not self.weights.lower().startswith(UNTRAINED_PREFIX)

    @property
    def model_id(self) -> str:
        """``<model_name>@<weights>``; untrained weights read ``<model_name>@UNTRAINED-...`` so no one mistakes them."""
        if self.trained:
            return f"{self.model_name}@{self.weights}"
        rest = self.weights[len(UNTRAINED_PREFIX) :].lstrip("-_")
        return f"{self.model_name}@UNTRAINED-{rest}" if rest else f"{self.model_name}@UNTRAINED"

    # -- files ---------------------------------------------------------------------------------------------------

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the contract as JSON (atomically: temp file + rename); returns the path."""
        return write_model_json(path, self, ModelError, "contract")

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> PreprocessContract:
        """Read a contract written by :meth:`to_json`; raises ModelError when missing or invalid."""
        path = Path(path)
        contract = cls.from_dict(read_json(path, ModelError, "contract"), source=str(path))
        contract._base_dir = path.parent
        return contract

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> PreprocessContract:
        """Validate a decoded contract; raises ModelError with the pydantic message."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ModelError(f"invalid preprocessing contract {source}: {exc}") from exc

    # -- preprocessing -------------------------------------------------------------------------------------------

    def mean_image(self) -> npt.NDArray[np.float32]:
        """The mean subtracted from the network input, broadcastable to (N, S, S, 3): mean image or per-channel."""
        if self.mean_image_path is None:
            return np.asarray(self.mean_bgr, np.float32).reshape(1, 1, 3)
        if self._mean_image is None:
            path = Path(self.mean_image_path)
            if not path.is_absolute() and self._base_dir is not None:
                path = self._base_dir / path
            try:
                img = np.load(path).astype(np.float32)
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot load mean image {path}: {exc}") from exc
            if img.shape == (3, self.input_size, self.input_size):  # official file is CHW
                img = np.ascontiguousarray(img.transpose(1, 2, 0))
            if img.shape != (self.input_size, self.input_size, 3):
                raise ModelError(
                    f"mean image {path} must have shape ({self.input_size}, {self.input_size}, 3), got {img.shape}"
                )
            self._mean_image = img
        return self._mean_image

    def normalize(self, crops_uint8_nhwc: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """``(N, crop_size, crop_size, 3)`` uint8 BGR crops -> ``(N, 3, input_size, input_size)`` float32 input.

        Vectorised over the batch: crop_to_input (TF1 bilinear resize, as the official code, or centre crop), then
        ``(x - mean) / std`` and HWC -> CHW.
        """
        crops = np.asarray(crops_uint8_nhwc)
        c = self.crop_size
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (c, c, 3):
            raise ModelError(
                f"normalize expects uint8 crops of shape (N, {c}, {c}, 3), got {crops.dtype} {crops.shape}"
            )
        s = self.input_size
        # CHW first (a uint8 copy), so every pass below runs on C-contiguous arrays and the result is the engine's
        # layout without another copy
        chw = np.ascontiguousarray(crops.transpose(0, 3, 1, 2))
        if c == s:
            x = chw.astype(np.float32)
        elif self.crop_to_input == "center_crop":
            o = (c - s) // 2
            x = np.ascontiguousarray(chw[:, :, o : o + s, o : o + s], np.float32)
        else:  # separable, two taps: rows, then columns, in place (~3x faster than on the HWC layout)
            lo, hi, f = _tf1_bilinear_taps(c, s)
            x = np.take(chw, lo, axis=2).astype(np.float32)
            step = np.take(chw, hi, axis=2).astype(np.float32)
            step -= x
            step *= f[:, None]
            x += step
            step = np.take(x, hi, axis=3)
            x = np.take(x, lo, axis=3)
            step -= x
            step *= f
            x += step
        mean = self.mean_image()
        x -= mean.transpose(2, 0, 1) if mean.ndim == 3 else mean
        if self.std != (1.0, 1.0, 1.0):
            x /= np.asarray(self.std, np.float32).reshape(3, 1, 1)
        return x
