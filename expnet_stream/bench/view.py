"""Scenario ``view``: the live view's picture rate, capture-to-picture delay and its own CPU, at half load.

1. Capacity: streams of the real face video ingested as fast as possible through one worker (the shipped model:
   the view draws emotions); frames/s the worker turns into events.
2. Half load: ``round(0.5 * capacity / clip fps)`` streams (1 to 4, the view's ``max_watched``) of the clip, each at
   ``min(clip fps, 0.5 * capacity / streams)`` frames/s (a re-encoded copy), ingested in real time, with
   ``expnet-stream view`` running as its own process and one MJPEG client per stream watching every stream.

Per watched stream: pictures received per second; delay = the client's receive time of a picture - the ingest time
of the packet that completed its frame (``X-Capture-Time``), so it holds the input hop, the view's decode, its wait
for the frame's event (``picture_wait_s``), drawing, JPEG and the HTTP hop (not the browser's own JPEG decode and
paint, a few ms). View CPU = the view process's user+system seconds over the run / wall seconds / watched streams
(it includes the view's event consumer and web server). Targets: >= 5 pictures/s, delay <= 1 s, <= 25 % of a core.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from ..config.settings import load_settings
from ..kafka.broker import free_port
from ..kafka.topics import ensure_topics
from .common import BenchError, Progress, latency_summary, new_result, ratio
from .data import default_video, paced_copy, video_info
from .harness import BrokerBench, StreamSpec, _Ingest, worker_overrides
from .pipeline import run_metrics

log = logging.getLogger(__name__)

TARGETS = {"pictures_per_s": 5.0, "delay_p95_s": 1.0, "cpu_share_per_stream": 0.25}
LOAD = 0.5
MAX_STREAMS = 4
"""The view's default ``max_watched``."""


class _MjpegClient(threading.Thread):
    """Reads one stream's MJPEG from the view; keeps (receive time, capture time, faces) per picture."""

    def __init__(self, url: str, stream_id: str) -> None:
        super().__init__(name=f"mjpeg-{stream_id}", daemon=True)
        self.url, self.stream_id = url, stream_id
        self.pictures: list[tuple[float, float, int]] = []
        self.error: str | None = None
        self._stop = threading.Event()

    def run(self) -> None:
        import httpx

        try:
            with httpx.stream("GET", self.url, params={"id": self.stream_id}, timeout=30) as res:
                if res.status_code != 200:
                    self.error = f"HTTP {res.status_code}"
                    return
                buf = b""
                for chunk in res.iter_bytes():
                    buf += chunk
                    while b"\r\n\r\n" in buf:
                        head, rest = buf.split(b"\r\n\r\n", 1)
                        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
                        size = int(fields["Content-Length"])
                        if len(rest) < size + 2:
                            break
                        self.pictures.append((time.time(), float(fields["X-Capture-Time"]), int(fields["X-Faces"])))
                        buf = rest[size + 2 :]
                    if self._stop.is_set():
                        return
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            if not self._stop.is_set():  # the view stopping under a stopped client is the end, not an error
                self.error = str(exc)

    def stop(self) -> None:
        self._stop.set()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_view(cfg: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "expnet_stream.cli.main", "view", "--config", str(cfg), "--port", str(port)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_path.open("wb"), start_new_session=True)


def _half_load(bb: BrokerBench, streams: list[StreamSpec], onnx: Path, seconds: float, **common: Any) -> dict[str, Any]:
    prefix = f"v{uuid.uuid4().hex[:8]}"
    cfg = worker_overrides(bb.bootstrap, prefix, onnx, partitions=2, **common)
    ws = load_settings(None, cfg)
    ensure_topics(ws.kafka, ws.topics)
    cfg_path = bb.workdir / f"{prefix}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    worker, stats = bb._start_worker(cfg, f"{prefix}-w0", {})
    port = free_port()
    view_log = bb.workdir / f"{prefix}-view.log"
    view = _start_view(cfg_path, port, view_log)
    clients: list[_MjpegClient] = []
    try:
        bb._wait_ready([(worker, stats)], prefix, timeout_s=90)
        deadline = time.monotonic() + 30
        while "expnet-stream view: http://" not in view_log.read_text():
            if view.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the view did not start: {view_log.read_text()[-1500:]}")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/api/stream/picture.mjpg"
        clients = [_MjpegClient(url, s.stream_id) for s in streams]
        for c in clients:
            c.start()
        time.sleep(1.0)  # the watchers are consuming before the first packet
        cpu0, t0 = _cpu_seconds(view.pid), time.monotonic()
        ingest = _Ingest(ws, streams, None)
        ingest.start()
        ingest.join(timeout=seconds + 60)
        time.sleep(1.0)  # the last frames' events and pictures
        cpu1, t1 = _cpu_seconds(view.pid), time.monotonic()
    finally:
        for c in clients:
            c.stop()
        if view.poll() is None:
            view.send_signal(2)  # SIGINT: the view's clean stop
        try:
            view.wait(timeout=20)
        except subprocess.TimeoutExpired:
            view.kill()
        BrokerBench._stop_worker(worker)
    per_stream = []
    for c in clients:
        pics = c.pictures
        span = (pics[-1][0] - pics[0][0]) if len(pics) > 1 else 0.0
        per_stream.append(
            {
                "stream": c.stream_id,
                "pictures": len(pics),
                "pictures_with_faces": sum(1 for p in pics if p[2] > 0),
                "pictures_per_s": ratio(len(pics) - 1, span) if span else None,
                "delay": latency_summary([r - cap for r, cap, _ in pics]),
                "delays_ms": [round(1000 * (r - cap), 1) for r, cap, _ in pics],
                "error": c.error,
            }
        )
    wall = t1 - t0
    return {
        "streams": per_stream,
        "wall_s": wall,
        "view_cpu_s": cpu1 - cpu0,
        "view_cpu_share": ratio(cpu1 - cpu0, wall),
        "view_cpu_share_per_stream": ratio(cpu1 - cpu0, wall * len(clients)),
        "ingest_errors": ingest.errors,
    }


