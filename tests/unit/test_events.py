"""Schema round trips, version checks and the exported JSON Schemas."""

from __future__ import annotations

import hashlib
import json

import msgpack
import numpy as np
import pytest

from expnet_stream.errors import SchemaError
from expnet_stream.events.codec import SCHEMA_DIR, decode, decode_as, encode, json_schemas, to_jsonable
from expnet_stream.events.schema import (
    DeadLetter,
    Face,
    FrameEvent,
    StreamEnd,
    StreamStart,
    StreamSummary,
    VideoPacket,
    frame_event_id,
    pack_coeffs,
)

pytestmark = pytest.mark.unit

NOW = 1_790_000_000.5
COEFFS = np.linspace(-1, 1, 29, dtype=np.float32)


def _face() -> Face:
    return Face(track_id=3, box=(1.0, 2.0, 30.5, 40.0), score=0.9, coeffs=pack_coeffs(COEFFS), quality=["clipped"])


EXAMPLES = [
    StreamStart(
        stream_id="cam",
        codec="h264",
        width=640,
        height=360,
        time_base=(1, 24000),
        frame_rate=(24000, 1001),
        extradata=b"\x01\x64",
        source="x.mp4",
        sent_time=NOW,
    ),
    VideoPacket(
        stream_id="cam",
        seq=7,
        pts=1001,
        dts=0,
        time_base=(1, 24000),
        keyframe=True,
        codec="h264",
        extradata=b"\x01",
        width=640,
        height=360,
        data=b"\x00\x00\x01\x65",
        capture_time=NOW,
    ),
    StreamEnd(stream_id="cam", packets=10, sent_time=NOW),
    FrameEvent(
        event_id="e1",
        stream_id="cam",
        frame_seq=0,
        pts=0,
        time_base=(1, 25),
        pts_time=0.0,
        capture_time=NOW,
        publish_time=NOW + 0.1,
        width=640,
        height=360,
        model_id="m@UNTRAINED",
        model_trained=False,
        basis_id="none",
        faces=[_face()],
    ),
    StreamSummary(
        event_id="s",
        stream_id="cam",
        packets=1,
        packets_skipped=0,
        frames_decoded=1,
        frames_sampled=1,
        frames_with_faces=1,
        faces=1,
        model_id="m",
        publish_time=NOW,
    ),
    DeadLetter(
        reason="bad_message",
        detail="x",
        source_topic="t",
        source_partition=0,
        source_offset=5,
        key=b"k",
        value=b"\xc1",
        value_size=1,
        worker_id="w",
        time=NOW,
    ),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_round_trip(event: object) -> None:
    data = encode(event)  # type: ignore[arg-type]
    assert decode(data) == event
    raw = msgpack.unpackb(data)
    assert raw["v"] == type(event).model_fields["v"].default and raw["type"] == event.type  # type: ignore[attr-defined]


def test_coefficients_are_packed_little_endian_float32() -> None:
    raw = msgpack.unpackb(encode(EXAMPLES[3]))
    packed = raw["faces"][0]["coeffs"]
    assert isinstance(packed, bytes) and len(packed) == 116
    np.testing.assert_array_equal(np.frombuffer(packed, "<f4"), COEFFS)
    assert decode_as(encode(EXAMPLES[3]), FrameEvent).faces[0].coefficients.dtype == np.float32


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1garbage", "not a msgpack"),
        (msgpack.packb([1, 2]), "expected a msgpack map"),
        (msgpack.packb({"v": 3, "type": "packet"}), "unknown schema version 3"),
        (msgpack.packb({"type": "packet"}), "unknown schema version None"),
        (msgpack.packb({"v": [1], "type": "packet"}), r"unknown schema version \[1\]"),  # unhashable: no TypeError
        (msgpack.packb({"v": {"a": 1}, "type": "packet"}), "unknown schema version"),
        (msgpack.packb({"v": True, "type": "packet"}), "unknown schema version True"),
        (msgpack.packb({"v": 1, "type": ["packet"]}), "unknown message type"),
        (msgpack.packb({"v": 1, "type": "nope"}), "unknown message type"),
        (msgpack.packb({"v": 1, "type": "packet", "stream_id": "a"}), "invalid packet message"),
        (msgpack.packb({"v": 1, "type": "frame", "extra": 1}), "invalid frame message"),
    ],
)
def test_bad_messages_raise_schema_error(payload: bytes, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        decode(payload)


def test_wrong_coefficient_count_rejected() -> None:
    with pytest.raises(ValueError, match="29 float32"):
        Face(track_id=0, box=(0, 0, 1, 1), score=0.5, coeffs=b"\x00" * 8)
    with pytest.raises(ValueError, match="expected 29"):
        pack_coeffs(np.zeros(28))


def test_decode_as_checks_the_type() -> None:
    with pytest.raises(SchemaError, match="expected a FrameEvent"):
        decode_as(encode(EXAMPLES[2]), FrameEvent)


def test_event_id_is_deterministic() -> None:
    a = frame_event_id("cam", 1001, 1, "m")
    assert a == frame_event_id("cam", 1001, 99, "m")
    assert a != frame_event_id("cam", 2002, 1, "m") != frame_event_id("cam", 1001, 1, "other")


def test_exported_json_schemas_are_current_and_validate_real_messages() -> None:
    import jsonschema

    for name, schema in json_schemas().items():
        path = SCHEMA_DIR / name
        assert path.is_file(), f"missing {path}: run `expnet-stream schema`"
        assert json.loads(path.read_text()) == schema, f"{path} is stale: run `expnet-stream schema`"
    # a reader with plain msgpack + JSON Schema accepts our messages (bytes shown as JSON strings here)
    for ev in EXAMPLES:
        schema = json.loads((SCHEMA_DIR / f"{ev.type}.v{ev.v}.json").read_text())
        jsonschema.validate(json.loads(json.dumps(to_jsonable(ev) if ev.type != "frame" else _b64_faces(ev))), schema)


def _b64_faces(ev: FrameEvent) -> dict[str, object]:
    import base64

    data = to_jsonable(ev)
    for f, face in zip(data["faces"], ev.faces, strict=True):
        f["coeffs"] = base64.b64encode(face.coeffs).decode()
    return data


def test_to_jsonable_gives_float_coefficients() -> None:
    data = to_jsonable(EXAMPLES[3])
    assert data["faces"][0]["coeffs"][0] == pytest.approx(-1.0)
    assert len(data["faces"][0]["coeffs"]) == 29
    json.dumps(data)


def test_a_forged_track_state_with_absurd_ids_is_refused() -> None:
    """Track ids a takeover would adopt are bounded (issue 22: a forged state once set ids near 2**63)."""
    from expnet_stream.events.schema import MAX_TRACK_ID, TrackState

    ok = {"stream_id": "s", "frame_seq": 1, "pts_time": 0.0, "tracks": [(3, 0, 0, 5, 5)], "next_id": 4}
    state = TrackState(**ok, worker_id="w", sent_time=0.0)
    assert decode(encode(state)) == state
    for bad in ({"next_id": 2**63 - 3}, {"tracks": [(MAX_TRACK_ID + 1, 0, 0, 5, 5)]}, {"tracks": [(-2, 0, 0, 5, 5)]}):
        raw = msgpack.packb({**state.model_dump(), **bad, "v": 1}, use_bin_type=True)
        with pytest.raises(SchemaError) as err:
            decode(raw)
        assert err.value.reason == "invalid_fields"


def test_a_dead_letter_keeps_the_size_and_hash_of_what_it_does_not_copy() -> None:
    from expnet_stream.config.settings import WorkerSettings
    from expnet_stream.worker.publisher import letter_key, make_dead_letter
    from expnet_stream.worker.streams import Source

    settings = WorkerSettings(dlq_max_key_bytes=4, dlq_max_value_bytes=4)
    key, value = b"k" * 9, b"v" * 9
    letter = make_dead_letter("in", Source(0, 1), "not_msgpack", "d", None, key=key, value=value, settings=settings)
    assert letter.key is None and letter.key_size == 9 and letter.key_sha256 == hashlib.sha256(key).hexdigest()
    assert letter.value is None and letter.value_size == 9 and letter.value_sha256 == hashlib.sha256(value).hexdigest()
    assert len(encode(letter)) < 600 and decode(encode(letter)) == letter
    assert letter_key("cam", key, 4) == b"cam" and letter_key(None, b"ab", 4) == b"ab"
    assert letter_key(None, key, 4) == hashlib.sha256(key).hexdigest().encode()
