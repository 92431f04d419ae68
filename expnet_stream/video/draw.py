"""Faces drawn onto a BGR frame: each face's box, label (track id, dominant emotion and its probability), emotion bars
and optionally its 3D expression mesh.

The drawing is made of annotators, in the way of supervision's: each draws one thing per face, in place, and
``annotate(image, faces)`` returns the image. :class:`BoxAnnotator` draws the box, :class:`PanelAnnotator` the column
beside it (emotion bars, mesh), :class:`LabelAnnotator` the label tag. :func:`draw_faces` composes the three face by
face, so a later face is drawn over an earlier one. Sizes scale with the frame (legible at 640x360). Colours come from
the face's dominant emotion (:func:`emotion_colour`).

>>> import numpy as np
>>> from expnet_stream.events.schema import Face, pack_coeffs
>>> face = Face(track_id=3, box=(40, 30, 120, 130), score=0.9, coeffs=pack_coeffs(np.zeros(29)),
...             emotions={"happiness": 0.82, "neutral": 0.18})
>>> image = np.zeros((360, 640, 3), np.uint8)
>>> face_label(face)
'#3 happiness 0.82'
>>> int(draw_faces(image, [face]).any())
1
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from ..events.schema import Face

if TYPE_CHECKING:
    from ..models.expression_basis import ExpressionBasis

__all__ = [
    "EMOTION_BGR",
    "NO_EMOTION_BGR",
    "BoxAnnotator",
    "FaceAnnotator",
    "LabelAnnotator",
    "MeshRenderer",
    "PanelAnnotator",
    "dominant",
    "draw_faces",
    "emotion_colour",
    "face_colour",
    "face_label",
    "mesh_size",
]

Image = npt.NDArray[np.uint8]
Colour = tuple[int, int, int]
PixelBox = tuple[int, int, int, int]

# BGR colour per emotion class; any other class gets a colour from its name
EMOTION_BGR: dict[str, Colour] = {
    "anger": (40, 40, 220),
    "contempt": (140, 140, 0),
    "disgust": (40, 150, 40),
    "fear": (170, 60, 170),
    "happiness": (0, 210, 255),
    "neutral": (190, 190, 190),
    "sadness": (210, 120, 30),
    "surprise": (0, 130, 255),
}
NO_EMOTION_BGR: Colour = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


# ------------------------------------------------------------------------------------------------------ what to draw
def emotion_colour(name: str | None) -> Colour:
    if name is None:
        return NO_EMOTION_BGR
    if name in EMOTION_BGR:
        return EMOTION_BGR[name]
    h = zlib.crc32(name.encode())
    return (64 + h % 192, 64 + (h >> 8) % 192, 64 + (h >> 16) % 192)


def dominant(face: Face) -> tuple[str, float] | None:
    """``(class, probability)`` of the face's most probable emotion; None without emotions."""
    if not face.emotions:
        return None
    emotions = face.emotions
    name = max(emotions, key=lambda k: emotions[k])
    return name, float(emotions[name])


def face_colour(face: Face) -> Colour:
    """The colour of the face's dominant emotion (:data:`NO_EMOTION_BGR` without emotions)."""
    top = dominant(face)
    return emotion_colour(top[0] if top else None)


def face_label(face: Face) -> str:
    """``"#3 happiness 0.82"``; ``"face"`` for an untracked face; ``"(no emotions)"`` without an emotion output."""
    who = f"#{face.track_id}" if face.track_id >= 0 else "face"
    top = dominant(face)
    return f"{who} {top[0]} {top[1]:.2f}" if top else f"{who} (no emotions)"


# ---------------------------------------------------------------------------------------------------------- layout
def _scale(image: Image) -> float:
    """Drawing scale: 1.0 at 360 px on the short side (640x360), proportional above and below."""
    return max(0.5, min(int(image.shape[0]), int(image.shape[1])) / 360.0)