def run(
    quick: bool = False,
    *,
    progress: bool = True,
    workdir: Path,
    video: str | None = None,
    onnx: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    from ..models.weights import default_model_path

    cap_streams = 1 if quick else 2
    seconds = 6.0 if quick else 20.0
    cap_packets = 36 if quick else 160
    video = video or str(default_video())
    info = video_info(video)
    onnx_path = Path(onnx) if onnx is not None else default_model_path()
    common: dict[str, Any] = {"threads": None, "max_batch": 16, "max_wait_ms": 40.0}
    params = {
        "model": str(onnx_path.name),
        "video": info,
        "load": LOAD,
        "seconds": seconds,
        "capacity_streams": cap_streams,
        "capacity_packets_per_stream": cap_packets,
        "view_defaults": "picture_fps 10, picture_wait_s 0.6, jpeg_quality 75",
        "targets": TARGETS,
    }
    result = new_result("view", quick, params)
    with Progress("view", total=2, enabled=progress) as bar, BrokerBench(workdir / "view") as bb:
        cap = bb.run(
            [StreamSpec(video, f"cap-{i}", cap_packets) for i in range(cap_streams)],
            onnx_path,
            partitions=2,
            timeout_s=240,
            progress=bar,
            **common,
        )
        cap_fps = run_metrics(cap)["frames_per_s"] or 1.0
        bar.advance(f"capacity {cap_fps:.1f} frames/s")
        # half the capacity, offered by watched streams at the clip's own rate (at most MAX_STREAMS of them; a
        # stream cannot be faster than its clip), or by one slower copy when half is less than one clip's rate
        native = float(info["fps"]) or 25.0
        streams = 1 if quick else max(1, min(MAX_STREAMS, round(LOAD * cap_fps / native)))
        fps = min(native, LOAD * cap_fps / streams)
        copy = paced_copy(video, fps, workdir / "paced", max_seconds=seconds)
        half = _half_load(
            bb, [StreamSpec(str(copy), f"view-{i}") for i in range(streams)], onnx_path, seconds, **common
        )
        bar.advance("half load with the view")
    result["params"]["streams"] = streams
    rates = [s["pictures_per_s"] or 0.0 for s in half["streams"]]
    p95s = [s["delay"]["p95_ms"] for s in half["streams"] if s["delay"]["p95_ms"] is not None]
    cpu = half["view_cpu_share_per_stream"]
    result["samples"] = {"capacity_run": run_metrics(cap), "half_load": half}
    result["summary"] = {
        "capacity_frames_per_s": cap_fps,
        "stream_fps": fps,
        "watched_streams": streams,
        "offered_frames_per_s": fps * streams,
        "offered_share_of_capacity": ratio(fps * streams, cap_fps),
        "pictures_per_s_min": min(rates) if rates else None,
        "delay_p50_ms": max((s["delay"]["p50_ms"] or 0.0) for s in half["streams"]) if half["streams"] else None,
        "delay_p95_ms_max": max(p95s) if p95s else None,
        "view_cpu_share_per_stream": cpu,
        "meets": {
            "pictures_per_s": bool(rates) and min(rates) >= TARGETS["pictures_per_s"],
            "delay_p95_s": bool(p95s) and max(p95s) / 1000 <= TARGETS["delay_p95_s"],
            "cpu_share_per_stream": cpu is not None and cpu <= TARGETS["cpu_share_per_stream"],
        },
    }
    result["notes"] += [
        "delay = MJPEG client receive - ingest time of the frame's packet (the browser's decode and paint: not in it)",
        "view CPU includes its event consumer and web server; divided by the watched streams",
        "pictures/s is bounded by picture_fps (10) and by the stream's own frame rate (stream_fps)",
        "half load: watched streams at the clip's rate (at most 4, the view's max_watched) adding up to about half the "
        "measured capacity (offered_share_of_capacity says how close)",
    ]
    return result
