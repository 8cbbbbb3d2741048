"""The upstream procedures as runners: the official sampling procedure, its own stages."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy.export.bench_inputs import case_inputs
from rsd_deploy.export.bench_upstream import SAMPLER, UPSTREAM_STAGES, UpstreamProcedure
from rsd_deploy.export.parity import psnr
from rsd_deploy.export.runners import TorchRunner
from rsd_deploy.export.stages import FUSED


def test_one_step_procedure_computes_what_the_chain_computes(micro_pixel_unshuffle):
    pipe = micro_pixel_unshuffle
    case = case_inputs(pipe, batch=1, size=64, seed=1)
    upstream = UpstreamProcedure(pipe, 1, "cpu", seed=1)
    assert upstream.stages == ("encoder", "generator", "decoder") and upstream.precision == "fp32" and "1 step" in upstream.notes
    whole = upstream.upscale(case.lr)
    (fused,) = TorchRunner(pipe).run(FUSED, case.fused_feeds).values()
    assert whole.shape == (1, 3, 256, 256) and psnr(whole, fused) > 60  # the same noise: float rounding only
    # the sampler draws x_T itself from z_y, as the official samplers do
    assert SAMPLER.inputs == ("z_y", "lq")
    for stage in UPSTREAM_STAGES:
        (name,) = stage.outputs  # a chain tensor: z_y, x0, hr
        outputs = upstream.run(stage.name, case.feeds(stage))
        assert list(outputs) == [name]
        torch.testing.assert_close(outputs[name], case.tensors[name], rtol=1e-4, atol=1e-4)


def test_multi_step_procedure_and_step_counts(micro_pixel_unshuffle):
    pipe = micro_pixel_unshuffle
    upstream = UpstreamProcedure(pipe, pipe.schedule.steps, "cpu")
    assert f"{pipe.schedule.steps} steps" in upstream.notes
    with pytest.raises(ValueError, match="steps"):
        UpstreamProcedure(pipe, 3, "cpu")
