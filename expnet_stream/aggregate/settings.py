"""Settings of the temporal stage (tracking, smoothing, windows); a section of the worker settings.

In YAML::

    temporal:
      tracker: {enabled: true, iou_threshold: 0.3, max_misses: 5}
      smoothing: {kind: one_euro, min_cutoff_hz: 1.0, beta: 0.05}
      windows:
        - {kind: tumbling, size_s: 1.0}
        - {kind: sliding, size_s: 5.0, step_s: 1.0}
      per_track: true
      allowed_lateness_s: 0.5

Environment: ``EXPNET_TEMPORAL__SMOOTHING__KIND=ema``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .smoothing import SmoothingKind
from .windows import WindowSpec

#: The product's emotion classes (``models.emotion.EMOTIONS``); the loaded emotion output's own classes replace them.
DEFAULT_EMOTION_LABELS = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrackerSettings(_Section):
    enabled: bool = Field(True, description="assign track ids across frames; off: every face has track_id -1")
    iou_threshold: float = Field(0.3, gt=0.0, le=1.0, description="least IoU of predicted box and detection")
    max_misses: int = Field(5, ge=0, description="frames a track may go undetected (coasting) before it ends")
    min_hits: int = Field(1, ge=1, description="detections before a track gets an id (faces before get -1)")
    detect_every_n: int = Field(
        3,
        ge=1,
        description="run the detector on every n-th sampled frame (a full-frame pass that finds new faces) and carry "
        "tracks in between; with n > 1 it also runs when a trigger below fires",
    )
    redetect_on_keyframe: bool = Field(
        True,
        description="detect on the first sampled frame of each keyframe and re-anchor the tracks there (cuts are often "
        "keyframes; a replay after a takeover starts at one, so it rebuilds the same boxes)",
    )
    redetect_at_edge: bool = Field(
        True, description="detect when a visible track's predicted box crosses the frame edge"
    )
    redetect_below_score: float = Field(
        0.6, ge=0.0, le=1.0, description="detect when a visible track's last detection scored below this"
    )
    scene_cut_threshold: float = Field(
        20.0,
        ge=0.0,
        description="detect when the mean absolute difference of 64x36 grey thumbnails to the previous sampled "
        "frame exceeds this (0-255; 0 disables); consecutive frames of 12 real clips differ by at most 18",
    )
    refine_predicted: bool = Field(
        False,
        description="on frames between detections, run the detector on a small square around each track's predicted "
        "box (all of them batched) and use the face it finds there (quality flag 'refined'; 'predicted' where it "
        "finds none); costs a detector pass on at most refine_size x refine_size pixels per face",
    )
    refine_margin: float = Field(
        0.5, ge=0.0, le=2.0, description="margin around the predicted box for refining, in box sizes per side"
    )
    refine_size: int = Field(
        160, ge=32, le=640, multiple_of=32, description="side in pixels the refining square is scaled to"
    )


class SmoothingSettings(_Section):
    kind: SmoothingKind = Field("one_euro", description="'one_euro', 'ema' or 'none'; raw values stay available")
    min_cutoff_hz: float = Field(1.0, gt=0, description="One-Euro cutoff for a still face (lower: smoother)")
    beta: float = Field(0.05, ge=0, description="One-Euro speed coefficient (higher: less lag on fast changes)")
    d_cutoff_hz: float = Field(1.0, gt=0, description="One-Euro cutoff of the derivative estimate")
    half_life_s: float = Field(0.1, gt=0, description="EMA half-life in seconds of stream time")
    emotion_half_life_s: float = Field(
        0.5,
        ge=0,
        description="EMA half-life (s of stream time) of each track's emotion probabilities, published beside the "
        "raw ones as emotions_smoothed (0: not published). On the talking clips of the evaluation a 0.5 s half-life "
        "cut top-emotion flips per track-second about fourfold (model card)",
    )


class WindowSettings(_Section):
    kind: Literal["tumbling", "sliding"] = Field(description="tumbling (step = size) or sliding (overlapping)")
    size_s: float = Field(gt=0, description="window length in seconds of stream time")
    step_s: float | None = Field(None, gt=0, description="seconds between window starts; sliding windows only")

    @model_validator(mode="after")
    def _check(self) -> WindowSettings:
        self.spec()  # raises ConfigError (a ValueError) with the reason
        return self

    def spec(self) -> WindowSpec:
        step = self.size_s if self.kind == "tumbling" and self.step_s is None else self.step_s
        if step is None:
            raise ValueError("a sliding window needs step_s")
        return WindowSpec(self.kind, self.size_s, step)


class TemporalSettings(_Section):
    """Tracking, smoothing and event-time aggregates of the per-frame expressions."""

    enabled: bool = Field(True, description="run the temporal stage at all (off: no track ids, no aggregates)")
    tracker: TrackerSettings = TrackerSettings()
    smoothing: SmoothingSettings = SmoothingSettings()
    windows: list[WindowSettings] = Field(
        default_factory=lambda: [
            WindowSettings(kind="tumbling", size_s=1.0),
            WindowSettings(kind="sliding", size_s=5.0, step_s=1.0),
        ],
        description="windows to aggregate; empty: no aggregates",
    )
    per_track: bool = Field(True, description="aggregate each face track too, besides the whole stream")
    allowed_lateness_s: float = Field(
        0.5, ge=0, description="frames older than (newest pts_time - this) are late: counted, not aggregated"
    )
    emotion_labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EMOTION_LABELS),
        description="column order of the emotion probabilities given to the temporal stage",
    )

    def window_specs(self) -> list[WindowSpec]:
        return [w.spec() for w in self.windows]
