"""One small PNG chart per scenario result (matplotlib, Agg backend, < 150 KB)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .common import BenchError

log = logging.getLogger(__name__)

FIGSIZE = (7.5, 3.8)
DPI = 90


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BenchError(f"charts need matplotlib ({exc}): pip install 'matplotlib>=3.8'") from exc
    return plt


def _subtitle(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    load = (m.get("load_average") or ["?"])[0]
    end = (m.get("load_average_end") or [None])[0]
    quick = " QUICK" if result.get("quick") else ""
    loads = f"{load}" if end is None else f"{load}→{end}"
    return f"{m.get('cores', '?')} cores, load {loads}, {result.get('started', '')[:16]}{quick}"


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def chart_engine(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for row in result["summary"]["table"].values():
        fps = row["faces_per_s"]
        xs = [int(b) for b in fps]
        ax.plot(
            xs,
            [fps[str(b)] for b in xs],
            marker="o",
            ls="--" if row["engine"] != "onnxruntime" else "-",
            label=f"{row['engine']} {row['variant'].replace('expnet_', '')}",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("faces/s (median)")
    ax.set_title(f"bare engine on real face crops — {_subtitle(result)}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


STAGE_COLORS = {
    "decode": "#4c72b0",
    "detect": "#dd8452",
    "crop": "#55a868",
    "infer": "#c44e52",
    "publish": "#8172b3",
    "other": "#999999",
}


def _stage_bars(
    ax: Any,
    shares: dict[str, float | None],
    label: str,
    y: float,
    *,
    legend: bool | None = None,
    ms: bool = False,
    min_label: float = 0.06,
) -> None:
    """One horizontal bar of stacked stage values at ``y``: shares (labels in %) or milliseconds (``ms``)."""
    left = 0.0
    total = sum(v or 0.0 for v in shares.values())
    for stage, color in STAGE_COLORS.items():
        v = shares.get(stage) or 0.0
        v = max(v, 0.0)
        show = legend if legend is not None else y == 0
        ax.barh(y, v, left=left, color=color, label=stage if show else None)
        if v > min_label * (total if ms else 1.0):
            text = f"{stage}\n{v:.1f}" if ms else f"{stage}\n{v:.0%}"
            ax.text(left + v / 2, y, text, ha="center", va="center", fontsize=7, color="white")
        left += v
    if label:
        ax.text(left, y, f" {label}", va="center", fontsize=8)


def chart_pipeline(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    s = result["summary"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=FIGSIZE, gridspec_kw={"width_ratios": [1, 2]})
    bound = s.get("bound_frames_per_s")
    if bound is None:  # a result without bare stage timings: the bare engine only
        names, vals = ["bare engine", "pipeline"], [s["bare_engine_faces_per_s"] or 0, s["pipeline_faces_per_s"] or 0]
        eff = s.get("engine_efficiency", s.get("pipeline_efficiency"))
        a1.set_title(f"faces/s (efficiency {eff:.2f})" if eff else "faces/s", fontsize=9)
    else:
        names, vals = ["bound\n(sum of bare)", "pipeline"], [bound, s["pipeline_frames_per_s"] or 0]
        eff, eng = s.get("stage_sum_efficiency"), s.get("engine_efficiency")
        a1.set_title(
            f"frames/s: {eff:.2f} of bound\n(vs bare engine {eng:.2f})" if eff and eng else "frames/s", fontsize=9
        )
    a1.bar(names, vals, color=["#c44e52", "#4c72b0"])
    a1.set_ylim(0, 1.15 * max([*vals, 1.0]))
    for i, v in enumerate(vals):
        a1.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    bare_ms, pipe = s.get("bare_ms_per_frame"), s.get("pipeline_ms_per_frame")
    if bound is not None and bare_ms and pipe:
        wall = pipe.get("wall") or 0.0
        pipe_ms = {k: v or 0.0 for k, v in pipe.items() if k != "wall"}
        pipe_ms["other"] = wall - sum(pipe_ms.values())
        _stage_bars(a2, bare_ms, f"{sum(v or 0.0 for v in bare_ms.values()):.1f}", 1, legend=False, ms=True)
        _stage_bars(a2, pipe_ms, f"{wall:.1f}", 0, legend=True, ms=True)
        a2.set_yticks([0, 1], ["pipeline", "bare stages"], fontsize=8)
        a2.set_xlim(0, 1.15 * max(wall, sum(v or 0.0 for v in bare_ms.values())))
        a2.set_xlabel("ms per frame (other = worker time outside the stages)", fontsize=8)
    else:
        _stage_bars(a2, s["stage_share_of_wall"], "", 0)
        a2.set_xlim(0, 1)
        a2.set_yticks([])
        a2.set_xlabel("share of worker wall time")
    a2.set_title(f"where the time goes — {_subtitle(result)}", fontsize=9)
    a2.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return _save(fig, path)


def chart_decode(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    s = result["summary"]
    names = ["worker decode stage", "StreamDecoder", "av.open + bgr24", "av.open, no convert"]
    vals = [s["worker_decode_stage_fps"], s["stream_decoder_fps"], s["pyav_fps"], s["pyav_no_convert_fps"]]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.barh(names, [v or 0 for v in vals], color=["#4c72b0", "#55a868", "#8172b3", "#999999"])
    for i, v in enumerate(vals):
        ax.text(v or 0, i, f" {v or 0:.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    r = s.get("worker_vs_stream_decoder")
    ax.set_xlabel("decoded frames/s (median)")
    ax.set_title(f"decode: worker/bare = {r:.2f} — {_subtitle(result)}" if r else "decode", fontsize=9)
    return _save(fig, path)


def chart_latency(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    levels = result["samples"]["levels"]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    data = [lv["latencies_ms"] or [0.0] for lv in levels]
    labels = [f"{lv['level']:.0%}\n{lv['offered_frames_per_s']:.1f} fr/s" for lv in levels]
    ax.boxplot(data, whis=(1, 99), showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    for i, lv in enumerate(levels, start=1):
        lat = lv["latency"]
        if lat["p50_ms"] is not None:
            ax.text(
                i + 0.25,
                lat["p50_ms"],
                f"p50 {lat['p50_ms']:.0f}\np95 {lat['p95_ms']:.0f}\np99 {lat['p99_ms']:.0f}",
                fontsize=7,
                va="center",
            )
    ax.set_yscale("log")
    ax.set_ylabel("frame-to-event latency, ms")
    ax.set_xlabel("offered load (fraction of measured capacity)")
    cap = result["summary"]["capacity_frames_per_s"]
    ax.set_title(f"latency, capacity {cap:.1f} frames/s (whiskers p1–p99) — {_subtitle(result)}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def chart_landmarks(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    ms = result["summary"]["ms_per_face"]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    names = list(ms)
    colors = ["#c44e52" if n.startswith("expnet") else "#4c72b0" for n in names]
    ax.barh(names, [ms[n] or 0 for n in names], color=colors)
    for i, n in enumerate(names):
        ax.text(ms[n] or 0, i, f" {ms[n] or 0:.1f} ms", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per face (median; detection excluded)")
    ax.set_title(f"ExpNet vs landmark fitting, same crops — {_subtitle(result)}", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def chart_scaling(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    s, levels = result["summary"], result["samples"]["levels"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=FIGSIZE, gridspec_kw={"width_ratios": [2, 1]})
    ks = [lv["streams"] for lv in levels]
    a1.plot(ks, [lv.get("p95_ms", 0) for lv in levels], marker="o", label="p95 latency (ms)")
    a1.plot(ks, [lv.get("p50_ms", 0) for lv in levels], marker=".", label="p50 latency (ms)")
    for lv in levels:
        if not lv["keeps_up"]:
            a1.axvline(lv["streams"], color="red", ls=":", label="falls behind")
    a1.set_yscale("log")
    a1.set_xlabel(f"streams per worker ({s['sample_fps']:g} fps sampled each)")
    a1.set_ylabel("latency, ms")
    a1.legend(fontsize=7)
    a1.set_title(f"keeps up to {s['streams_per_worker']} streams — {_subtitle(result)}", fontsize=8)
    vals = [s["one_process_frames_per_s"] or 0, s["two_processes_frames_per_s"] or 0]
    a2.bar(["1 process", "2 processes"], vals, color=["#4c72b0", "#55a868"])
    for i, v in enumerate(vals):
        a2.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    r = s.get("two_vs_one_process")
    a2.set_title(f"backlog frames/s (x{r:.2f})" if r else "backlog frames/s", fontsize=9)
    return _save(fig, path)


def chart_ab(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    rows = result["summary"]["variants"]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    names = list(rows)
    vals = [rows[n]["faces_per_s"] or 0 for n in names]
    ax.barh(names, vals, color="#4c72b0")
    for i, n in enumerate(names):
        r = rows[n].get("vs_baseline")
        ax.text(vals[i], i, f" {vals[i]:.1f}" + (f" (x{r:.2f})" if r else ""), va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("pipeline faces/s (median of alternating runs)")
    ax.set_title(f"bottleneck fixes, A/B in one run — {_subtitle(result)}", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def chart_detection(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    s = result["summary"]
    names = list(s["frames_per_s"])
    vals = [s["frames_per_s"][n] or 0 for n in names]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.barh(names, vals, color="#4c72b0")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("frames/s through `run` (median)")
    r = s.get("speedup_default_vs_before")
    ax.set_title(f"detection: default/before = {r:.2f}x — {_subtitle(result)}" if r else "detection", fontsize=9)
    return _save(fig, path)


def chart_crowd(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    rows = result["summary"]["table"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(FIGSIZE[0], FIGSIZE[1] + 0.4), gridspec_kw={"width_ratios": [1, 1]})
    grids = list(dict.fromkeys(k.split(" ", 1)[0] for k in rows))
    configs = list(dict.fromkeys(k.split(" ", 1)[1] for k in rows))
    width = 0.8 / max(1, len(configs))
    colors = ["#4c72b0", "#dd8452", "#55a868"]
    for j, cfg in enumerate(configs):
        vals = [(rows.get(f"{g} {cfg}") or {}).get("faces_per_s") or 0 for g in grids]
        xs = [i + (j - (len(configs) - 1) / 2) * width for i in range(len(grids))]
        a1.bar(xs, vals, width, label=cfg, color=colors[j % len(colors)])
        for x, g, v in zip(xs, grids, vals, strict=True):
            row = rows.get(f"{g} {cfg}") or {}
            fps, rec = row.get("frames_per_s") or 0, row.get("tile_recall") or 0
            a1.text(x, 0.97 * v, f"{fps:.0f} fr/s\n{rec:.0%}\nfound", ha="center", va="top", fontsize=6, color="white")
    a1.set_xticks(range(len(grids)), [f"{g} tiles" for g in grids], fontsize=8)
    a1.set_ylabel("faces/s (median)")
    a1.set_ylim(0, 1.25 * max([(r.get("faces_per_s") or 0) for r in rows.values()] + [1]))
    a1.legend(fontsize=7, loc="upper right")
    a1.set_title("many small faces through `run`", fontsize=9)
    for y, row in enumerate(reversed(list(rows.values()))):
        _stage_bars(a2, row["stage_share_of_wall"], "", y, legend=y == 0, min_label=0.11)
    a2.set_yticks(range(len(rows)), list(reversed(list(rows))), fontsize=7)
    a2.set_xlim(0, 1)
    a2.set_xlabel("share of wall time")
    a2.set_title(_subtitle(result), fontsize=8)
    a2.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return _save(fig, path)


def chart_view(result: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    half = result["samples"]["half_load"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=FIGSIZE, gridspec_kw={"width_ratios": [2, 1]})
    data = [s["delays_ms"] or [0.0] for s in half["streams"]]
    a1.boxplot(data, whis=(1, 99), showfliers=False)
    a1.set_xticks(range(1, len(data) + 1), [s["stream"] for s in half["streams"]])
    a1.axhline(1000 * result["params"]["targets"]["delay_p95_s"], color="red", lw=0.8, ls="--", label="target")
    a1.set_ylabel("capture-to-picture delay, ms")
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3, axis="y")
    rates = [s["pictures_per_s"] or 0.0 for s in half["streams"]]
    cpu = 100 * (half["view_cpu_share_per_stream"] or 0.0)
    a2.bar(["pictures/s\n(min)", "CPU %\nper stream"], [min(rates or [0.0]), cpu], color=["#4c72b0", "#dd8452"])
    a2.axhline(result["params"]["targets"]["pictures_per_s"], color="#4c72b0", lw=0.8, ls="--")
    a2.axhline(100 * result["params"]["targets"]["cpu_share_per_stream"], color="#dd8452", lw=0.8, ls="--")
    fig.suptitle(
        f"view at half load ({result['summary']['stream_fps']:.1f} fr/s per stream) — {_subtitle(result)}", fontsize=9
    )
    return _save(fig, path)


CHARTS = {
    "engine": chart_engine,
    "pipeline": chart_pipeline,
    "decode": chart_decode,
    "latency": chart_latency,
    "landmarks": chart_landmarks,
    "scaling": chart_scaling,
    "bottlenecks": chart_ab,
    "detection": chart_detection,
    "crowd": chart_crowd,
    "view": chart_view,
}
