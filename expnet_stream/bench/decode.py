"""Scenario ``decode``: PyAV decode speed inside the worker vs bare PyAV on the same packets.

Three numbers, frames per second of decoding to BGR (what the worker needs):

* ``worker``: the worker's ``decode`` stage (its :class:`~expnet_stream.video.decode.StreamDecoder` calls) while it
  runs through the broker, sampling 1 frame per second so detection and inference stay small next to decoding;
  ``frames_decoded / decode-stage seconds``. Its overall decoded frames per wall second is reported too.
* ``stream_decoder``: the same ``StreamDecoder`` over the same input messages held in memory, nothing else running.
* ``pyav``: ``av.open`` demux + decode + ``to_ndarray("bgr24")``; and ``pyav_no_convert`` without the conversion.

Ratios: ``worker / stream_decoder`` (what running inside the worker costs), ``stream_decoder / pyav`` (what the
packet-message path costs) and ``pyav_no_convert / pyav`` (share of the BGR conversion).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import av

from ..events.schema import VideoPacket
from ..video.decode import StreamDecoder
from .common import BenchError, Progress, cpu_count, median, new_result, ratio
from .data import DEFAULT_MODEL, QUICK_MODEL, Message, default_video, resolve, stream_messages, video_info
from .harness import BrokerBench, StreamSpec
from .pipeline import run_metrics

log = logging.getLogger(__name__)


def stream_decoder_fps(messages: list[Message]) -> float:
    """Frames/s of one StreamDecoder over a stream's messages (flush included)."""
    dec = StreamDecoder("bench")
    n = 0
    t0 = time.perf_counter()
    for m in messages:
        if isinstance(m, VideoPacket):
            n += len(dec.decode(m))
    n += len(dec.flush())
    return n / (time.perf_counter() - t0)


def pyav_fps(video: str, max_frames: int | None, convert: bool = True) -> float:
    """Frames/s of av.open demux + decode (+ BGR conversion) of the first ``max_frames`` frames."""
    n = 0
    t0 = time.perf_counter()
    try:
        with av.open(video) as c:
            vs = c.streams.video[0]
            vs.thread_count = 1
            for frame in c.decode(vs):
                if convert:
                    frame.to_ndarray(format="bgr24")
                n += 1
                if max_frames is not None and n >= max_frames:
                    break
    except (av.error.FFmpegError, OSError) as exc:
        raise BenchError(f"cannot decode {video}: {exc}") from exc
    return n / (time.perf_counter() - t0)


def _bare_round(messages: list[Message], video: str, frames: int) -> dict[str, float]:
    return {
        "stream_decoder": stream_decoder_fps(messages),
        "pyav": pyav_fps(video, frames),
        "pyav_no_convert": pyav_fps(video, frames, convert=False),
    }


def run(
    quick: bool = False,
    *,
    progress: bool = True,
    workdir: Path,
    worker_env: dict[str, str] | None = None,
    video: str | None = None,
    onnx: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    model = QUICK_MODEL if quick else DEFAULT_MODEL
    max_packets = 48 if quick else 472
    streams = 1 if quick else 2
    rounds = 2 if quick else 5
    video = video or str(default_video())
    params = {
        "model": model,
        "video": video_info(video),
        "packets_per_stream": max_packets,
        "streams_in_worker": streams,
        "worker_sample_fps": 1.0,
        "bare_rounds": rounds,
        "decoder_threads": 1,
        "worker_env": worker_env or {},
    }
    result = new_result("decode", quick, params)
    messages = stream_messages(video, "bench", max_packets)
    n_frames = sum(isinstance(m, VideoPacket) for m in messages)
    bare: dict[str, list[float]] = {"stream_decoder": [], "pyav": [], "pyav_no_convert": []}
    model, onnx_path = resolve(model, onnx)
    result["params"]["model"], result["params"]["onnx"] = model, str(onnx_path)
    with Progress("decode", total=rounds + 1, enabled=progress) as bar, BrokerBench(workdir / "decode") as bb:
        half = rounds // 2
        for i in range(rounds):
            if i == half:  # the worker run sits between the bare rounds
                res = bb.run(
                    [StreamSpec(video, f"dec-{k}", max_packets) for k in range(streams)],
                    onnx_path,
                    partitions=2,
                    timeout_s=60 if quick else 240,
                    env=worker_env,
                    progress=bar,
                    sample_fps=1.0,
                    threads=cpu_count(),
                )
                worker = run_metrics(res)
                bar.advance("worker run")
            for k, v in _bare_round(messages, video, n_frames).items():
                bare[k].append(v)
            bar.advance(f"bare round {i + 1}")
    decode_s = worker["stage_seconds"].get("decode", 0.0)
    worker_fps = ratio(worker["frames_decoded"], decode_s)
    med = {k: median(v) for k, v in bare.items()}
    result["samples"] = {"bare_fps": bare, "worker_run": worker}
    result["summary"] = {
        "worker_decode_stage_fps": worker_fps,
        "worker_decoded_frames_per_wall_s": worker["decoded_frames_per_s"],
        "stream_decoder_fps": med["stream_decoder"],
        "pyav_fps": med["pyav"],
        "pyav_no_convert_fps": med["pyav_no_convert"],
        "worker_vs_stream_decoder": ratio(worker_fps, med["stream_decoder"]),
        "stream_decoder_vs_pyav": ratio(med["stream_decoder"], med["pyav"]),
        "pyav_vs_pyav_no_convert": ratio(med["pyav"], med["pyav_no_convert"]),
        "bgr_conversion_share": 1.0 - (ratio(med["pyav"], med["pyav_no_convert"]) or 1.0),
        "worker_decode_share_of_wall": worker["stage_share_of_wall"].get("decode"),
    }
    result["notes"] += [
        "all decoders single-threaded (the worker's decoder_threads default is 1)",
        "worker numbers come from one run through the broker, sampling 1 fps so decoding dominates",
    ]
    return result
