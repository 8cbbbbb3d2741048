"""The rsd-bench registry: properties as fields, selection by name or group, and makers that say
why a backend cannot run here."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy import chain
from rsd_deploy.export.bench_backends import (PROCEDURE, BenchContext, _covers, backends, select)
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
    ctx.plugin_onnx_dir = ctx.onnx_dir = tmp_path
    with pytest.raises(RunnerUnavailable, match="encoder.int8.onnx, .*generator.int8.onnx, .*decoder.int8.onnx missing"):
        registry["tensorrt-int8"].make(ctx)
    with pytest.raises(RunnerUnavailable, match="no exported graphs: .*encoder.fp32.onnx"):
        registry["onnxruntime-cpu"].make(ctx)
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