def _pixel_box(image: Image, face: Face) -> PixelBox:
    """The face's box in whole pixels, clamped to the image."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in face.box)
    x1, x2 = min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)
    y1, y2 = min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)
    return x1, y1, x2, y2


def _short_names(classes: Sequence[str]) -> list[str]:
    short = [c[:3] for c in classes]
    return short if len(set(short)) == len(short) else list(classes)


@dataclass(frozen=True)
class _BarLayout:
    names: list[str]
    font: float
    row: int
    pad: int
    bar_w: int
    name_w: int

    @classmethod
    def of(cls, classes: Sequence[str], s: float) -> _BarLayout:
        names = _short_names(classes)
        font = 0.42 * s
        name_w = max(cv2.getTextSize(n, _FONT, font, 1)[0][0] for n in names)
        return cls(names, font, round(12 * s), max(2, round(4 * s)), round(60 * s), name_w)

    @property
    def size(self) -> tuple[int, int]:
        return 3 * self.pad + self.name_w + self.bar_w, 2 * self.pad + self.row * len(self.names)


# ---------------------------------------------------------------------------------------------------------- primitives
def _darken(image: Image, x0: int, y0: int, x1: int, y1: int, keep: float = 0.35) -> None:
    roi = image[y0:y1, x0:x1]
    roi[:] = (roi.astype(np.float32) * keep).astype(np.uint8)


def _text(image: Image, text: str, org: tuple[int, int], scale: float, colour: Colour, thick: int) -> None:
    cv2.putText(image, text, org, _FONT, scale, colour, thick, cv2.LINE_AA)


def _label(image: Image, text: str, box: PixelBox, colour: Colour, s: float) -> None:
    """The label in a filled tag above the box (inside its top edge when there is no room above)."""
    h, w = image.shape[:2]
    fs, thick = 0.5 * s, max(1, round(1.2 * s))
    (tw, th), base = cv2.getTextSize(text, _FONT, fs, thick)
    pad = max(2, round(3 * s))
    x0 = min(max(0, box[0]), max(0, w - tw - 2 * pad))
    y1 = box[1] if box[1] - th - base - 2 * pad >= 0 else box[1] + th + base + 2 * pad
    y1 = min(y1, h)
    y0 = max(0, y1 - th - base - 2 * pad)
    cv2.rectangle(image, (x0, y0), (x0 + tw + 2 * pad, y1), colour, -1)
    ink: Colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    _text(image, text, (x0 + pad, y1 - pad - base), fs, ink, thick)


def _bars(image: Image, emotions: dict[str, float], x0: int, y0: int, lay: _BarLayout) -> None:
    """A horizontal bar per class (the model's class order, 3-letter names) over a darkened panel; the dominant
    class's bar is outlined."""
    pw, ph = lay.size
    _darken(image, x0, y0, x0 + pw, y0 + ph)
    top = max(emotions, key=lambda k: emotions[k])
    bx = x0 + 2 * lay.pad + lay.name_w
    for i, (cls, name) in enumerate(zip(emotions, lay.names, strict=True)):
        y = y0 + lay.pad + i * lay.row
        _text(image, name, (x0 + lay.pad, y + lay.row - max(2, lay.pad - 1)), lay.font, (255, 255, 255), 1)
        p = min(1.0, max(0.0, float(emotions[cls])))
        cv2.rectangle(image, (bx, y + 2), (bx + lay.bar_w, y + lay.row - 2), (90, 90, 90), 1)
        if p > 0:
            cv2.rectangle(
                image, (bx, y + 2), (bx + max(1, round(p * lay.bar_w)), y + lay.row - 2), emotion_colour(cls), -1
            )
        if cls == top:
            cv2.rectangle(image, (bx - 1, y + 1), (bx + lay.bar_w + 1, y + lay.row - 1), (255, 255, 255), 1)


def _paste_mesh(image: Image, mesh: Image, x0: int, y0: int) -> None:
    """The mesh's pixels (not its white background) over a darkened square."""
    m = mesh.shape[0]
    _darken(image, x0, y0, x0 + m, y0 + m)
    mask = mesh.min(axis=2) < 250
    roi = image[y0 : y0 + m, x0 : x0 + m]
    roi[mask] = mesh[mask]


# ---------------------------------------------------------------------------------------------------------- annotators
class FaceAnnotator(ABC):
    """Draws one thing per face onto a BGR uint8 image, in place."""

    def check(self, image: Image, faces: Sequence[Face]) -> None:
        """:class:`ValueError` when ``image`` (or this annotator's per-face input) does not fit ``faces``."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image_bgr must be (H, W, 3) uint8, got {image.shape} {image.dtype}")

    @abstractmethod
    def draw(self, image: Image, face: Face, index: int) -> None:
        """Draw ``face``, the ``index``-th of the faces given, onto ``image``."""

    def annotate(self, image: Image, faces: Sequence[Face]) -> Image:
        """Draw every face onto ``image`` (in place) and return it."""
        self.check(image, faces)
        for i, face in enumerate(faces):
            self.draw(image, face, i)
        return image


class BoxAnnotator(FaceAnnotator):
    """The face's box in its colour (:func:`face_colour`); ``held`` draws it thinner (faces carried over from an
    earlier processed frame)."""

    def __init__(self, *, held: bool = False) -> None:
        self.held = held

    def draw(self, image: Image, face: Face, index: int) -> None:
        x1, y1, x2, y2 = _pixel_box(image, face)
        thick = max(1, round((1.0 if self.held else 2.0) * _scale(image)))
        cv2.rectangle(image, (x1, y1), (x2, y2), face_colour(face), thick, cv2.LINE_AA)


class PanelAnnotator(FaceAnnotator):
    """A column beside the box (right, else left, clamped to the frame): the emotion bars, and below them the face's
    mesh when ``meshes`` has one. ``meshes`` holds one square BGR image (white background) or None per face. Nothing
    is drawn for a face with neither, or when the column does not fit the frame."""

    def __init__(self, meshes: Sequence[Image | None] | None = None) -> None:
        self.meshes = meshes

    def check(self, image: Image, faces: Sequence[Face]) -> None:
        super().check(image, faces)
        if self.meshes is not None and len(self.meshes) != len(faces):
            raise ValueError(f"meshes must hold one entry per face ({len(faces)}), got {len(self.meshes)}")

    def draw(self, image: Image, face: Face, index: int) -> None:
        h, w = image.shape[:2]
        s = _scale(image)
        gap = max(2, round(4 * s))
        x1, y1, x2, _ = _pixel_box(image, face)
        mesh = self.meshes[index] if self.meshes is not None else None
        lay = _BarLayout.of(list(face.emotions), s) if face.emotions else None
        pw, ph = lay.size if lay is not None else (0, 0)
        m = 0 if mesh is None else mesh.shape[0]
        col_w, col_h = max(pw, m), ph + m + (gap if pw and m else 0)
        if col_w and col_w <= w and col_h <= h:
            cx = x2 + gap if x2 + gap + col_w <= w else x1 - gap - col_w
            cx = min(max(cx, 0), w - col_w)
            cy = min(max(y1, 0), h - col_h)
            if face.emotions and lay is not None:
                _bars(image, face.emotions, cx, cy, lay)
            if mesh is not None:
                _paste_mesh(image, mesh, cx, cy + ph + (gap if ph else 0))


class LabelAnnotator(FaceAnnotator):
    """:func:`face_label` in a filled tag of the face's colour above the box (inside its top edge when there is no
    room above)."""

    def draw(self, image: Image, face: Face, index: int) -> None:
        _label(image, face_label(face), _pixel_box(image, face), face_colour(face), _scale(image))


def draw_faces(
    image_bgr: Image,
    faces: Sequence[Face],
    *,
    held: bool = False,
    meshes: Sequence[Image | None] | None = None,
) -> Image:
    """Draw each face's box, label (:func:`face_label`) and emotion bars (and its mesh) onto ``image_bgr``.

    Draws in place and returns the image. Sizes scale with the frame (legible at 640x360). The bars and the mesh
    sit in a column beside the box (right, else left, clamped to the frame). ``held`` draws thinner boxes (faces
    carried over from an earlier processed frame). ``meshes`` holds one square BGR image (white background) or None
    per face. A face without emotions gets its box and label only.
    """
    annotators = (BoxAnnotator(held=held), PanelAnnotator(meshes), LabelAnnotator())
    for annotator in annotators:
        annotator.check(image_bgr, faces)
    for i, face in enumerate(faces):  # face by face: a later face's box, column and label cover an earlier face's
        for annotator in annotators:
            annotator.draw(image_bgr, face, i)
    return image_bgr


# ---------------------------------------------------------------------------------------------------------- meshes
class MeshRenderer:
    """Renders a face's coefficients (smoothed ones when the event has them) as a small mesh image.

    Reuses :func:`expnet_stream.models.mesh.mesh_from_coeffs` and :func:`~expnet_stream.models.mesh.render_mesh_image`
    (a software renderer, about 7-9 ms per image here); the last image of each track is reused while its
    coefficients do not change (held frames).
    """

    def __init__(self, basis_id: str, size: int) -> None:
        from ..models.mesh import load_expression_basis

        self.basis: ExpressionBasis = load_expression_basis(basis_id)
        self.size = size
        self.rendered = 0
        self._last: dict[int, tuple[bytes, Image]] = {}

    def render(self, face: Face) -> Image:
        from ..models.mesh import mesh_from_coeffs, render_mesh_image

        raw = face.coeffs_smoothed if face.coeffs_smoothed is not None else face.coeffs
        cached = self._last.get(face.track_id)
        if cached is not None and cached[0] == raw and face.track_id >= 0:
            return cached[1]
        smoothed = face.smoothed_coefficients
        coeffs = smoothed if smoothed is not None else face.coefficients
        vertices, triangles = mesh_from_coeffs(coeffs, self.basis)
        image = render_mesh_image(vertices, triangles, size=self.size)
        self.rendered += 1
        self._last[face.track_id] = (raw, image)
        return image


def mesh_size(width: int, height: int) -> int:
    """Side of the mesh image: 96 px at 360 px on the short side, 64 to 128 px."""
    return int(min(128, max(64, round(96 * min(width, height) / 360))))
