"""The decoder memory budget (``decode.memory_mb``) on real H.264, without a broker: the stream table evicts the least
recently active streams' decoders to open a new one, an evicted stream's packets are refused until its next keyframe
(``decoder_evicted``), and a decoder larger than the whole budget is refused (``decoder_memory``)."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest

from expnet_stream.errors import DecodeError
from expnet_stream.events.schema import VideoPacket
from expnet_stream.video.decode import DecodeLimits
from expnet_stream.worker.streams import StreamState, StreamTable

W, H = 320, 240


def _gop(n: int = 3) -> list[tuple[bytes, bool]]:
    """``n`` frames of real H.264 (Annex B, one GOP): (packet bytes, keyframe)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with av.open(buf, "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "25", "bf": "0"}
        packets = []
        for _ in range(n):
            img = rng.integers(0, 255, (H, W, 3), np.uint8)
            packets += list(stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        packets += list(stream.encode(None))
    return [(bytes(p), bool(p.is_keyframe)) for p in packets]


def _pkt(sid: str, seq: int, data: bytes, key: bool) -> VideoPacket:
    return VideoPacket(
        stream_id=sid,
        seq=seq,
        pts=seq,
        dts=seq,
        time_base=(1, 25),
        keyframe=key,
        codec="h264",
        extradata=None,
        width=W,
        height=H,
        data=data,
        capture_time=time.time(),
    )


@pytest.fixture(scope="module")
def gop() -> list[tuple[bytes, bool]]:
    packets = _gop()
    assert packets[0][1] and not any(k for _, k in packets[1:])
    return packets


def test_a_new_decoder_evicts_the_least_recently_active_ones(gop: list[tuple[bytes, bool]]) -> None:
    one = DecodeLimits().memory_for(_pkt("x", 0, b"", True), threads=1)
    table = StreamTable(limits=DecodeLimits(memory_bytes=3 * one))
    flushed: list[str] = []
    table.on_evict = lambda st: flushed.append(st.stream_id)
    states: dict[str, StreamState] = {}
    for i, sid in enumerate("abcde"):
        states[sid] = table.open(sid, 0)
        states[sid].last_seen = float(i)  # a is the least recently active
        states[sid].decoder.decode(_pkt(sid, 0, *gop[0]))
        assert table.decoder_memory <= 3 * one
    assert table.decoders_evicted == 2 and flushed == ["a", "b"]
    assert [sid for sid, st in states.items() if st.decoder.memory_bytes] == ["c", "d", "e"]
    assert set(table.streams) == set("abcde"), "streams stay open; only their decoders are closed"

    # b was active again: its next P-frame is refused with the reason; its next keyframe reopens it (evicting c)
    with pytest.raises(DecodeError) as err:
        states["b"].decoder.decode(_pkt("b", 1, *gop[1]))
    assert err.value.reason == "decoder_evicted"
    states["b"].last_seen = 10.0
    states["b"].decoder.decode(_pkt("b", 3, *gop[0]))
    assert states["b"].decoder.memory_bytes == one and not states["b"].decoder.evicted
    assert flushed[-1] == "c" and table.decoder_memory <= 3 * one
    # the streams that kept their decoders decode on
    states["e"].decoder.decode(_pkt("e", 1, *gop[1]))


def test_a_decoder_larger_than_the_whole_budget_is_refused(gop: list[tuple[bytes, bool]]) -> None:
    table = StreamTable(limits=DecodeLimits(memory_bytes=1 << 20))
    state = table.open("big", 0)
    with pytest.raises(DecodeError) as err:
        state.decoder.decode(_pkt("big", 0, *gop[0]))
    assert err.value.reason == "decoder_memory"
    assert table.decoder_memory == 0


def test_without_a_budget_nothing_is_evicted(gop: list[tuple[bytes, bool]]) -> None:
    table = StreamTable(limits=DecodeLimits(memory_bytes=None))
    for sid in "abc":
        table.open(sid, 0).decoder.decode(_pkt(sid, 0, *gop[0]))
    assert table.decoders_evicted == 0 and all(st.decoder.memory_bytes for st in table.streams.values())
