"""Wire contracts: pydantic models of every message on the expnet topics (schema version 1).

Every message is a msgpack map with two envelope fields, ``v`` (schema version, int) and
``type`` (message kind, str), followed by the fields of its model. Binary fields travel as
msgpack ``bin``; expression coefficients as 29 packed little-endian float32 (116 bytes).
A reader needs only msgpack and the JSON Schemas exported in ``expnet_stream/events/schemas``.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .aggregate_schema import EmotionAggregate
from .envelope import COEFF_DTYPE as COEFF_DTYPE
from .envelope import NUM_COEFFS as NUM_COEFFS
from .envelope import SCHEMA_VERSION as SCHEMA_VERSION
from .envelope import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from .envelope import _Event

# Limits every numeric input field is validated against at the schema, so hostile values get a precise reason
# (the dead-letter ``detail`` names the field) instead of failing deep in the decoder.
MAX_DIMENSION = 16384
"""Largest frame width or height accepted (16K)."""
MAX_TIMESTAMP = 2**62
"""Largest |pts| / |dts| accepted (FFmpeg's int64, with headroom for the decoder's arithmetic)."""
MAX_EXTRADATA_BYTES = 1024 * 1024
"""Largest codec extradata accepted (real avcC/hvcC records are under a few KiB)."""
MAX_TIME_BASE = 2**31 - 1
"""Largest numerator or denominator of a time base or frame rate (FFmpeg's AVRational is int32)."""

IDLE = "idle"
"""``StreamEnd.reason`` of the marker a worker writes into the input topic for a stream that fell silent."""

_Positive32 = Annotated[int, Field(gt=0, le=MAX_TIME_BASE)]
TimeBase = Annotated[
    tuple[_Positive32, _Positive32],
    Field(description="time base as [numerator, denominator], both positive; seconds = pts * n / d"),
]
# wire integers are strict: a string such as "0" is refused, not coerced (what a sender meant is not guessed)
Timestamp = Annotated[int, Field(strict=True, ge=-MAX_TIMESTAMP, le=MAX_TIMESTAMP)]
Dimension = Annotated[int, Field(strict=True, ge=0, le=MAX_DIMENSION)]
UnixTime = Annotated[float, Field(allow_inf_nan=False)]
MAX_TRACK_ID = 2**31 - 1
TrackId = Annotated[int, Field(strict=True, ge=0, le=MAX_TRACK_ID)]
"""A track id a worker hands over (a forged state with ids near 2**63 is refused, not trusted)."""
CodecName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
Session = Annotated[
    str | None,
    Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the ingest session that sent it (one per stream per ingester run); a live stream refuses "
        "control records and packets of another session. Since v2; None: a sender without sessions",
    ),
]


class StreamStart(_Event):
    """Control message on the input topic: a stream begins (sent before its first packet)."""

    v: int = Field(2, description="schema version of this message")
    type: Literal["stream_start"] = "stream_start"
    stream_id: str = Field(min_length=1, max_length=256, description="stream id; also the Kafka message key")
    session: Session = None
    codec: CodecName = Field(description="FFmpeg codec name of the packets, e.g. 'h264'")
    width: Dimension
    height: Dimension
    time_base: TimeBase
    frame_rate: tuple[_Positive32, _Positive32] | None = Field(
        None, description="average frame rate as [num, den], if known"
    )
    extradata: bytes | None = Field(
        None, max_length=MAX_EXTRADATA_BYTES, description="codec extradata (e.g. avcC) for decoders"
    )
    source: str = Field(
        "", description="where the ingester read the stream from (file name or URL, credentials removed)"
    )
    sent_time: UnixTime = Field(description="unix time (s) when the ingester sent this message")


class VideoPacket(_Event):
    """One encoded video packet on the input topic; key = stream id."""

    v: int = Field(2, description="schema version of this message")
    type: Literal["packet"] = "packet"
    stream_id: str = Field(min_length=1, max_length=256)
    session: Session = None
    seq: int = Field(
        strict=True,
        ge=0,
        lt=MAX_TIMESTAMP,
        description="packet sequence number within the stream, from 0, in decode order",
    )
    pts: Timestamp | None = Field(description="presentation timestamp in time_base units")
    dts: Timestamp | None = Field(description="decode timestamp in time_base units")
    time_base: TimeBase
    keyframe: bool
    codec: CodecName
    extradata: bytes | None = Field(None, max_length=MAX_EXTRADATA_BYTES, description="codec extradata; on keyframes")
    width: Dimension
    height: Dimension
    data: bytes = Field(description="the encoded packet bytes")
    capture_time: UnixTime = Field(description="unix time (s) when the packet entered the pipeline (ingest)")


