"""The PyTorch runner: every stage and the fused graph's module, through the chain."""

import pytest
import torch

from rsd_deploy import chain
from rsd_deploy.export.runners import RunnerUnavailable, TorchRunner


def test_chain_through_the_runner_equals_the_fused_stage_and_the_pipeline(micro):
    runner = TorchRunner(micro)
    assert runner.stages == ("encoder", "generator", "decoder", "pipeline") and runner.precision == "fp32"
    generator = torch.Generator().manual_seed(0)
    lr = torch.rand(2, 3, 40, 64, generator=generator)
    eps = torch.randn(2, 3, 64, 64, generator=generator)
    noise_map = torch.randn(2, 1, 64, 64, generator=generator)
    chained = chain.upscale(runner.stage_fn(), lr, eps, noise_map, micro.schedule.prior_scale, micro.codec.scale)
    (fused,) = runner.run("pipeline", {"lr": lr, "eps": eps, "noise_map": noise_map}).values()
    assert chained.shape == (2, 3, 160, 256)
    torch.testing.assert_close(chained, fused, rtol=0, atol=1e-6)


def test_outputs_are_named_and_inputs_cast(micro):
    runner = TorchRunner(micro, dtype=torch.bfloat16)
    out = runner.run("decoder", {"z": torch.randn(1, 3, 64, 64, dtype=torch.float64)})
    assert list(out) == ["hr"] and out["hr"].dtype == torch.bfloat16 and runner.precision == "bf16"


def test_unavailable_backends_say_why(micro):
    with pytest.raises(RunnerUnavailable, match="Triton window-attention kernel needs a CUDA GPU"):
        TorchRunner(micro, attention="triton")
    if not torch.cuda.is_available():
        with pytest.raises(RunnerUnavailable, match="needs a CUDA GPU"):
            TorchRunner(micro, device="cuda")
