"""``report.json`` (everything) and ``report.md`` (the tables a person reads), written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rsd_deploy.atomic import atomic_path


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.2e}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}g}" if abs(value) < 1e3 else f"{value:.0f}"
    return str(value)


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def markdown(report: dict) -> str:
    lines = [f"# rsd-export report ({report['precision']})", ""]
    lines += [f"**Model:** {report['model']['description']}", ""]
    if report["model"].get("untrained"):
        lines += ["> **UNTRAINED WEIGHTS**: the official architecture with seeded random weights. The graphs and the",
                  "> precision machinery are real; quality numbers describe random weights, not a trained model.", ""]
    lines += [f"Shape range: {report['shape_range_text']}. Exporter: {report['exporter']}. Versions: "
              + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    lines += ["## Artifacts", "", "| stage | precision | file | size (MB) | inputs | outputs | time (s) |", "|---|---|---|---|---|---|---|"]
    for item in report["artifacts"]:
        sig = item["signature"]

        def names(values):
            return "<br>".join(f"`{v['name']}` {v['dtype']} [{', '.join(str(d) for d in v['shape'])}]" for v in values)

        lines.append(f"| {item['stage']} | {item['precision']} | `{item['file']}` | {item['bytes'] / 1e6:.1f} | {names(sig['inputs'])} | {names(sig['outputs'])} | {_fmt(item['seconds'])} |")
    lines += ["", "## FP32 parity (ONNX Runtime vs PyTorch, relative L2)", "",
              "| stage | inputs | relative L2 | PyTorch (s) | ONNX Runtime (s) |", "|---|---|---|---|---|"]
    for row in report["parity"]:
        lines.append(f"| {row['stage']} | {row['inputs']} | {_fmt(row['relative_l2'])} | {_fmt(row['torch_s'])} | {_fmt(row['onnxruntime_s'])} |")
    if report.get("quality"):
        quality = report["quality"]
        lines += ["", f"## {report['precision']} vs the fp32 PyTorch pipeline (held-out crops)", "",
                  f"Images: {quality['images']}. LPIPS: {quality['lpips_kind']}.", "",
                  "| graphs | PSNR (dB) | LPIPS distance | fp32 LPIPS to HR | this LPIPS to HR | run time (s) |", "|---|---|---|---|---|---|"]
        for row in quality["rows"]:
            lines.append(f"| {row['graphs']} | {_fmt(row.get('psnr_db'))} | {_fmt(row.get('lpips'))} | {_fmt(row.get('lpips_fp32_to_hr'))} | {_fmt(row.get('lpips_to_hr'))} | {_fmt(row.get('seconds'))} |")
        for note in quality.get("notes", []):
            lines.append(f"- {note}")
    if report.get("quality_budget"):
        budget = report["quality_budget"]
        lines += ["", f"**Quality budget:** target {budget['target_psnr_db']:g} dB PSNR vs fp32, achieved {budget['achieved_psnr_db']:.2f} dB "
                  f"(every group quantized: {budget['plain_psnr_db']:.2f} dB) with {len(budget['kept'])} of {budget['groups']} layer groups in high "
                  f"precision ({', '.join(f'`{g}`' for g in budget['kept']) or 'none'}); {budget['quantized']} groups quantized; "
                  f"{budget['evaluations']} chain evaluations, {budget['seconds']:.0f} s."]
    if report.get("precision_details"):
        lines += ["", "## Precision details", ""]
        for stage, details in report["precision_details"].items():
            lines.append(f"- **{stage}**: " + json.dumps(details, default=_json_default))
    if report.get("calibration"):
        cal = report["calibration"]
        lines += ["", "## Calibration set", "", f"{cal['source']}: {cal['count']} crops, LR {cal['lr_size']}."]
    trt = report["tensorrt"]
    lines += ["", "## TensorRT", "", trt["status"] + ".", ""]
    if trt.get("engines"):
        lines += [f"Engines run on {trt['runs_on']}.", "",
                  "| stage | precision | engine | size (MB) | network layers | build (s) | warnings | target | vs ONNX Runtime |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in trt["engines"]:
            state = ("built" if e["built_now"] else "cached") if e["error"] is None else f"FAILED: {e['error']}"
            comparison = e.get("comparison", "-")
            if isinstance(comparison, dict):
                comparison = ("passed" if comparison["passed"] else "FAILED") + f" (median excess error {_fmt(comparison['median_excess_error'])})"
            lines.append(f"| {e['stage']} | {e['precision']} | {state} | {_fmt(e['bytes'] / 1e6) if e['bytes'] else '-'} | "
                         f"{_fmt(e['network_layers'])} | {_fmt(e['build_seconds'])} | {_fmt(e['warnings'])} | {e['target']} | {comparison} |")
    for item in trt.get("commands", []):
        lines += [f"- {item['stage']}:", "", "  ```", f"  {item['trtexec']}", f"  {item['polygraphy']}", "  ```"]
    if report.get("failures"):
        lines += ["", "## Failed checks", ""] + [f"- {failure}" for failure in report["failures"]]
    lines += ["", f"Total time: {report['total_seconds']:.1f} s on {report['host']}.", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict) -> tuple[Path, Path]:
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(report))
    return json_path, md_path