class StreamEnd(_Event):
    """Control message on the input topic: no more packets for this stream."""

    v: int = Field(2, description="schema version of this message")
    type: Literal["stream_end"] = "stream_end"
    stream_id: str = Field(min_length=1, max_length=256)
    session: Session = None
    packets: int = Field(
        strict=True, ge=0, le=MAX_TIMESTAMP, description="number of packets the ingester sent for this stream"
    )
    reason: str = Field(
        "eof",
        max_length=2000,
        description="'eof'; or why the stream stopped: 'stopped', 'interrupted', 'terminated', 'error: ...' from the "
        "ingester, 'idle' when a worker closed a silent stream (then ``packets`` is the last packet seq it saw + 1)",
    )
    sent_time: UnixTime


class TrackState(_Event):
    """Control record a worker writes into the input partition it owns: the face tracks of one stream after a frame.

    A worker that takes the partition over finds the last one before the committed position, replays from a
    keyframe before that frame, and renames the tracks it rebuilds to these ids, so track ids survive a
    takeover. Not an ingester message; other readers of the input topic skip it.
    """

    type: Literal["track_state"] = "track_state"
    stream_id: str = Field(min_length=1, max_length=256)
    frame_seq: int = Field(ge=0, description="frame_seq of the frame these tracks are the state after")
    pts_time: float = Field(allow_inf_nan=False, description="that frame's pts_time")
    tracks: list[tuple[TrackId, float, float, float, float]] = Field(
        max_length=1024, description="[track id, x1, y1, x2, y2] of the frame's tracked faces"
    )
    next_id: TrackId = Field(description="the id the stream's next new track gets")
    worker_id: str
    sent_time: UnixTime


