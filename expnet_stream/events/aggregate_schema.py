"""Wire contract of the aggregate topic: one :class:`EmotionAggregate` per closed window (schema version 1).

Same conventions as :mod:`expnet_stream.events.schema`: a msgpack map with ``v`` and ``type`` envelope fields,
frozen models that forbid unknown fields, coefficient vectors as 29 packed little-endian float32 (116 bytes).
Times are stream (event) time in seconds, i.e. the frames' ``pts_time``, never wall clock, except
``publish_time``.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from .envelope import COEFF_DTYPE, NUM_COEFFS, _Event

WindowKind = Literal["tumbling", "sliding"]
ClosedBy = Literal["watermark", "end_of_stream", "revoke"]

STREAM_TRACK = -1
"""``track_id`` of an aggregate over every face of the stream (not one track)."""


class EmotionAggregate(_Event):
    """Expressions of one stream (``track_id == -1``) or one face track over one event-time window.

    ``coeff_mean``/``coeff_std`` are over every face counted in the window (population std).
    ``emotions`` is the mean emotion probability over faces that carried probabilities (``None`` when
    none did). ``dominant_emotion`` is the most frequent per-face top emotion and ``dominant_share``
    the fraction of those faces whose top emotion it is. ``stability`` is the temporal coherence of
    the coefficients within tracks, ``1 - min(1, MSSD / (2 * variance))`` (von Neumann ratio: 1 for
    slowly changing or constant coefficients, 0 for frame-to-frame changes as large as white noise);
    ``None`` when no track has 3 faces in the window.

    Version 2 adds ``partial`` and ``coverage`` (a version-1 aggregate reads as complete, coverage 1).
    """

    v: int = Field(2, description="schema version of this message")
    type: Literal["emotion_aggregate"] = "emotion_aggregate"
    event_id: str = Field(
        description="deterministic id from stream, track, window kind/size/step/start, first frame time and model: "
        "the same window re-emitted from the same frames gets the same id"
    )
    stream_id: str = Field(min_length=1, max_length=256, description="stream id; also the Kafka message key")
    track_id: int = Field(ge=-1, description="face track id within the stream; -1 = every face of the stream")
    window_kind: WindowKind
    window_start: float = Field(description="window start, stream time in seconds (inclusive)")
    window_end: float = Field(description="window end, stream time in seconds (exclusive)")
    window_step: float = Field(gt=0, description="seconds between window starts (= size for tumbling windows)")
    first_time: float = Field(description="pts_time of the earliest frame counted in the window")
    last_time: float = Field(description="pts_time of the latest frame counted in the window")
    frames: int = Field(ge=0, description="frames counted (stream: every processed frame; track: frames with it)")
    faces: int = Field(ge=0, description="faces counted")
    coeff_mean: bytes = Field(description="mean of the 29 coefficients, packed little-endian float32 (116 bytes)")
    coeff_std: bytes = Field(description="population std of the 29 coefficients, packed little-endian float32")
    emotions: dict[str, float] | None = Field(
        None,
        description="mean emotion probability per label, if any; the labels are the classes the model can tell (an "
        "emotion absent from them, e.g. 'contempt' for models trained on FER2013 labels alone, is unsupported, not "
        "improbable; the shipped model publishes all eight)",
    )
    dominant_emotion: str | None = Field(None, description="most frequent per-face top emotion")
    dominant_share: float | None = Field(None, ge=0.0, le=1.0, description="share of faces whose top emotion it is")
    stability: float | None = Field(
        None, ge=0.0, le=1.0, description="1 - min(1, MSSD / (2 var)) of coefficients within tracks; None if < 3"
    )
    late_frames: int = Field(ge=0, description="frames of the stream dropped as late so far (cumulative)")
    model_id: str
    publish_time: float = Field(description="unix time (s) the worker published this event")
    closed_by: ClosedBy = Field(description="why the window closed: watermark passed, end of stream, or revoke")
    partial: bool = Field(
        False,
        description="True when the worker did not see the start of the window's span: it took the stream over "
        "mid-window and could not rebuild the window from replay (frames before its first one are missing)",
    )
    coverage: float = Field(
        1.0, ge=0.0, le=1.0, description="share of the window's span the worker saw the stream for (1.0 unless partial)"
    )

    @field_validator("coeff_mean", "coeff_std")
    @classmethod
    def _coeff_size(cls, value: bytes) -> bytes:
        if len(value) != NUM_COEFFS * 4:
            raise ValueError(f"must be {NUM_COEFFS} float32 ({NUM_COEFFS * 4} bytes), got {len(value)} bytes")
        return value

    @property
    def mean_coefficients(self) -> npt.NDArray[np.float32]:
        """``coeff_mean`` as a float32 array of 29."""
        return np.frombuffer(self.coeff_mean, dtype=COEFF_DTYPE).astype(np.float32)

    @property
    def std_coefficients(self) -> npt.NDArray[np.float32]:
        """``coeff_std`` as a float32 array of 29."""
        return np.frombuffer(self.coeff_std, dtype=COEFF_DTYPE).astype(np.float32)


def aggregate_event_id(
    stream_id: str,
    track_id: int,
    kind: str,
    size_s: float,
    step_s: float,
    window_start: float,
    first_time: float,
    model_id: str,
) -> str:
    """Deterministic aggregate id.

    Besides the window (stream, track, kind, size, step, start) it hashes the first frame time, so a window
    split by a revoke (one part flushed by the old owner, the rest aggregated by the new one) gives two ids,
    while the same window aggregated again from the same frames (a replay after a crash) repeats its id.

    >>> a = aggregate_event_id("cam", -1, "tumbling", 1.0, 1.0, 3.0, 3.02, "m")
    >>> a == aggregate_event_id("cam", -1, "tumbling", 1.0, 1.0, 3.0, 3.02, "m"), a.startswith("cam:agg:-1:")
    (True, True)
    """
    start_ms = round(window_start * 1000)
    size_ms = round(size_s * 1000)
    step_ms = round(step_s * 1000)
    first_us = round(first_time * 1_000_000)
    key = f"{stream_id}\x00{track_id}\x00{kind}\x00{size_ms}\x00{step_ms}\x00{start_ms}\x00{first_us}\x00{model_id}"
    digest = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    return f"{stream_id}:agg:{track_id}:{kind[0]}{size_ms}/{step_ms}@{start_ms}:{digest}"
