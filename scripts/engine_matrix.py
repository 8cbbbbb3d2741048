"""Build a TensorRT engine from every graph rsd-export writes, for several models, precisions and
shape ranges, and print one table (markdown) plus JSON: the evidence behind docs/deploy.md's
"which TensorRT" numbers.

Graphs are exported once per (model, precision) by the same library call as ``rsd-export``
(``export_all`` with ``--engine none``), then built with TensorRT for RTX ahead of time for each
shape range from the same files.

    python scripts/engine_matrix.py --models tiny-rsd,demo,rsd-x4 --precisions fp32,fp16,int8 --out runs/matrix
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rsd_deploy.checkpoints import build_pipeline, default_pipeline
from rsd_deploy.export import tensorrt as trt_tools
from rsd_deploy.export.stages import STAGE_NAMES, ShapeRange, describe_stages, onnx_file_name
from rsd_deploy.export.workflow import ExportOptions, export_all

RANGES = {
    "default": ShapeRange(),  # batch 1..4, LR 64..256
    "large-tile": ShapeRange(batch=(1, 1, 4), height=(64, 64, 512), width=(64, 64, 512)),
}


def model(name: str):
    return default_pipeline() if name == "demo" else build_pipeline(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny-rsd,demo,rsd-x4", help="presets, or 'demo' for the embedded default")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--ranges", default=",".join(RANGES))
    parser.add_argument("--compute-capability", default="sm89")
    parser.add_argument("--calib-count", type=int, default=2, help="INT8 calibration crops (buildability, not quality)")
    parser.add_argument("--out", type=Path, default=Path("runs/engine-matrix"))
    args = parser.parse_args(argv)
    target, reason = trt_tools.resolve_target("tensorrt-rtx", trt_tools.parse_compute_capabilities(args.compute_capability))
    print(reason, flush=True)
    rows = []
    for name in args.models.split(","):
        pipe = model(name)
        stages = describe_stages(pipe)
        for precision in args.precisions.split(","):
            folder = args.out / name / precision
            began = time.perf_counter()
            options = ExportOptions(precision=precision, stages=STAGE_NAMES, out=folder, engine="none", calib_count=args.calib_count, eval_count=1)
            report = export_all(pipe, options, log=lambda line: None)
            print(f"{name} {precision}: exported in {time.perf_counter() - began:.0f} s; failures: {report.failures or 'none'}", flush=True)
            for range_name in args.ranges.split(","):
                for stage in STAGE_NAMES:
                    graph = folder / onnx_file_name(stage, precision)
                    record = trt_tools.cached_engine(graph, stages[stage], precision, RANGES[range_name], folder / "engines", target)
                    row = {"model": name, "precision": precision, "range": range_name, "shape_range": str(RANGES[range_name]), **asdict(record)}
                    rows.append(row)
                    state = "ok" if record.ok else f"FAILED: {record.error}"
                    print(f"  {range_name:10s} {stage:9s} {state} {record.build_seconds}s {record.bytes or 0:,} B, "
                          f"{record.network_layers} layers, {record.warnings} warnings", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matrix.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| model | precision | range | stage | built | size (MB) | network layers | build (s) | warnings |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['range']} | {r['stage']} | {'yes' if r['error'] is None else 'NO: ' + r['error'][:120]} | "
                     f"{(r['bytes'] or 0) / 1e6:.1f} | {r['network_layers']} | {r['build_seconds']} | {r['warnings']} |")
    (args.out / "matrix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["error"] is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
