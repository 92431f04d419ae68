"""`expnet-stream bench SCENARIO|all [--out DIR] [--quick]`: run benchmark scenarios, write JSON + PNG each."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def _env_pairs(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--worker-env expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _variant(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` -> ``(NAME, {KEY: VALUE})``."""
    name, sep, rest = spec.partition(":")
    if not sep or not name:
        raise ConfigError(f"--variant expects NAME:KEY=VALUE[,KEY=VALUE...], got {spec!r}")
    return name, _env_pairs([p for p in rest.split(",") if p])


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import ALL, SCENARIOS, run_scenario

    if args.list:
        for name, what in SCENARIOS.items():
            print(f"{name:12s} {what}")
        return 0
    if args.scenario is None:
        raise ConfigError("name a scenario (or 'all'); `expnet-stream bench --list` shows them")
    names = list(ALL) if args.scenario == "all" else [args.scenario]
    kwargs: dict[str, Any] = {}
    env = _env_pairs(args.worker_env)
    if env:
        kwargs["worker_env"] = env
    if args.video:
        kwargs["video"] = args.video
    if args.onnx:
        kwargs["onnx"] = args.onnx
    variants: dict[str, Any] = {}
    if args.variants:
        variants["variants"] = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.variant:
        variants["extra_variants"] = dict(_variant(v) for v in args.variant)
    out = Path(args.out) if args.out else None
    for name in names:
        extra = dict(kwargs)
        if name in ("engine", "landmarks", "bottlenecks"):
            extra.pop("worker_env", None)
        if name == "landmarks":
            extra.pop("onnx", None)
        if name == "bottlenecks":
            extra.update(variants)
        result, json_path, png_path = run_scenario(name, out, quick=args.quick, progress=not args.no_progress, **extra)
        line = {"scenario": name, "json": str(json_path), "png": str(png_path), "seconds": result["seconds"]}
        line["summary"] = _short(result["summary"])
        print(json.dumps(line, default=str), file=sys.stderr if args.json_stderr else sys.stdout, flush=True)
    return 0


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of a summary (tables and per-run lists left out), rounded."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, float):
            out[k] = round(v, 4)
        elif isinstance(v, int | str | bool) or v is None:
            out[k] = v
    return out


def register(subparsers: Any) -> None:
    """Add the ``bench`` command to the ``expnet-stream`` sub-command parsers."""
    s = subparsers.add_parser(
        "bench",
        help="run a benchmark scenario (engine, pipeline, decode, latency, landmarks, scaling, bottlenecks, detection, "
        "crowd, view) or all",
        description=__doc__,
    )
    s.add_argument("scenario", nargs="?", help="scenario name, or 'all' (every scenario but bottlenecks)")
    s.add_argument("--out", default=None, help="output folder (default expnet_stream/bench/results)")
    s.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    s.add_argument("--list", action="store_true", help="list the scenarios and exit")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument(
        "--worker-env",
        action="append",
        metavar="KEY=VALUE",
        help="environment of the measured worker processes, e.g. OMP_WAIT_POLICY=PASSIVE (repeat; default: inherited)",
    )
    s.add_argument("--video", default=None, help="video file (default: the sample face video)")
    s.add_argument(
        "--onnx", default=None, help="ONNX model (with its .contract.json) instead of the scenario's default"
    )
    s.add_argument(
        "--variants", default=None, help="bottlenecks: comma-separated built-in variants to run (default: all)"
    )
    s.add_argument(
        "--variant",
        action="append",
        metavar="NAME:KEY=VALUE,...",
        help="bottlenecks: an extra variant with this worker environment, e.g. PYTHONPATH=DIR of a patched copy "
        "(default: none)",
    )
    s.add_argument("--json-stderr", action="store_true", help="print the per-scenario result lines on stderr")
    s.set_defaults(func=cmd_bench)
