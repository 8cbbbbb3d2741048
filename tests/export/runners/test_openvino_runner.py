"""The OpenVINO runner: exported graphs compiled for the CPU at an inference precision, chained
like PyTorch; INT8 from the Q/DQ graphs; one-line reasons when it cannot run."""

import sys

import numpy as np
import pytest
import torch

from rsd_deploy import chain
from rsd_deploy.export.onnx_export import export_stage
from rsd_deploy.metrics import psnr
from rsd_deploy.export.precision import quantize_qdq
from rsd_deploy.export.runners import OpenVINORunner, RunnerUnavailable, TorchRunner
from rsd_deploy.export.runners import openvino_runner
from rsd_deploy.export.stages import CHAINED_STAGES, ShapeRange, describe_stages

pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'rsd-deploy[openvino]')")

SHAPES = ShapeRange(batch=(1, 1, 2), height=(64, 64, 64), width=(64, 64, 64))


@pytest.fixture(scope="module")
def graphs(stage_files):
    """The demo model's fp32 stage graphs from a real rsd-export run (tests/export/conftest.py)."""
    return stage_files


def _chain_inputs(demo):
    generator = torch.Generator().manual_seed(1)
    lr = torch.rand(1, 3, 50, 64, generator=generator)
    channels = demo.codec.latent_channels
    eps, noise_map = torch.randn(1, channels, 64, 64, generator=generator), torch.randn(1, 1, 64, 64, generator=generator)
    return lr, eps, noise_map if demo.takes_noise_map else None, demo.schedule.prior_scale, demo.codec.scale


def test_f32_chain_matches_pytorch(demo, graphs):
    runner = OpenVINORunner(graphs, "fp32", threads=1)
    assert runner.stages == CHAINED_STAGES and runner.precision == "fp32" and "INFERENCE_PRECISION_HINT f32, 1 threads" in runner.notes
    args = _chain_inputs(demo)
    ours, reference = chain.upscale(runner.stage_fn(), *args), chain.upscale(TorchRunner(demo).stage_fn(), *args)
    assert ((ours - reference).norm() / reference.norm()).item() < 1e-4
    # outputs are copies: the next call does not overwrite what the last one returned
    first = runner.run("decoder", {"z": torch.randn(1, args[1].shape[1], 64, 64)})["hr"]
    kept = first.clone()
    runner.run("decoder", {"z": torch.randn(1, args[1].shape[1], 64, 64)})
    assert torch.equal(first, kept)


@pytest.mark.skipif("BF16" not in openvino_runner.cpu_capabilities(), reason="this CPU has no native bf16 (AVX-512 BF16 / AMX)")
def test_bf16_runs_near_fp32(demo, graphs):
    runner = OpenVINORunner(graphs, "fp32", "bf16", threads=1)
    assert runner.precision == "fp32 graphs, bf16 compute"
    args = _chain_inputs(demo)
    ours, reference = chain.upscale(runner.stage_fn(), *args), chain.upscale(TorchRunner(demo).stage_fn(), *args)
    assert 25 < psnr(ours, reference) < 90  # bf16 rounding: close, but not float32 exact


def test_int8_qdq_graphs(micro, tmp_path):
    """A Q/DQ graph (ModelOpt, as rsd-export --precision int8) of a VQ decoder runs with int8 kernels."""
    fp32_path = export_stage(describe_stages(micro)["decoder"], micro, tmp_path / "decoder.fp32.onnx", SHAPES)
    z = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    path = tmp_path / "decoder.int8.onnx"
    quantize_qdq(fp32_path, path, {"z": z}, "int8", "max")
    int8, fp32 = OpenVINORunner({"decoder": path}, "int8", threads=1), OpenVINORunner({"decoder": fp32_path}, "fp32", threads=1)
    assert int8.precision == "int8"
    feeds = {"z": torch.from_numpy(z[:1])}
    quantized, reference = int8.run("decoder", feeds)["hr"], fp32.run("decoder", feeds)["hr"]
    assert 15 < psnr(quantized, reference) < 80  # quantization error: close to fp32, not equal


def test_unavailable_and_bad_options(graphs, tmp_path, monkeypatch):
    with pytest.raises(RunnerUnavailable, match="no exported graph: .*missing.onnx"):
        OpenVINORunner({"encoder": tmp_path / "missing.onnx"}, "fp32")
    with pytest.raises(ValueError, match="inference_precision: expected one of f32, bf16, got 'f16'"):
        OpenVINORunner(graphs, "fp32", "f16")
    # a CPU without native bf16 (what OpenVINO reports on, e.g., AVX2-only CPUs)
    monkeypatch.setattr(openvino_runner, "cpu_capabilities", lambda: ("FP32", "INT8"))
    with pytest.raises(RunnerUnavailable, match="^this CPU has no native bf16 .*OpenVINO reports FP32, INT8$"):
        OpenVINORunner(graphs, "fp32", "bf16")
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed
    with pytest.raises(RunnerUnavailable, match=r"openvino is not installed .*pip install 'rsd-deploy\[openvino\]'"):
        OpenVINORunner(graphs, "fp32")
