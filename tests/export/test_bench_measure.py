"""rsd-bench's measuring on the bundled demo model: one run, several backends side by side, every
selected backend measured or explained, quality against the fp32 reference. Structure and counts
only: no assertion compares one backend's time with another's."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rsd_deploy.checkpoints import BUNDLED_DIR, DEMO_NAME, load_pipeline
from rsd_deploy.export.bench_backends import backends
from rsd_deploy.export.bench_inputs import case_inputs
from rsd_deploy.export.bench_measure import BenchOptions, NothingRan, end_to_end, run_bench
from rsd_deploy.metrics import psnr
from rsd_deploy.export.runners import OnnxRuntimeRunner
from rsd_deploy.export.stages import CHAINED_STAGES, FUSED
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.schedule import TEACHER_4

SELECTED = ("pytorch-fp32", "pytorch-fp32-sdpa", "pytorch-fp32-triton", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt-fp16",
            "upstream-rsd-1step", "upstream-resshift")
ONE_CALL = dict(warmup=1, min_iters=1, max_iters=1, budget_s=0.0)


@pytest.fixture(scope="module")
def bundled_demo() -> SRPipeline:
    return load_pipeline(BUNDLED_DIR / DEMO_NAME)


@pytest.fixture(scope="module")
def run(bundled_demo, tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    teacher = load_pipeline(BUNDLED_DIR / "demo-teacher")
    # the 4-step (ResShift v3) schedule keeps the multi-step anchor cheap in CI
    teacher = SRPipeline(teacher.unet, teacher.codec, TEACHER_4, "demo teacher, 4 steps")
    options = BenchOptions(batches=(1,), sizes=(64,), backends=SELECTED, device="cpu", work_dir=work, **ONE_CALL)
    lines: list[str] = []
    report = run_bench(bundled_demo, options, teacher, log=lines.append)
    return work, report, lines


def rows(report, backend):
    return [r for r in report.results if r.backend == backend]


def test_every_backend_is_measured_or_explained(run):
    _, report, lines = run
    measured = {r.backend for r in report.results}
    assert measured == {"pytorch-fp32", "pytorch-fp32-sdpa", "onnxruntime-cpu", "upstream-rsd-1step", "upstream-resshift"}
    assert set(report.backends) == measured
    reasons = {u["backend"]: u["reason"] for u in report.unavailable}
    if not torch.cuda.is_available():
        for name in ("pytorch-fp32-triton", "onnxruntime-cuda", "tensorrt-fp16"):
            assert reasons[name] == "needs a CUDA GPU (none visible to torch)"
    assert reasons["torch-compile"].startswith("not selected (--backends")  # unselected ones are listed too
    assert measured | set(reasons) == {b.name for b in backends(torch.device("cpu"))}
    assert any("exported the generator graph" in line for line in lines)  # no --onnx-dir: graphs exported into the work dir


def test_latency_memory_and_stage_breakdown(run):
    _, report, _ = run
    for row in report.results:
        assert (row.batch, row.lr_size) == (1, 64)
        assert row.end_to_end["iterations"] == 1 and row.end_to_end["p50_ms"] > 0 and row.end_to_end["images_per_s"] > 0
        assert set(row.stages) == {"encoder", "generator", "decoder"} and all(s["iterations"] == 1 for s in row.stages.values())
        assert row.memory["peak_rss_mib"] > 100  # torch alone is more than that
        assert set(row.speedup_vs) == {"upstream-rsd-1step", "upstream-resshift"}
    assert "4 steps" in report.backends["upstream-resshift"]["notes"]
    assert report.backends["pytorch-fp32"]["end_to_end"] == "the fused pipeline stage"
    assert report.backends["onnxruntime-cpu"]["end_to_end"] == "the fused pipeline stage"  # the exported pipeline graph
    assert report.backends["upstream-rsd-1step"]["end_to_end"].startswith("the procedure itself")
    (own,) = rows(report, "upstream-rsd-1step")
    assert own.speedup_vs["upstream-rsd-1step"] == 1.0


def test_quality_against_the_fp32_reference(run):
    _, report, _ = run
    (reference,) = rows(report, "pytorch-fp32")
    assert reference.quality["psnr_db"] == math.inf and reference.quality["lpips"] == 0.0
    for backend in ("pytorch-fp32-sdpa", "onnxruntime-cpu"):  # the same math in another order: float rounding only
        (row,) = rows(report, backend)
        assert math.isfinite(row.quality["psnr_db"]) and row.quality["psnr_db"] > 45, (backend, row.quality)
        assert math.isfinite(row.quality["lpips"])
    (upstream,) = rows(report, "upstream-rsd-1step")  # the same model and noise through SRPipeline.forward (inf: bit for bit)
    assert upstream.quality["psnr_db"] > 45 and math.isfinite(upstream.quality["lpips"])
    (teacher,) = rows(report, "upstream-resshift")
    assert teacher.quality == {"psnr_db": None, "lpips": None}  # another model (the teacher): not comparable
    assert report.quality_metrics["lpips"]  # which LPIPS it is (a random backbone says so)


def test_graphs_exported_once_are_reused(run, bundled_demo):
    work, _, _ = run
    lines: list[str] = []
    options = BenchOptions(batches=(1,), sizes=(64,), backends=("onnxruntime-cpu",), device="cpu", work_dir=work, **ONE_CALL)
    report = run_bench(bundled_demo, options, log=lines.append)
    assert [r.backend for r in report.results] == ["onnxruntime-cpu"] and not any("exported" in line for line in lines)
    assert report.results[0].quality["psnr_db"] is None  # the reference did not run


def test_nothing_runnable_is_an_error_naming_each_reason(bundled_demo, tmp_path):
    options = BenchOptions(batches=(1,), sizes=(64,), backends=("tensorrt-int8", "upstream-resshift"), device="cpu",
                           work_dir=tmp_path / "never", **ONE_CALL)
    with pytest.raises(NothingRan, match="nothing could run: tensorrt-int8: .*; upstream-resshift: no teacher"):
        run_bench(bundled_demo, options, teacher=None, log=lambda line: None)
    assert not (tmp_path / "never").exists()


def test_end_to_end_through_the_chain_when_the_runner_has_no_fused_stage(run, bundled_demo):
    work, _, _ = run
    registry = {b.name: b for b in backends(torch.device("cpu"))}
    case = case_inputs(copy.deepcopy(bundled_demo).float(), 1, 64, seed=0)
    stages = OnnxRuntimeRunner({name: work / "onnx" / f"{name}.fp32.onnx" for name in CHAINED_STAGES}, "fp32")
    call, how = end_to_end(registry["onnxruntime-cpu"], stages, case)
    assert how == "chain.upscale over encoder, generator, decoder"
    fused = OnnxRuntimeRunner({FUSED: work / "onnx" / f"{FUSED}.fp32.onnx"}, "fp32")
    fused_call, fused_how = end_to_end(registry["onnxruntime-cpu"], fused, case)
    assert fused_how == "the fused pipeline stage" and psnr(call(), fused_call()) > 60
