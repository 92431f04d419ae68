"""The live view without a broker: the token on every route, hostile stream ids and class names kept as text, the
bounds on clients, watched streams and streams, and queues that never block the consumer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from expnet_stream.config.settings import load_settings
from expnet_stream.errors import ConfigError
from expnet_stream.events.aggregate_schema import EmotionAggregate
from expnet_stream.events.schema import Face, FrameEvent, StreamSummary, pack_coeffs
from expnet_stream.view.hub import Channel, ClientLimit, Fanout, LimitReached
from expnet_stream.view.settings import TOKEN_ENV, ViewSettings
from expnet_stream.view.state import MAX_TIMELINE_POINTS, StreamTable

pytestmark = pytest.mark.unit

pytest.importorskip("starlette", reason="the view extra is absent: pip install -e '.[dev]'")
from starlette.testclient import TestClient  # noqa: E402

from expnet_stream.view.app import build_app, safe_json, sse  # noqa: E402
from expnet_stream.view.service import ViewService  # noqa: E402

STATIC = Path(__file__).resolve().parents[2] / "expnet_stream" / "view" / "static"
HOSTILE = '<script>alert(1)</script>"\'&\n\ndata: {"kind":"forged"}'
TOKEN = "s3cret-token"
ROUTES = [
    "/",
    "/stream?id=cam",
    "/static/view.css",
    "/static/stream.js",
    "/api/streams",
    "/api/stream?id=cam",
    "/api/stream/events?id=cam",
    "/api/stream/picture.mjpg?id=cam",
    "/api/status",
]


def frame(
    stream_id: str,
    t: float,
    *,
    classes: tuple[str, ...] = ("happiness", "neutral"),
    seq: int = 0,
    emotions: dict[str, float] | None = None,
) -> FrameEvent:
    """A frame event with one face: equal shares of ``classes``, or ``emotions``."""
    face = Face(
        track_id=1,
        box=(10, 10, 60, 60),
        score=0.9,
        coeffs=pack_coeffs(np.zeros(29)),
        emotions=emotions or {c: 1.0 / len(classes) for c in classes},
    )
    return FrameEvent(
        event_id=f"{stream_id}:{seq}",
        stream_id=stream_id,
        frame_seq=seq,
        pts=seq,
        time_base=(1, 25),
        pts_time=seq / 25,
        capture_time=t - 0.1,
        publish_time=t,
        width=640,
        height=360,
        model_id="m",
        model_trained=True,
        basis_id="b",
        faces=[face],
    )


def summary(stream_id: str, t: float, reason: str = "eof") -> StreamSummary:
    return StreamSummary(
        event_id=f"{stream_id}:end",
        stream_id=stream_id,
        packets=1,
        packets_skipped=0,
        frames_decoded=1,
        frames_sampled=1,
        frames_with_faces=1,
        faces=1,
        model_id="m",
        publish_time=t,
        end_reason=reason,
    )


def service(**view: object) -> ViewService:
    worker = load_settings(None, {"kafka": {"bootstrap": "127.0.0.1:9"}, "group_id": "fleet"})
    return ViewService(worker, ViewSettings(**view))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------ token
def test_every_route_asks_for_the_token() -> None:
    client = TestClient(build_app(service(token=TOKEN)))
    for path in ROUTES:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"cookie": "expnet_view_token=wrong"}):
            res = client.get(path, headers=headers)
            assert res.status_code == 401, (path, headers)
            assert res.headers["www-authenticate"] == "Bearer"
        assert client.get(path + ("&" if "?" in path else "?") + "token=wrong").status_code == 401


def test_a_good_token_by_query_header_or_cookie() -> None:
    client = TestClient(build_app(service(token=TOKEN)))
    res = client.get(f"/?token={TOKEN}")
    assert res.status_code == 200 and "text/html" in res.headers["content-type"]
    cookie = res.headers["set-cookie"]
    assert cookie.startswith(f"expnet_view_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/api/streams").status_code == 200  # the cookie the page set
    bare = TestClient(build_app(service(token=TOKEN)))
    assert bare.get("/api/streams", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert bare.get("/api/streams", headers={"x-expnet-view-token": TOKEN}).status_code == 200
    assert "set-cookie" not in bare.get("/api/streams", headers={"authorization": f"Bearer {TOKEN}"}).headers
    open_view = TestClient(build_app(service()))
    assert open_view.get("/api/streams").status_code == 200


def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert ViewSettings.with_env_token().token.get_secret_value() == "from-env"  # type: ignore[union-attr]
    assert ViewSettings.with_env_token("given").token.get_secret_value() == "given"  # type: ignore[union-attr]
    monkeypatch.setenv(TOKEN_ENV, "")
    assert ViewSettings.with_env_token().token is None
    assert ViewSettings().host == "127.0.0.1"  # loopback by default


# ------------------------------------------------------------------------------------------------------ escaping
def test_hostile_stream_ids_and_classes_stay_text() -> None:
    svc = service()
    now = time.time()
    svc.table.on_frame(frame(HOSTILE, now, classes=(HOSTILE, "neutral")), now)
    client = TestClient(build_app(svc))
    res = client.get("/api/streams")
    assert res.headers["content-type"].startswith("application/json")
    assert "<" not in res.text and ">" not in res.text and "&" not in res.text.replace("\\u0026", "")
    assert res.json()["streams"][0]["stream"] == HOSTILE  # the same text, escaped only in transit
    detail = client.get("/api/stream", params={"id": HOSTILE}).json()
    assert detail["timeline"][0]["faces"][0]["top"] == HOSTILE
    # the SSE framing cannot be broken by an event's newlines
    block = sse("frame", {"stream": HOSTILE}).decode()
    assert block.count("\n") == 3 and block.startswith("event: frame\ndata: {") and block.endswith("}\n\n")
    assert json.loads(block.split("data: ", 1)[1]) == {"stream": HOSTILE}
    assert json.loads(safe_json(HOSTILE)) == HOSTILE
    # the pages: static, a strict CSP (no inline script), and no HTML parsing of event text in the scripts
    page = client.get("/stream", params={"id": HOSTILE})
    assert HOSTILE not in page.text and "<script>" not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{script.name} uses {sink}"


# ------------------------------------------------------------------------------------------------------ bounds
def test_clients_over_the_limit_get_429_and_watched_streams_503() -> None:
    svc = service(max_clients=1, max_watched=1)
    client = TestClient(build_app(svc))
    with svc.clients.slot():
        for path in ("/api/stream/events?id=a", "/api/stream/picture.mjpg?id=a"):
            res = client.get(path)
            assert res.status_code == 429 and res.headers["retry-after"] == "5", path
            assert "max_clients" in res.json()["error"]
    assert svc.clients.count == 0 and svc.clients.refused == 2

    svc.pictures.watch("a", lambda p: None)  # a watcher (its broker is absent: it retries quietly)
    try:
        res = client.get("/api/stream/picture.mjpg?id=b")
        assert res.status_code == 503 and "max_watched" in res.json()["error"]
        assert svc.clients.count == 0, "a refused picture gives its client slot back"
    finally:
        svc.pictures.unwatch("a", lambda p: None)  # another sink: still watched
        assert svc.pictures.watched() == ["a"]
        svc.pictures.stop()
    assert svc.pictures.watched() == []
    assert client.get("/api/stream/events").status_code == 400  # no id


def test_client_limit_releases_its_slots() -> None:
    limit = ClientLimit(2)
    with limit.slot(), limit.slot():
        with pytest.raises(LimitReached) as exc, limit.slot():
            pass
        assert exc.value.status == 429
    assert limit.count == 0


def test_a_slow_client_never_blocks_the_consumer() -> None:
    loop = asyncio.new_event_loop()
    try:
        fan = Fanout()
        slow: Channel[int] = Channel(loop, 8)  # nobody reads it
        fan.subscribe("cam", slow)
        t0 = time.perf_counter()
        sender = threading.Thread(target=lambda: [fan.publish("cam", i) for i in range(20_000)])
        sender.start()
        sender.join(10)
        assert not sender.is_alive() and time.perf_counter() - t0 < 5
        assert len(slow) == 8 and slow.dropped == 20_000 - 8
        got = loop.run_until_complete(slow.get(0.1))
        assert got == list(range(20_000 - 8, 20_000)), "the newest items are kept"
        assert loop.run_until_complete(slow.get(0.05)) == []
        slow.close()
        assert loop.run_until_complete(slow.get(0.05)) is None
        fan.unsubscribe("cam", slow)
        assert fan.keys() == 0
    finally:
        loop.close()
    dead: Channel[int] = Channel(loop, 2)  # its loop is closed (a vanished client): put still returns
    dead.put(1)
    assert dead.closed


def test_view_group_is_never_the_fleets() -> None:
    worker = load_settings(None, {"group_id": "fleet"})
    with pytest.raises(ConfigError, match="fleet"):
        ViewService(worker, ViewSettings(group_id="fleet"))
    assert service().group_id.startswith("expnet-view-")


# ------------------------------------------------------------------------------------------------------ the table
def test_stream_states_and_aggregates() -> None:
    table = StreamTable(max_streams=8, forget_after_s=60, idle_after_s=5)
    now = time.time()
    for i in range(30):
        table.on_frame(frame("cam", now - 3 + i * 0.04, seq=i), now)
    table.on_aggregate(
        EmotionAggregate.model_validate(
            {
                "event_id": "a",
                "stream_id": "cam",
                "track_id": -1,
                "window_kind": "tumbling",
                "window_start": 0.0,
                "window_end": 1.0,
                "window_step": 1.0,
                "first_time": 0.0,
                "last_time": 0.96,
                "frames": 25,
                "faces": 25,
                "coeff_mean": pack_coeffs(np.zeros(29)),
                "coeff_std": pack_coeffs(np.zeros(29)),
                "emotions": {"happiness": 0.7, "neutral": 0.3},
                "dominant_emotion": "happiness",
                "dominant_share": 0.8,
                "stability": 0.9,
                "late_frames": 0,
                "model_id": "m",
                "publish_time": now,
                "closed_by": "watermark",
            }
        )
    )
    row = table.rows(now)[0]
    assert row["state"] == "live" and row["dominant"] == "happiness" and row["faces"] == 1
    assert 20 < row["fps"] < 30 and row["lag_s"] == pytest.approx(0.1 + 3 - 29 * 0.04, abs=0.01)
    assert table.rows(now + 10)[0]["state"] == "idle"
    table.on_summary(summary("cam", now + 0.5))
    assert table.rows(now + 1)[0]["state"] == "ended" and table.rows(now + 1)[0]["end_reason"] == "eof"
    table.on_summary(summary("cam", now + 0.6, "idle"))
    assert table.rows(now + 1)[0]["state"] == "idle"
    table.on_frame(frame("cam", now + 5, seq=99), now + 5)  # the stream came back
    assert table.rows(now + 5)[0]["state"] == "live"
    assert table.detail("nope", 60) is None


def test_memory_stays_flat_while_streams_come_and_go() -> None:
    table = StreamTable(max_streams=50, forget_after_s=30, idle_after_s=5)
    t = time.time()

    def churn(first: int, n: int) -> None:
        for s in range(first, first + n):
            for i in range(20):
                table.on_frame(frame(f"cam-{s}", t + s * 0.1 + i * 0.001, seq=i), t)
            table.on_summary(summary(f"cam-{s}", t + s * 0.1 + 0.05))

    tracemalloc.start()
    try:
        churn(0, 300)
        first = tracemalloc.get_traced_memory()[0]
        churn(300, 1500)
        second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(table) == 50 and table.evicted == 1800 - 50
    assert second < first * 1.25, f"memory grew from {first} to {second} bytes with 5x more streams"
    assert table.expire(t + 1800 * 0.1 + 31) and len(table) == 0  # every stream forgotten after forget_after_s

    one = StreamTable()
    for i in range(MAX_TIMELINE_POINTS + 500):
        one.on_frame(frame("long", t + i * 0.001, seq=i), t)
    assert len(one.detail("long", 1e9)["timeline"]) == MAX_TIMELINE_POINTS  # type: ignore[index]


# ------------------------------------------------------------------------------------------------------ the extra
def test_a_clear_error_without_the_view_extra() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; from expnet_stream.cli.main import main; "
        "sys.exit(main(['view', '--bootstrap', '127.0.0.1:9']))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "pip install 'expnet-stream[view]'" in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------------------ the picture
def test_the_picture_is_decoded_drawn_and_bounded(face_video: tuple[Path, list[bool]]) -> None:
    """Real packets of a real H.264 file through the watcher's decoder; the faces of the frame events drawn by the
    annotators of `annotate`; a read-back to a keyframe holds one decoded frame, not all of them."""
    import cv2

    from expnet_stream.events.codec import encode
    from expnet_stream.video.draw import draw_faces
    from expnet_stream.video.ingest import iter_stream_messages
    from expnet_stream.view.picture import Picture, PictureWatcher

    kafka = load_settings(None, {}).kafka
    video, has_face = face_video
    messages = [encode(m) for m in iter_stream_messages(str(video), "cam")]

    late: list[Picture] = []  # no events at all: every frame is drawn bare, without waiting
    bare = PictureWatcher("cam", kafka, "in", ViewSettings(picture_wait_s=0), late.append, group_id="g")
    for value in messages:
        bare._on_record(value)
        assert len(bare._pending) <= 1
    bare._emit(time.time())
    assert bare.decoded == len(has_face) and bare.ended and len(late) == 1 and late[0].faces == 0

    pictures: list[Picture] = []
    watcher = PictureWatcher("cam", kafka, "in", ViewSettings(picture_wait_s=60), pictures.append, group_id="g")
    for value in messages[:-1]:
        watcher._on_record(value)  # no event yet: the frames wait (up to picture_wait_s)
    assert len(watcher._pending) == watcher.decoded > 10
    watcher._emit(time.time())
    assert pictures == []
    last = watcher._pending[-1][0]
    ev = frame("cam", time.time(), seq=len(has_face) - 1).model_copy(update={"pts": last.pts})
    watcher.on_event(ev)
    watcher._emit(time.time())
    assert len(pictures) == 1 and len(watcher._pending) == 0, "the newest matched frame goes, older ones with it"
    p = pictures[0]
    assert p.matched and p.faces == 1 and p.pts_time == pytest.approx(last.pts_time)
    image = cv2.imdecode(np.frombuffer(p.jpeg, np.uint8), cv2.IMREAD_COLOR)
    expected = draw_faces(last.image.copy(), ev.faces)
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 3  # the annotators' drawing, JPEG-compressed
    assert np.abs(image.astype(int) - last.image.astype(int)).mean() > 0.5  # and something was drawn

    stranger = PictureWatcher("other", kafka, "in", ViewSettings(), pictures.append, group_id="g")
    assert stranger._key == b"other"  # records of other streams are skipped by key before unpacking


def test_hostile_numbers_and_sizes_are_passed_over() -> None:
    """What the schema leaves open (non-finite times, huge ids, many classes) never reaches a page or the JSON."""
    table = StreamTable()
    now = time.time()
    nan = frame("cam", now).model_copy(update={"capture_time": float("nan")})
    long_id = frame("x" * 300, now)
    many = frame("cam", now, classes=tuple(f"c{i}" for i in range(40)))
    assert table.on_frame(nan, now) is None and table.on_frame(long_id, now) is None
    assert table.on_frame(many, now) is None
    assert table.on_summary(summary("cam", float("inf"))) is None
    assert len(table) == 0 and table.refused == {"frame": 1, "stream_id": 1, "face": 1, "time": 1}
    future = frame("cam", now + 1e9)  # a skewed clock: counted at most 5 s ahead, so the stream still expires
    assert table.on_frame(future, now) is not None
    assert table.expire(now + 400) == ["cam"]
    svc = service()
    svc.table.on_frame(frame("ok", now), now)
    assert TestClient(build_app(svc)).get("/api/streams").status_code == 200
