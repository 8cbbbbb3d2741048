"""The reporting half of ``rsd-bench``: a :class:`~.bench_measure.BenchReport` as ``bench.json``,
``bench.md`` (one table) and ``bench.png`` (latency vs batch per backend, stacked per stage, one
panel per LR size). Everything here reads the report only: backend properties come from its
``backends`` entries, never from a backend's name."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rsd_deploy import chain
from rsd_deploy.atomic import atomic_path

from .bench_measure import BenchReport
from .bench_tiled import markdown_rows

FILES = ("bench.json", "bench.md", "bench.png")


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def markdown(report: BenchReport) -> str:
    env, timer = report.environment, report.timer
    anchors = [name for name, props in report.backends.items() if props["upstream"]]
    header = ["backend", "batch", "LR", "end-to-end p50 / p90 / p99 ms", "img/s", *(f"{s} p50" for s in chain.STAGE_NAMES),
              "peak GPU MiB", "peak RSS MiB", "PSNR dB", "LPIPS", *(f"x {name}" for name in anchors)]
    load = ", ".join(f"{v:.1f}" for v in env["load_average"]) if env.get("load_average") else "n/a"
    lines = [
        "# rsd-bench",
        "",
        f"Device: {env['device']}; {', '.join(f'{k} {v}' for k, v in env['versions'].items())}; "
        f"torch threads {env['torch_threads']}; load average at start {load}.",
        f"Model: {report.model}.",
        f"Latency ({timer['clock']}) after {timer['warmup']} warm-up call(s), {timer['min_iters']}-{timer['max_iters']} timed calls "
        f"per number within {timer['budget_s']} s. PSNR: {report.quality_metrics['psnr']}. LPIPS: {report.quality_metrics['lpips']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in report.results:
        e2e, memory, quality = r.end_to_end, r.memory, r.quality
        gpu = memory.get("peak_gpu_allocated_mib", memory.get("gpu_in_use_mib", memory.get("gpu_growth_mib")))
        cells = [r.backend, str(r.batch), str(r.lr_size), f"{_fmt(e2e['p50_ms'])} / {_fmt(e2e['p90_ms'])} / {_fmt(e2e['p99_ms'])}",
                 _fmt(e2e["images_per_s"], 2), *(_fmt(r.stages[s]["p50_ms"]) if s in r.stages else "-" for s in chain.STAGE_NAMES),
                 _fmt(gpu), _fmt(memory["peak_rss_mib"], 0), _fmt(quality.get("psnr_db")), _fmt(quality.get("lpips"), 3),
                 *(_fmt(r.speedup_vs.get(name), 2) for name in anchors)]
        lines.append("| " + " | ".join(cells) + " |")
    if report.unavailable:
        lines += ["", "Not run:", ""] + [f"- `{u['backend']}`: {u['reason']}" for u in report.unavailable]
    notes = [f"- `{name}`: {b['summary']}" + (f" ({b['notes']})" if b["notes"] else "") + f"; end to end: {b['end_to_end']}"
             for name, b in report.backends.items()]
    return "\n".join(lines + markdown_rows(report.large_image) + ["", "Backends:", ""] + notes) + "\n"


def plot(report: BenchReport, path: Path) -> None:
    """One panel per LR size: for each batch size a group of bars, one per backend, stacked
    encoder / generator / decoder p50, with the end-to-end p50 as a black tick. The y axis is
    linear and capped at 1.2x the slowest backend of the benchmarked model; taller bars (another
    model: the multi-step teacher) are cut and carry their value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, batches = report.grid["lr_size"], report.grid["batch"]
    names = list(report.backends)
    colors = dict(zip(chain.STAGE_NAMES, ("#4C72B0", "#DD8452", "#55A868")))
    same_model = [r.end_to_end["p50_ms"] for r in report.results if report.backends[r.backend]["same_model"]]
    cap = 1.2 * max(same_model) if same_model else None
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(6.0, 0.45 * len(names) * len(batches) + 2), 5), squeeze=False)
    labelled = set()
    for ax, size in zip(axes[0], sizes):
        ticks, labels = [], []
        for group, batch in enumerate(batches):
            for index, name in enumerate(names):
                row = next((r for r in report.results if r.backend == name and r.lr_size == size and r.batch == batch), None)
                if row is None:
                    continue
                x = group * (len(names) + 1) + index
                bottom = 0.0
                for stage in chain.STAGE_NAMES:
                    height = row.stages[stage]["p50_ms"] if stage in row.stages else 0.0
                    ax.bar(x, height, 0.8, bottom=bottom, color=colors[stage], label=None if stage in labelled else stage)
                    labelled.add(stage)
                    bottom += height
                e2e = row.end_to_end["p50_ms"]
                ax.plot([x - 0.4, x + 0.4], [e2e, e2e], "k-", linewidth=2, label=None if "e2e" in labelled else "end to end")
                labelled.add("e2e")
                if cap and max(e2e, bottom) > cap:
                    ax.text(x, cap * 0.98, f"{max(e2e, bottom) / 1000:.1f} s", ha="center", va="top", fontsize=7, rotation=90, color="white")
                ticks.append(x)
                labels.append(f"{name}  b{batch}")
        ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
        if cap:
            ax.set_ylim(0, cap)
        ax.set_ylabel("p50 latency per batch, ms")
        ax.set_title(f"LR {size}x{size}", fontsize=10)
    fig.suptitle(f"rsd-bench: {report.environment['device']}", fontsize=10)
    fig.legend(loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_report(report: BenchReport, out_dir: Path) -> list[Path]:
    """``bench.json``, ``bench.md`` and ``bench.png`` in ``out_dir``, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out_dir / name for name in FILES)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(report))
    plot(report, png_path)
    return [json_path, md_path, png_path]
