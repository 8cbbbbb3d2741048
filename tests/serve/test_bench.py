"""rsd-bench on the tiny model: one run, several backends side by side, reports written, missing
backends listed with their reason, quality measured against the fp32 reference."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from rsd_deploy.export import bench
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.schedule import TEACHER_4


@pytest.fixture(scope="module")
def report(tmp_path_factory, demo, demo_teacher, onnx_dir_with_pipeline):
    out = tmp_path_factory.mktemp("bench")
    # the 4-step (ResShift v3) schedule keeps the multi-step reference cheap in CI
    teacher = SRPipeline(demo_teacher.unet, demo_teacher.codec, TEACHER_4, "demo teacher, 4 steps")
    timer = bench.Timer(torch.device("cpu"), warmup=1, min_iters=1, max_iters=1, budget_s=0.0)
    selected = ["pytorch-fp32", "pytorch-fp32-sdpa", "pytorch-fp32-triton", "onnxruntime-cpu", "onnxruntime-cuda",
                "tensorrt-fp16", "upstream-rsd-1step", "upstream-resshift"]
    lines = []
    result = bench.run_bench(demo, out, batches=[1], sizes=[64], selected=selected, teacher=teacher,
                             onnx_dir=onnx_dir_with_pipeline, device=torch.device("cpu"), timer=timer, log=lambda line: (lines.append(line), print(line)))
    return out, result, lines


def rows(result, backend):
    return [r for r in result["results"] if r["backend"] == backend]


def test_every_selected_backend_is_measured_or_explained(report):
    _, result, _ = report
    measured = {r["backend"] for r in result["results"]}
    assert measured == {"pytorch-fp32", "pytorch-fp32-sdpa", "onnxruntime-cpu", "upstream-rsd-1step", "upstream-resshift"}
    reasons = {u["backend"]: u["reason"] for u in result["unavailable"]}
    assert "CUDA GPU" in reasons["pytorch-fp32-triton"]
    assert "CUDAExecutionProvider" in reasons["onnxruntime-cuda"]
    assert reasons["tensorrt-fp16"] == "running TensorRT engines needs a CUDA GPU"
    # unselected backends are listed too, never silently dropped
    assert reasons["torch-compile"] == "not selected (--backends)"
    assert set(measured) | set(reasons) == {b.name for b in bench.backends(torch.device("cpu"))}


def test_latency_memory_and_stage_breakdown(report):
    _, result, _ = report
    for row in result["results"]:
        assert (row["batch"], row["lr_size"]) == (1, 64)
        e2e = row["end_to_end"]
        assert e2e["p50_ms"] > 0 and e2e["iterations"] == 1
        assert set(row["stages"]) == {"encoder", "generator", "decoder"}
        assert row["memory"]["peak_rss_mib"] > 100  # torch alone is more than that
    assert "4 steps" in result["backends"]["upstream-resshift"]["notes"]
    for row in rows(result, "pytorch-fp32"):
        assert row["speedup_vs_upstream_rsd"] > 0 and row["speedup_vs_upstream_resshift"] > 0


def test_quality_against_the_fp32_reference(report):
    _, result, _ = report
    for backend in ("pytorch-fp32-sdpa", "onnxruntime-cpu", "upstream-rsd-1step"):
        for row in rows(result, backend):
            assert row["quality"]["psnr_db"] > 45, (backend, row["quality"])  # same math, float rounding only
    for row in rows(result, "upstream-resshift"):
        assert row["quality"]["psnr_db"] is None  # another model (the teacher): not comparable
    assert result["quality_metrics"]["lpips"]  # either the metric used or why it is not reported


def test_reports_written(report):
    out, result, lines = report
    assert json.loads((out / "bench.json").read_text())["results"] == json.loads(json.dumps(result["results"]))
    markdown = (out / "bench.md").read_text()
    assert "| pytorch-fp32 | 1 | 64 |" in markdown and "`tensorrt-fp16`:" in markdown
    with Image.open(out / "bench.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert any("onnxruntime-cpu" in line and "img/s" in line for line in lines)


def test_cli_lists_backends_and_rejects_bad_grids(capsys):
    assert bench.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "upstream-resshift" in listed and "torch-compile" in listed
    with pytest.raises(SystemExit):
        bench.main(["--lr-size", "100"])
    assert "multiples of 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--batch", "0"])
    assert bench.main(["--backends", "no-such-backend", "--out", "/nonexistent/never"]) == 1
    assert "unknown backends" in capsys.readouterr().err