class Face(BaseModel):
    """One face in a frame event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    track_id: int = Field(description="track id within the stream; -1 when not tracked")
    box: tuple[float, float, float, float] = Field(description="face box x1, y1, x2, y2 in frame pixels")
    score: float = Field(ge=0.0, le=1.0, description="detector confidence")
    coeffs: bytes = Field(description="29 expression coefficients, packed little-endian float32 (116 bytes)")
    coeffs_smoothed: bytes | None = Field(
        None, description="the coefficients smoothed over the face's track (same packing); None when not smoothed"
    )
    emotions: dict[str, float] | None = Field(
        None,
        description="calibrated emotion probabilities (sum 1) keyed by class, when an emotion output is loaded. The "
        "keys are the classes the model can tell; an emotion absent from the keys is UNSUPPORTED by this model, not "
        "improbable. The shipped model (FER+ votes) publishes all eight: anger, contempt, disgust, fear, happiness, "
        "neutral, sadness, surprise; models trained on FER2013 labels alone publish seven (no 'contempt')",
    )
    emotions_smoothed: dict[str, float] | None = Field(
        None,
        description="the face's emotion probabilities smoothed over its track (exponential, half-life "
        "temporal.smoothing.emotion_half_life_s of stream time; same keys, sum 1): steadier than 'emotions' while "
        "the face talks. None for untracked faces, without an emotion output, or with smoothing off. Since frame v2",
    )
    quality: list[str] = Field(default_factory=list, description="quality flags, e.g. 'small_face', 'clipped'")

    @field_validator("coeffs", "coeffs_smoothed")
    @classmethod
    def _coeff_size(cls, value: bytes | None) -> bytes | None:
        if value is not None and len(value) != NUM_COEFFS * 4:
            raise ValueError(f"coeffs must be {NUM_COEFFS} float32 ({NUM_COEFFS * 4} bytes), got {len(value)} bytes")
        return value

    @property
    def coefficients(self) -> npt.NDArray[np.float32]:
        """The 29 coefficients as a float32 array."""
        return np.frombuffer(self.coeffs, dtype=COEFF_DTYPE).astype(np.float32)

    @property
    def smoothed_coefficients(self) -> npt.NDArray[np.float32] | None:
        """The smoothed coefficients as a float32 array, or None."""
        if self.coeffs_smoothed is None:
            return None
        return np.frombuffer(self.coeffs_smoothed, dtype=COEFF_DTYPE).astype(np.float32)


class FrameEvent(_Event):
    """Per-frame expressions on the expressions topic; one per processed frame, even with no face.

    Version 2 adds ``emotions_smoothed`` to each face; a version-1 frame reads with it None.
    """

    v: int = Field(2, description="schema version of this message")
    type: Literal["frame"] = "frame"
    event_id: str = Field(description="deterministic id: same stream, frame pts and model give the same id")
    stream_id: str
    frame_seq: int = Field(ge=0, description="index of the frame among the stream's decoded frames, presentation order")
    pts: int | None
    time_base: TimeBase
    pts_time: float = Field(description="presentation time in seconds (pts * time_base)")
    capture_time: float = Field(description="unix time (s) the frame's packet entered the pipeline")
    publish_time: float = Field(description="unix time (s) the worker published this event")
    width: int
    height: int
    model_id: str = Field(description="model name and weights tag; contains 'UNTRAINED' for untrained weights")
    model_trained: bool = Field(description="False when the weights are untrained: coefficients are then meaningless")
    basis_id: str = Field(description="expression basis the coefficients refer to")
    faces: list[Face]
    source_partition: int = Field(-1, description="input partition of the frame's packet")
    source_offset: int = Field(-1, description="input offset of the frame's packet")


class StreamSummary(_Event):
    """Published on the expressions topic after a stream's end-of-stream marker was processed.

    Version 2 adds ``end_reason``; a version-1 summary reads with ``end_reason="eof"``.
    """

    v: int = Field(2, description="schema version of this message")
    type: Literal["stream_summary"] = "stream_summary"
    event_id: str
    stream_id: str
    packets: int = Field(ge=0, description="packets consumed for the stream by this worker")
    packets_skipped: int = Field(ge=0, description="packets not decodable (e.g. before the first keyframe)")
    frames_decoded: int = Field(ge=0)
    frames_sampled: int = Field(ge=0, description="frames that got a FrameEvent")
    frames_with_faces: int = Field(ge=0)
    faces: int = Field(ge=0)
    model_id: str
    publish_time: float
    end_reason: str = Field(
        "eof",
        description="why the stream ended: the reason of its stream_end ('eof', 'interrupted', 'error: ...'), or "
        "'idle' when the worker closed it after the idle timeout",
    )


class DeadLetter(_Event):
    """Input that could not be processed, with the reason; on the dead-letter topic.

    The letter copies the record's key and value up to the worker's limits (``dlq_max_key_bytes``,
    ``dlq_max_value_bytes``); a bigger one keeps its size and SHA-256 instead, so a letter always fits the broker.
    Version 2 adds ``key_size``, ``key_sha256`` and ``value_sha256``; a version-1 letter reads with them None.
    """

    v: int = Field(2, description="schema version of this message")
    type: Literal["dead_letter"] = "dead_letter"
    reason: str = Field(description="machine-readable reason code, e.g. 'bad_msgpack', 'unknown_version'")
    detail: str = Field(description="human-readable explanation")
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None = Field(description="the original key, or None when larger than the DLQ limit")
    key_size: int | None = Field(None, ge=0, description="size of the original key in bytes (None: no key)")
    key_sha256: str | None = Field(None, description="SHA-256 (hex) of the original key when it is not copied")
    value: bytes | None = Field(description="the original bytes, or None when larger than the DLQ limit")
    value_size: int = Field(ge=0)
    value_sha256: str | None = Field(None, description="SHA-256 (hex) of the original value when it is not copied")
    stream_id: str | None = None
    worker_id: str
    time: float


InputMessage = StreamStart | VideoPacket | StreamEnd
OutputMessage = FrameEvent | StreamSummary
AnyEvent = StreamStart | VideoPacket | StreamEnd | TrackState | FrameEvent | StreamSummary | DeadLetter

EVENT_TYPES: dict[str, type[_Event]] = {
    "stream_start": StreamStart,
    "packet": VideoPacket,
    "stream_end": StreamEnd,
    "track_state": TrackState,
    "frame": FrameEvent,
    "stream_summary": StreamSummary,
    "dead_letter": DeadLetter,
    "emotion_aggregate": EmotionAggregate,
}


def frame_event_id(stream_id: str, pts: int | None, frame_seq: int, model_id: str) -> str:
    """Deterministic event id: the same frame processed twice by the same model gets the same id."""
    anchor = f"pts={pts}" if pts is not None else f"seq={frame_seq}"
    digest = hashlib.blake2b(f"{stream_id}\x00{anchor}\x00{model_id}".encode(), digest_size=12).hexdigest()
    return f"{stream_id}:{anchor}:{digest}"


def pack_coeffs(values: npt.ArrayLike) -> bytes:
    """Pack 29 coefficients as little-endian float32 bytes."""
    arr = np.asarray(values, dtype=COEFF_DTYPE).reshape(-1)
    if arr.shape != (NUM_COEFFS,):
        raise ValueError(f"expected {NUM_COEFFS} coefficients, got shape {arr.shape}")
    return arr.tobytes()
