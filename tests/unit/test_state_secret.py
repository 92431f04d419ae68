"""Track states are trusted only from a known writer when the fleet has a ``state_secret``: the signature check itself
(the broker round trip is in ``tests/integration/test_no_record_stops.py``)."""

from __future__ import annotations

from expnet_stream.config.settings import WorkerSettings
from expnet_stream.events.codec import encode
from expnet_stream.events.schema import TrackState
from expnet_stream.worker.resume import STATE_MAC_HEADER, state_mac, state_signed
from expnet_stream.worker.state_topic import state_secret

VALUE = encode(TrackState(stream_id="s", frame_seq=3, pts_time=0.1, tracks=[], next_id=1, worker_id="w", sent_time=0))


def test_only_a_signature_under_the_secret_is_trusted() -> None:
    key = b"fleet"
    good = [(STATE_MAC_HEADER, state_mac(key, VALUE))]
    assert state_signed(key, VALUE, good)
    assert not state_signed(key, VALUE, None)
    assert not state_signed(key, VALUE, [(STATE_MAC_HEADER, state_mac(b"other", VALUE))])
    assert not state_signed(key, VALUE + b"\x00", good), "the signature covers the whole value"
    assert not state_signed(key, None, good)
    assert not state_signed(key, VALUE, good + good), "one signature, not a choice of several"
    assert not state_signed(key, VALUE, [("other-header", good[0][1])])


def test_the_secret_comes_from_the_settings_and_is_masked() -> None:
    settings = WorkerSettings(state_secret="s3cret")  # type: ignore[arg-type]
    assert state_secret(settings) == b"s3cret"
    assert "s3cret" not in str(settings.masked())
    assert state_secret(WorkerSettings()) is None
