"""The one validated value type for faces passed between stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["Detections", "eye_roll_deg"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def eye_roll_deg(landmarks: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Roll of the eye line in degrees, ``(N,)``, from YuNet landmarks ``(N, 5, 2)`` (point 0: the eye on the image's
    left, point 1: the other): 0 when the eyes are level, positive when the image-right eye is lower.

    >>> eye_roll_deg([[[0, 0], [10, 10], [0, 0], [0, 0], [0, 0]]]).round(1).tolist()
    [45.0]
    """
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    d = lm[:, 1] - lm[:, 0]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0])).astype(np.float32)


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame.

    Attributes:
        xyxy: ``(N, 4)`` float32 boxes in pixels, ``x1, y1, x2, y2`` (x2/y2 exclusive).
        score: ``(N,)`` float32 detector confidence in ``[0, 1]``.
        track_id: ``(N,)`` int64 track ids, ``-1`` where no tracker assigned one.
        roll_deg: ``(N,)`` float32 roll of the eye line in degrees (0: level eyes, positive: the image-right eye is
            lower), from the detector's landmarks; NaN where unknown (a detector without landmarks). The tracker
            carries it to predicted boxes; a model whose contract levels the eyes is cropped by it.

    >>> d = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32))
    >>> len(d), d.size_wh.tolist()
    (1, [[10.0, 10.0]])
    >>> len(d[d.score > 0.95])
    0
    """

    xyxy: FloatArray
    score: FloatArray
    track_id: IntArray = field(default_factory=lambda: np.zeros((0,), np.int64))
    roll_deg: FloatArray = field(default_factory=lambda: np.zeros((0,), np.float32))

    def __post_init__(self) -> None:
        xyxy = (
            np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
            if np.size(self.xyxy)
            else np.zeros((0, 4), np.float32)
        )
        score = np.asarray(self.score, dtype=np.float32).reshape(-1)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"Detections.xyxy must have shape (N, 4), got {np.shape(self.xyxy)}")
        if score.shape != (xyxy.shape[0],):
            raise ValueError(f"Detections.score must have shape ({xyxy.shape[0]},), got {score.shape}")
        track = np.asarray(self.track_id, dtype=np.int64).reshape(-1)
        if track.size == 0 and xyxy.shape[0] > 0:
            track = np.full((xyxy.shape[0],), -1, np.int64)
        if track.shape != (xyxy.shape[0],):
            raise ValueError(f"Detections.track_id must have shape ({xyxy.shape[0]},), got {track.shape}")
        roll = np.asarray(self.roll_deg, dtype=np.float32).reshape(-1)
        if roll.size == 0 and xyxy.shape[0] > 0:
            roll = np.full((xyxy.shape[0],), np.nan, np.float32)
        if roll.shape != (xyxy.shape[0],):
            raise ValueError(f"Detections.roll_deg must have shape ({xyxy.shape[0]},), got {roll.shape}")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "track_id", track)
        object.__setattr__(self, "roll_deg", roll)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    @classmethod
    def merge(cls, parts: list[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.track_id for p in parts]),
            np.concatenate([p.roll_deg for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.intp] | slice) -> Detections:
        return Detections(self.xyxy[index], self.score[index], self.track_id[index], self.roll_deg[index])

    @property
    def size_wh(self) -> FloatArray:
        """``(N, 2)`` box width and height in pixels."""
        return (self.xyxy[:, 2:4] - self.xyxy[:, 0:2]).astype(np.float32)

    @property
    def area(self) -> FloatArray:
        wh = self.size_wh
        return (wh[:, 0] * wh[:, 1]).astype(np.float32)
