"""Event-time windows on hand-built sequences: boundaries, late frames, end of stream, revoke, sliding overlap,
no double emission, deterministic ids; the aggregate event model; the temporal stage as the pipeline calls it."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from pydantic import ValidationError

from expnet_stream.aggregate import StreamTemporal, TemporalSettings, WindowAggregator, WindowSpec
from expnet_stream.errors import ConfigError
from expnet_stream.events.aggregate_schema import EmotionAggregate
from expnet_stream.events.codec import encode
from expnet_stream.faces.detections import Detections

pytestmark = pytest.mark.unit

LABELS = ["neutral", "happy", "sad"]


def agg(*specs: WindowSpec, lateness: float = 0.0, per_track: bool = False) -> WindowAggregator:
    return WindowAggregator(
        list(specs), "model@test", labels=LABELS, per_track=per_track, allowed_lateness_s=lateness, clock=lambda: 1e9
    )


def face(value: float = 0.0) -> np.ndarray:
    return np.full((1, 29), value, np.float32)


def feed(a: WindowAggregator, times: list[float], stream: str = "s", value: float = 0.0) -> list[EmotionAggregate]:
    out: list[EmotionAggregate] = []
    for t in times:
        out += a.on_frame(stream, t, [0], face(value))
    return out


def test_tumbling_boundaries_are_exact() -> None:
    a = agg(WindowSpec.tumbling(0.1))
    closed = feed(a, [0.0, 0.1, 0.2, 0.3, 0.30000001])  # 0.3 is not in [0.2, 0.3) despite float rounding
    assert [(x.window_start, x.window_end, x.frames) for x in closed] == [(0.0, 0.1, 1), (0.1, 0.2, 1), (0.2, 0.3, 1)]
    assert all(x.closed_by == "watermark" for x in closed)
    rest = a.flush("s")
    assert [(x.window_start, x.frames, x.closed_by) for x in rest] == [(0.3, 2, "end_of_stream")]


def test_window_closes_when_watermark_reaches_end() -> None:
    a = agg(WindowSpec.tumbling(1.0), lateness=0.25)
    assert feed(a, [0.0, 0.5, 0.99, 1.1, 1.2]) == []  # watermark 0.95 < 1.0
    closed = feed(a, [1.25])  # watermark 1.0
    assert [(x.window_start, x.frames, x.first_time, x.last_time) for x in closed] == [(0.0, 3, 0.0, 0.99)]


def test_late_frames_counted_not_added_and_out_of_order_within_lateness_added() -> None:
    a = agg(WindowSpec.tumbling(1.0), lateness=0.2)
    feed(a, [0.0, 0.5, 1.1])  # watermark 0.9
    assert feed(a, [0.95]) == []  # out of order but within the lateness: counted in [0, 1)
    closed = feed(a, [1.3])  # watermark 1.1 closes [0, 1)
    assert [(x.window_start, x.frames, x.late_frames) for x in closed] == [(0.0, 3, 0)]
    assert feed(a, [0.99]) == []  # older than the watermark: late, in no window
    assert a.late_frames("s") == 1
    rest = a.flush("s")
    assert [(x.window_start, x.frames, x.late_frames) for x in rest] == [(1.0, 2, 1)]


def test_end_of_stream_flush_once_and_forgets_stream() -> None:
    a = agg(WindowSpec.tumbling(1.0), WindowSpec.sliding(2.0, 1.0))
    feed(a, [0.0, 0.5])
    feed(a, [0.2], stream="other")
    first = a.flush("s")
    assert {(x.window_kind, x.window_start) for x in first} == {("tumbling", 0.0), ("sliding", 0.0)}
    assert all(x.closed_by == "end_of_stream" for x in first)
    assert a.flush("s") == [] and a.open_windows("s") == 0
    assert a.streams == ["other"]


def test_revoke_closes_all_streams_with_reason() -> None:
    a = agg(WindowSpec.tumbling(1.0))
    feed(a, [0.0], stream="a")
    feed(a, [3.0], stream="b")
    out = a.flush_all("revoke")
    assert sorted((x.stream_id, x.closed_by) for x in out) == [("a", "revoke"), ("b", "revoke")]
    assert a.streams == []


def test_sliding_overlap_counts() -> None:
    a = agg(WindowSpec.sliding(2.0, 1.0))
    times = [round(0.1 * i, 1) for i in range(40)]  # 0.0 .. 3.9
    out = feed(a, times) + a.flush("s")
    got = [(x.window_start, x.window_end, x.frames) for x in out]
    # no warm-up windows before the first frame: [0, 2), [1, 3), [2, 4), [3, 5)
    assert got == [(0.0, 2.0, 20), (1.0, 3.0, 20), (2.0, 4.0, 20), (3.0, 5.0, 10)]
    assert [x.closed_by for x in out] == ["watermark", "watermark", "end_of_stream", "end_of_stream"]
    assert all(x.window_step == 1.0 and x.window_kind == "sliding" for x in out)


def test_windows_start_at_first_frame_less_lateness() -> None:
    a = agg(WindowSpec.sliding(2.0, 1.0), lateness=1.0)
    feed(a, [1.5, 0.8])  # origin 0.5 -> windows from k = 0 on; 0.8 is not late
    out = a.flush("s")
    assert sorted((x.window_start, x.frames) for x in out) == [(0.0, 2), (1.0, 1)]
    b = agg(WindowSpec.sliding(2.0, 1.0), lateness=0.5)
    feed(b, [0.0, 0.3])  # a stream at 0 s gets no window starting before 0
    assert sorted((x.window_start, x.frames) for x in b.flush("s")) == [(0.0, 2)]
    c = agg(WindowSpec.sliding(2.0, 1.0), lateness=0.5)
    feed(c, [-0.2, 0.5])  # negative stream times are windowed like any others
    assert sorted((x.window_start, x.frames) for x in c.flush("s")) == [(-1.0, 2), (0.0, 1)]


def test_no_double_emission_and_deterministic_ids() -> None:
    rng = np.random.default_rng(1)
    times = np.sort(rng.uniform(0, 10, 200))
    times[50:60] = times[50:60][::-1]  # some disorder
    tids = rng.integers(0, 3, 200)

    def run() -> list[EmotionAggregate]:
        a = agg(WindowSpec.tumbling(1.0), WindowSpec.sliding(3.0, 0.5), lateness=0.1, per_track=True)
        out: list[EmotionAggregate] = []
        for t, k in zip(times, tids, strict=True):
            out += a.on_frame("s", float(t), [int(k)], face(float(t)))
        return out + a.flush("s")

    one, two = run(), run()
    ids = [x.event_id for x in one]
    assert len(ids) == len(set(ids))
    keys = [(x.track_id, x.window_kind, x.window_step, x.window_start) for x in one]
    assert len(keys) == len(set(keys))
    assert ids == [x.event_id for x in two]
    # every frame that was not late is counted once per tumbling window
    late = one[-1].late_frames
    assert sum(x.frames for x in one if x.window_kind == "tumbling" and x.track_id == -1) == 200 - late


def test_split_window_gets_distinct_ids() -> None:
    a = agg(WindowSpec.tumbling(1.0))
    feed(a, [0.1, 0.2])
    before = a.flush("s", "revoke")
    feed(a, [0.6, 0.7])  # the next owner continues the same window
    after = a.flush("s")
    assert before[0].window_start == after[0].window_start == 0.0
    assert before[0].event_id != after[0].event_id


def test_statistics_stream_and_track_windows() -> None:
    a = agg(WindowSpec.tumbling(1.0), per_track=True)
    rng = np.random.default_rng(2)
    c = rng.standard_normal((6, 29)).astype(np.float32)
    emo = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    a.on_frame("s", 0.0, [0, 1], c[0:2], emo[0:2])
    a.on_frame("s", 0.1, [], np.zeros((0, 29)))  # a faceless frame counts as a frame
    a.on_frame("s", 0.2, [0], c[2:3], emo[2:3])
    a.on_frame("s", 0.3, [0, -1], c[3:5])  # no emotions for this frame; an untracked face
    out = {x.track_id: x for x in a.flush("s")}
    assert set(out) == {-1, 0, 1}
    s = out[-1]
    assert (s.frames, s.faces) == (4, 5)
    np.testing.assert_allclose(s.mean_coefficients, c[:5].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.std_coefficients, c[:5].std(axis=0), rtol=1e-4, atol=1e-5)
    assert s.emotions == pytest.approx(dict(zip(LABELS, emo.mean(axis=0), strict=True)))
    assert (s.dominant_emotion, s.dominant_share) == ("neutral", pytest.approx(2 / 3))
    t0 = out[0]
    assert (t0.frames, t0.faces) == (3, 3)
    np.testing.assert_allclose(t0.mean_coefficients, c[[0, 2, 3]].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert t0.dominant_emotion == "neutral" and t0.dominant_share == pytest.approx(1.0)
    assert (out[1].frames, out[1].dominant_emotion) == (1, "happy")


def test_no_emotions_gives_none_and_faceless_window_zeros() -> None:
    a = agg(WindowSpec.tumbling(1.0))
    a.on_frame("s", 0.0, [0], face(1.0))
    (first,) = a.on_frame("s", 1.5, [], np.zeros((0, 29)))
    (second,) = a.flush("s")
    assert first.emotions is None and first.dominant_emotion is None and first.dominant_share is None
    assert (second.frames, second.faces) == (1, 0)
    assert not second.mean_coefficients.any() and second.stability is None


def test_stability_constant_noise_and_ramp() -> None:
    rng = np.random.default_rng(3)
    n = 60
    series = {
        "const": np.ones((n, 29)),
        "noise": rng.standard_normal((n, 29)),
        "ramp": np.linspace(0, 1, n)[:, None] * np.ones((1, 29)),
    }
    got = {}
    for name, c in series.items():
        a = agg(WindowSpec.tumbling(10.0))
        for i in range(n):
            a.on_frame("s", i / 30, [0], c[i : i + 1])
        got[name] = a.flush("s")[0].stability
    assert got["const"] == 1.0
    assert got["noise"] is not None and got["noise"] < 0.2
    assert got["ramp"] is not None and got["ramp"] > 0.99


def test_window_spec_validation() -> None:
    with pytest.raises(ConfigError):
        WindowSpec("tumbling", 1.0, 0.5)
    with pytest.raises(ConfigError):
        WindowSpec.sliding(1.0, 2.0)
    with pytest.raises(ConfigError):
        WindowSpec.tumbling(0.0)
    with pytest.raises(ValidationError):
        TemporalSettings.model_validate({"windows": [{"kind": "sliding", "size_s": 2.0}]})
    ts = TemporalSettings.model_validate({"windows": [{"kind": "tumbling", "size_s": 2.0}]})
    assert ts.window_specs() == [WindowSpec.tumbling(2.0)]


def test_bad_shapes_raise() -> None:
    a = agg(WindowSpec.tumbling(1.0))
    with pytest.raises(ValueError, match="track_ids"):
        a.on_frame("s", 0.0, [0, 1], face())
    with pytest.raises(ValueError, match="emotions"):
        a.on_frame("s", 0.0, [0], face(), np.ones((1, 5)))


def test_emotion_aggregate_model_roundtrip_and_schema() -> None:
    a = agg(WindowSpec.tumbling(1.0))
    a.on_frame("s", 0.0, [0], face(0.5), [[0.1, 0.8, 0.1]])
    (ev,) = a.flush("s")
    obj = msgpack.unpackb(encode(ev), raw=False)
    assert obj["v"] == 2 and obj["type"] == "emotion_aggregate" and isinstance(obj["coeff_mean"], bytes)
    assert EmotionAggregate.model_validate(obj) == ev
    schema = EmotionAggregate.model_json_schema()
    assert "coeff_mean" in schema["properties"] and schema["properties"]["type"]["const"] == "emotion_aggregate"
    with pytest.raises(ValidationError):
        EmotionAggregate.model_validate({**obj, "coeff_mean": b"\x00" * 8})
    with pytest.raises(ValidationError):
        EmotionAggregate.model_validate({**obj, "extra": 1})


def test_stream_temporal_as_the_pipeline_calls_it() -> None:
    settings = TemporalSettings.model_validate(
        {"windows": [{"kind": "tumbling", "size_s": 1.0}], "allowed_lateness_s": 0.0, "emotion_labels": LABELS}
    )
    st = StreamTemporal(settings, model_id="m")
    closed = []
    for f in range(30):
        t = f / 20
        d = Detections(np.array([[10 + f, 10, 70 + f, 70], [300, 10, 360, 70]], np.float32), np.full(2, 0.9))
        raw = np.full((2, 29), float(f % 2), np.float32)  # alternating: jittery
        res = st.on_frame("cam", t, d, raw, np.tile([0.2, 0.7, 0.1], (2, 1)))
        assert res.track_ids.tolist() == [0, 1]
        assert np.all(raw == float(f % 2))  # raw untouched
        if f > 5:
            assert 0.2 < res.smoothed[0, 0] < 0.8  # smoothed away from the 0/1 extremes
        closed += res.aggregates
    assert [(x.track_id, x.window_start, x.frames) for x in closed] == [(-1, 0.0, 20), (0, 0.0, 20), (1, 0.0, 20)]
    assert closed[0].dominant_emotion == "happy"
    # the stream's tracker and smoother exist until its end; revoke of another stream leaves it alone
    assert st.on_revoke(["nope"]) == [] and st.streams == ["cam"]
    end = st.on_end("cam")
    assert {x.closed_by for x in end} == {"end_of_stream"} and st.streams == []
    # predict/track at detection time, then on_frame(track=False)
    d = Detections(np.array([[10, 10, 70, 70]], np.float32), np.array([0.9], np.float32))
    tracked = st.track("cam2", 0.0, d)
    st.on_frame("cam2", 0.0, tracked, np.zeros((1, 29)), track=False)
    p = st.predict("cam2", 0.05)
    assert p.track_id.tolist() == tracked.track_id.tolist() == [0]
    assert st.detect_due(0) and not st.detect_due(1) and st.detect_due(3)  # detect_every_n defaults to 3
    revoked = st.on_revoke(["cam2"])
    assert revoked and {x.closed_by for x in revoked} == {"revoke"}


def test_stream_temporal_disabled_passes_through() -> None:
    st = StreamTemporal(TemporalSettings(enabled=False), model_id="m")
    d = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32))
    res = st.on_frame("cam", 0.0, d, np.ones((1, 29)))
    assert res.track_ids.tolist() == [-1] and res.aggregates == [] and st.on_end("cam") == []
