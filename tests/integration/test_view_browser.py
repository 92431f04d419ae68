"""`expnet-stream view` in a real browser: a real broker, a worker process, a real-time ingester and the view
command, driven by headless Chromium through Selenium.

The stream appears on the streams page, its picture updates, an emotion label and the per-track timeline are drawn,
and its end shows; a stream id and an emotion class made of HTML show as text. A screenshot of the stream page goes
to the test's folder and to build/view_screenshot.png; with EXPNET_UPDATE_SCREENSHOT=1 also to
tests/integration/view_screenshot.png (the README's picture, committed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from kafka import KafkaProducer

from expnet_stream.events.codec import encode
from expnet_stream.kafka.broker import EmbeddedBroker, free_port
from expnet_stream.kafka.topics import ensure_topics
from expnet_stream.models.weights import default_model_path
from tests.conftest import broker_settings, make_face_video
from tests.integration.fleet_util import start_ingester, start_worker, stop, worker_config
from tests.unit.test_view import frame, summary

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "view_screenshot.png"  # a stable path (git-ignored)
README_SCREENSHOT = Path(__file__).with_name("view_screenshot.png")  # the README's, rewritten when asked:
UPDATE_ENV = "EXPNET_UPDATE_SCREENSHOT"  # EXPNET_UPDATE_SCREENSHOT=1 pytest tests/integration/test_view_browser.py
HOSTILE_ID = "<img src=x onerror=\"document.title='pwned'\">cam"
HOSTILE_CLASS = "<b>evil</b>"
TOKEN = "t0k-en/with?odd=chars"


def _browser() -> Any:
    if CHROMIUM is None or not Path(CHROMEDRIVER).is_file():
        pytest.skip("headless Chromium is absent: apt-get install -y chromium chromium-driver (CI's .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is absent: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    return webdriver, Service


@pytest.fixture()
def driver(tmp_path: Path) -> Iterator[Any]:
    webdriver, Service = _browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(flag)
    opts.page_load_strategy = "eager"  # the MJPEG picture never finishes loading
    # Service with the Debian driver: Selenium Manager never downloads anything
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_script_timeout(10)
    try:
        yield d
    finally:
        d.quit()


def _wait(what: str, predicate: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _video(tmp_path: Path) -> Path:
    """The demo's real face clip (20 s, 640x360) when it is in the cache (`make demo` put it there), else a synthetic
    12 s clip of the astronaut moving (nothing is downloaded by the test)."""
    from expnet_stream.fileio import cache_dir
    from expnet_stream.video.sample import SAMPLE_NAME

    cached = cache_dir() / "videos" / SAMPLE_NAME
    if cached.is_file() and cached.stat().st_size > 0:
        return cached
    video = tmp_path / "faces.mp4"
    make_face_video(video, n_frames=300, blank_frames=4, size=(640, 360), gop=25)
    return video


def _hostile_events(stream_id: str) -> list[bytes]:
    """A frame event and a summary of a stream named with HTML, with an emotion class made of HTML."""
    now = time.time()
    hostile = frame(stream_id, now, emotions={HOSTILE_CLASS: 0.9, "neutral": 0.1})
    return [encode(hostile), encode(summary(stream_id, now + 0.1))]


def test_view_in_a_browser(driver: Any, broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path) -> None:
    video = _video(tmp_path)
    onnx = default_model_path()
    settings = broker_settings(broker, topic_prefix, onnx, topics={"input_partitions": 1})
    ensure_topics(settings.kafka, settings.topics)
    cfg = worker_config(tmp_path, "w0", broker.bootstrap, topic_prefix, onnx, topics={"input_partitions": 1})
    worker_log, view_log = tmp_path / "worker.log", tmp_path / "view.log"
    worker = start_worker(cfg, worker_log)
    port = free_port()
    view_cmd = [sys.executable, "-m", "expnet_stream.cli.main", "view", "--config", str(cfg), "--port", str(port)]
    view = subprocess.Popen(
        [*view_cmd, "--token", TOKEN, "--idle-after", "3"],
        stdout=subprocess.DEVNULL,
        stderr=view_log.open("wb"),
        env={**os.environ, "EXPNET_LOG": "info"},
        start_new_session=True,
    )
    ingester = None
    try:
        _wait("the worker to join", lambda: "assigned partitions=" in worker_log.read_text(), 90)
        _wait("the view's URL", lambda: "expnet-stream view: http://" in view_log.read_text(), 30)
        base = f"http://127.0.0.1:{port}"
        assert f"{base}/?token=" in view_log.read_text()
        # the token guards every route, the push channels too
        for path in ("/", "/api/streams", "/static/stream.js", "/api/stream/picture.mjpg?id=cam"):
            assert httpx.get(base + path, timeout=5).status_code == 401, path
        assert httpx.get(base + "/api/streams", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200

        ingester = start_ingester(video, "cam-live", broker.bootstrap, settings.topics.input)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for value in _hostile_events(HOSTILE_ID):
            producer.send(settings.topics.expressions, key=HOSTILE_ID.encode(), value=value)
        producer.flush()
        producer.close()

        driver.get(f"{base}/?{urlencode({'token': TOKEN})}")
        _wait(
            "the live stream on the streams page",
            lambda: driver.execute_script(
                "return [...document.querySelectorAll('#streams tbody tr')].map(r => r.dataset.stream)"
            ).count("cam-live"),
            60,
        )
        rows = {
            r["id"]: r
            for r in driver.execute_script(
                "return [...document.querySelectorAll('#streams tbody tr')].map(r => ({id: r.dataset.stream, "
                "text: r.innerText, imgs: r.querySelectorAll('img').length}))"
            )
        }
        assert HOSTILE_ID in rows, "the stream named with HTML is listed"
        assert rows[HOSTILE_ID]["imgs"] == 0 and HOSTILE_ID in rows[HOSTILE_ID]["text"], "its id shows as text"
        assert "live" in rows["cam-live"]["text"]

        # the stream page, reached by its link (the token travels in the cookie and the query)
        driver.find_element("css selector", "#streams tbody tr[data-stream='cam-live'] a").click()
        _wait(
            "a drawn picture",
            lambda: driver.execute_script(
                "const i = document.getElementById('picture'); return i.complete && i.naturalWidth === 640"
            ),
            30,
        )
        label = _wait(
            "an emotion label",
            lambda: driver.execute_script(
                "const e = document.querySelector('#faces .emotion-label'); return e && e.textContent.trim()"
            ),
            30,
        )
        assert label.startswith("#") and len(label.split()) == 3, label  # "#1 happiness 0.82"
        _wait(
            "the timeline drawn",
            lambda: int(driver.execute_script("return document.getElementById('timeline').dataset.points || 0")) >= 10,
            30,
        )
        painted = driver.execute_script(
            "const c = document.getElementById('timeline'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; } return n"
        )
        assert painted > 500, f"the timeline canvas has {painted} painted pixels"
        picture = driver.find_element("id", "picture")
        first = picture.screenshot_as_png
        changed = _wait("the picture to change", lambda: picture.screenshot_as_png != first, 10, every=0.3)
        assert changed
        _wait(
            "10 s of timeline",
            lambda: int(driver.execute_script("return document.getElementById('timeline').dataset.points || 0")) >= 240,
            30,
        )
        png = tmp_path / "view_stream.png"
        driver.save_screenshot(str(png))
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, SCREENSHOT)
        if os.environ.get(UPDATE_ENV) == "1":
            shutil.copyfile(png, README_SCREENSHOT)
        assert driver.title == "cam-live · expnet-stream view"

        # the end of the stream shows on its page
        _wait("the ingester to finish", lambda: ingester.poll() is not None, 60)
        assert ingester.returncode == 0
        _wait("the end on the page", lambda: driver.find_element("id", "state").text == "ended", 60)
        assert "ended" in driver.find_element("id", "picture-note").text

        # the stream named with HTML: its page shows the id and the class as text, runs nothing
        driver.get(f"{base}/stream?{urlencode({'id': HOSTILE_ID})}")  # no token in the URL: the cookie has it
        _wait("the hostile stream's page", lambda: driver.find_element("id", "stream-id").text == HOSTILE_ID, 20)
        _wait(
            "its label",
            lambda: (
                HOSTILE_CLASS
                in (
                    driver.execute_script(
                        "const e = document.querySelector('#faces .emotion-label'); return e && e.textContent"
                    )
                    or ""
                )
            ),
            20,
        )
        assert driver.execute_script("return document.querySelectorAll('main img, main b').length") == 1  # the picture
        assert driver.title == f"{HOSTILE_ID} · expnet-stream view"  # as text; its onerror would have set 'pwned'
    finally:
        if ingester is not None:
            stop(ingester)
        rc_view = stop(view, signal.SIGINT)
        stop(worker)
    assert rc_view == 0, view_log.read_text()[-2000:]
