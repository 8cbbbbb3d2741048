"""The rsd-bench registry: properties as fields, selection by name or group, and makers that say
why a backend cannot run here."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy import chain
from rsd_deploy.export.bench_backends import PROCEDURE, BenchContext, _covers, backends, exported_graphs, select
from rsd_deploy.export.bench_upstream import UPSTREAM_STAGES
from rsd_deploy.export.runners import RunnerUnavailable
from rsd_deploy.export.stages import ShapeRange

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def by_name(device=CPU):
    return {b.name: b for b in backends(device)}


def test_properties_are_fields():
    registry = backends(CPU)
    assert len({b.name for b in registry}) == len(registry)
    assert [b.name for b in registry if b.reference] == [registry[0].name] == ["pytorch-fp32"]  # the reference runs first
    upstream = [b for b in registry if b.upstream]
    assert {b.name for b in upstream} == {"upstream-rsd-1step", "upstream-resshift"}
    assert all(b.end_to_end == PROCEDURE and b.stages == UPSTREAM_STAGES for b in upstream)
    assert all(b.stages == chain.STAGES and b.end_to_end != PROCEDURE for b in registry if not b.upstream)
    assert [b.name for b in registry if not b.same_model] == ["upstream-resshift"]  # the teacher: quality not compared
    assert {b.name for b in registry if b.needs_gpu} >= {"pytorch-fp16-sdpa", "onnxruntime-cuda", "tensorrt-fp16", "tensorrt-int8"}
    cpu = {b.name for b in select(registry, ["cpu"])[0]}
    assert cpu >= {"onnxruntime-cpu", "onnxruntime-cpu-int8", "openvino-fp32", "openvino-bf16", "openvino-int8", "openvino-int8-bf16"}


def test_upstream_labels_say_what_runs_and_its_precision():
    registry = by_name()
    student, teacher = registry["upstream-rsd-1step"].summary, registry["upstream-resshift"].summary
    for summary in (student, teacher):
        assert "the official code when --upstream-src has its checkout" in summary and "else the project pipeline, unbatched" in summary
    assert "fp16 UNet torso + fp16 autoencoder on CUDA, fp32 on a CPU" in student and "fp16 autocast on CUDA, fp32 on a CPU" in teacher


def test_torch_compile_is_default_on_a_gpu_only():
    assert not by_name(CPU)["torch-compile"].default and "minutes" in by_name(CPU)["torch-compile"].not_default_reason
    assert by_name(CUDA)["torch-compile"].default


def test_selection_by_name_and_group():
    registry = backends(CPU)
    chosen, skipped = select(registry, ["default"])
    assert "torch-compile" not in {b.name for b in chosen} and "minutes" in skipped["torch-compile"]
    chosen, skipped = select(registry, ["gpu", "pytorch-fp32"])
    assert [b.name for b in chosen][0] == "pytorch-fp32" and all(b.needs_gpu for b in chosen[1:])
    assert skipped["pytorch-bf16"] == "not selected (--backends gpu,pytorch-fp32)"
    assert len(select(registry, ["all"])[0]) == len(registry)
    assert {b.name for b in select(registry, ["cpu"])[0]} == {b.name for b in registry if not b.needs_gpu}
    with pytest.raises(ValueError, match="--backends: unknown no-such; choose from default, all, gpu, cpu or pytorch-fp32"):
        select(registry, ["no-such"])


def test_makers_say_why_they_cannot_run(micro_pixel_unshuffle, tmp_path):
    shapes = ShapeRange(batch=(1, 1, 1), height=(64, 64, 64), width=(64, 64, 64))
    ctx = BenchContext(micro_pixel_unshuffle, None, CPU, shapes, tmp_path)
    registry = by_name()
    with pytest.raises(RunnerUnavailable, match="needs --onnx-dir \\(rsd-export --precision fp16\\)"):
        registry["tensorrt-fp16"].make(ctx)
    with pytest.raises(RunnerUnavailable, match="^needs --onnx-dir \\(rsd-export --precision int8\\)$"):
        registry["onnxruntime-cpu-int8"].make(ctx)
    ctx.plugin_onnx_dir = ctx.onnx_dir = tmp_path
    for name in ("tensorrt-int8", "onnxruntime-cpu"):  # --onnx-dir must be a complete rsd-export folder
        with pytest.raises(RunnerUnavailable, match="no report.json \\(not an rsd-export output folder\\)"):
            registry[name].make(ctx)
    with pytest.raises(RunnerUnavailable, match="no teacher"):
        registry["upstream-resshift"].make(ctx)
    if not torch.cuda.is_available():
        with pytest.raises(RunnerUnavailable, match="Triton window-attention kernel needs a CUDA GPU"):
            registry["pytorch-fp32-triton"].make(ctx)
    assert not list(tmp_path.iterdir())  # nothing written


def test_exported_graphs_are_reused_only_when_they_cover_the_grid():
    recorded = {"batch": [1, 1, 4], "lr_height": [64, 64, 256], "lr_width": [64, 64, 256]}
    assert _covers(recorded, ShapeRange(batch=(1, 1, 2), height=(64, 64, 128), width=(64, 64, 128)))
    assert not _covers(recorded, ShapeRange(batch=(1, 1, 8), height=(64, 64, 128), width=(64, 64, 128)))
    assert not _covers(recorded, ShapeRange(batch=(1, 1, 2), height=(64, 64, 512), width=(64, 64, 128)))
    assert not _covers({}, ShapeRange())


def test_onnx_dir_graphs_are_this_models_and_cover_the_grid(onnx_dir, demo, micro_pixel_unshuffle, tmp_path):
    """--onnx-dir is read as an rsd-export folder (artifacts.read_export): the graphs of one
    precision, of the benchmarked model, exported for a shape range that holds the grid."""
    grid = ShapeRange(batch=(1, 1, 2), height=(64, 64, 128), width=(64, 64, 128))
    ctx = BenchContext(demo, None, CPU, grid, tmp_path, onnx_dir)
    assert set(exported_graphs(ctx, "fp32")) >= set(chain.STAGE_NAMES)
    registry = by_name()
    with pytest.raises(RunnerUnavailable, match="no int8 graphs \\(report.json lists fp32\\); run rsd-export --precision int8"):
        registry["onnxruntime-cpu-int8"].make(ctx)
    ctx.shape_range = ShapeRange(batch=(1, 1, 8), height=(64, 64, 128), width=(64, 64, 128))
    with pytest.raises(RunnerUnavailable, match="exported for batch 1..4 .*the grid \\(--batch, --lr-size\\)"):
        exported_graphs(ctx, "fp32")
    other = BenchContext(micro_pixel_unshuffle, None, CPU, grid, tmp_path, onnx_dir)
    with pytest.raises(RunnerUnavailable, match="graphs of .*, not of the benchmarked 'UNTRAINED: micro test pipeline"):
        registry["onnxruntime-cpu"].make(other)
