"""Accuracy-budgeted Q/DQ graphs: layer groups from node names, Q/DQ removed per group without
recalibration, and the search that keeps the fewest groups meeting a PSNR target."""

import json

import numpy as np
import onnx
import pytest
import torch

from rsd_deploy.checkpoints import save_pipeline
from rsd_deploy.export.cli import main
from rsd_deploy.export.onnx_export import export_stage
from rsd_deploy.export.parity import run_onnx
from rsd_deploy.export.precision import quantize_qdq
from rsd_deploy.export.quality_budget import group_of, keep_in_high_precision, quantized_groups
from rsd_deploy.export.stages import ShapeRange, describe_stages, stage_inputs_from_images


def test_groups_are_module_blocks():
    assert group_of("/unet/input_blocks.4/input_blocks.4.0/in_layers/in_layers.2/Conv") == "unet/input_blocks.4"
    assert group_of("/unet/Concat_2") == "unet"  # glue between blocks
    assert group_of("/decoder/up_blocks.1/resnets.0/conv1/Conv") == "decoder/up_blocks.1"
    assert group_of("/post_quant_conv/Conv") == "post_quant_conv" and group_of("/Resize") is None


@pytest.fixture(scope="module")
def int8_generator(micro, tmp_path_factory):
    out = tmp_path_factory.mktemp("budget")
    spec = describe_stages(micro)["generator"]
    fp32 = export_stage(spec, micro, out / "generator.fp32.onnx", ShapeRange(batch=(1, 1, 2), height=(64, 64, 128), width=(64, 64, 128)))
    real = stage_inputs_from_images(micro, torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))["generator"]
    quantize_qdq(fp32, out / "generator.int8.onnx", {k: v.numpy() for k, v in real.items()}, "int8", "max")
    return fp32, onnx.load(str(out / "generator.int8.onnx")), real


def test_keeping_groups_removes_only_their_qdq(int8_generator, tmp_path):
    fp32, model, feeds = int8_generator
    groups = quantized_groups(model)
    assert len(groups) >= 2
    first = max(groups, key=lambda g: len(groups[g]))  # a block with convolutions: their weights' Q/DQ go too
    kept = keep_in_high_precision(model, {first})
    assert first not in quantized_groups(kept) and set(quantized_groups(kept)) == set(groups) - {first}
    count = sum(n.op_type == "QuantizeLinear" for n in kept.graph.node)
    assert 0 < count < sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    # every group back in high precision is the fp32 graph again (up to float rounding)
    everything = keep_in_high_precision(model, set(groups))
    assert not quantized_groups(everything)
    onnx.save(everything, str(tmp_path / "float.onnx"))
    got, want = run_onnx(tmp_path / "float.onnx", feeds)[0], run_onnx(fp32, feeds)[0]
    assert np.abs(got - want).max() < 1e-4


def test_rsd_export_meets_the_budget_with_the_fewest_groups(micro_pixel_unshuffle, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    save_pipeline(micro_pixel_unshuffle, checkpoint)
    common = ["--checkpoint", str(checkpoint), "--precision", "int8", "--lr-size", "64", "--batch", "1", "--engine", "none",
              "--calib-count", "2", "--eval-count", "1"]
    out = tmp_path / "budget"
    assert main([*common, "--quality-budget-psnr", "50", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    budget = report["quality_budget"]
    assert budget["target_psnr_db"] == 50 and budget["achieved_psnr_db"] >= 50
    assert budget["quantized"] == budget["groups"] - len(budget["kept"])
    if budget["plain_psnr_db"] < 50:  # the search had to keep groups: the most sensitive ones
        assert budget["kept"] and all(budget["sensitivity"][g] >= min(budget["sensitivity"].values()) for g in budget["kept"])
        assert budget["kept"][0] == max(budget["sensitivity"], key=budget["sensitivity"].get)
    assert abs(report["quality"]["rows"][0]["psnr_db"] - budget["achieved_psnr_db"]) < 1e-6  # the graphs written are the ones measured
    assert "**Quality budget:**" in (out / "report.md").read_text()
    unreachable = tmp_path / "unreachable"  # above what even the float graph reaches against PyTorch
    assert main([*common, "--quality-budget-psnr", "199", "--out", str(unreachable)]) == 1
    failures = json.loads((unreachable / "report.json").read_text())["failures"]
    assert any(f.startswith("quality budget:") and "below the 199 dB asked" in f for f in failures), failures
    assert main([*common[:-6], "--precision", "fp16", "--quality-budget-psnr", "40", "--out", str(tmp_path / "x")]) == 2
    assert "applies to the Q/DQ precisions" in capsys.readouterr().err
