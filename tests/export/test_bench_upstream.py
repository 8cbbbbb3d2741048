"""The upstream procedures as runners: the official sampling procedure, its own stages, the
official scripts' precisions (and which script runs which model)."""

from __future__ import annotations

import copy

import pytest
import torch

from rsd_deploy.export.bench_inputs import case_inputs
from rsd_deploy.export.bench_upstream import (FP16_AUTOCAST, FP16_TORSO, RESSHIFT, RESSHIFT_V3, RSD, SAMPLER, SINSR, UPSTREAM_STAGES,
                                              HalfCodec, UpstreamProcedure, half_torso, official_script)
from rsd_deploy.metrics import psnr
from rsd_deploy.export.runners import TorchRunner
from rsd_deploy.export.stages import FUSED


def test_one_step_procedure_computes_what_the_chain_computes(micro_pixel_unshuffle):
    pipe = micro_pixel_unshuffle
    case = case_inputs(pipe, batch=1, size=64, seed=1)
    upstream = UpstreamProcedure(pipe, 1, "cpu", seed=1)
    assert upstream.stages == ("encoder", "generator", "decoder") and upstream.precision == "fp32" and "1 step" in upstream.notes
    assert upstream.notes.startswith("project pipeline, unbatched")
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


def test_which_official_script_runs_which_model(micro_pixel_unshuffle, tiny_teacher):
    assert official_script(micro_pixel_unshuffle, 1) is RSD  # a noise map: RSD's student
    assert official_script(tiny_teacher, 1) is SINSR and official_script(tiny_teacher, 15) is RESSHIFT
    assert official_script(tiny_teacher, 4) is RESSHIFT_V3
    assert (RESSHIFT.precision, SINSR.precision, RSD.precision) == (FP16_AUTOCAST, FP16_TORSO, FP16_TORSO)
    assert dict(RESSHIFT.sampler_kwargs)["use_amp"] and dict(RSD.sampler_kwargs)["use_fp16"]


def test_precision_labels_on_a_cpu(micro_pixel_unshuffle, tiny_teacher):
    """On a CPU every script runs fp32 (their fp16 is CUDA-only) and the notes say what it runs on CUDA."""
    student = UpstreamProcedure(micro_pixel_unshuffle, 1, "cpu")
    assert student.precision == "fp32" and "fp32: inference.py --task RSD --one_step runs fp16 UNet torso + fp16 autoencoder on CUDA only" \
        in student.notes
    teacher = UpstreamProcedure(tiny_teacher, 15, "cpu")
    assert "for the official ResShift procedure; fp32: inference_resshift.py runs fp16 autocast on CUDA only" in teacher.notes
    with pytest.raises(ValueError, match="the official scripts' fp16 runs on CUDA only"):
        UpstreamProcedure(tiny_teacher, 15, "cpu", precision=FP16_AUTOCAST)
    with pytest.raises(ValueError, match="precision: expected one of"):
        UpstreamProcedure(tiny_teacher, 15, "cpu", precision="int8")


def test_half_torso_and_half_autoencoder(micro):
    """SinSR / RSD's use_fp16: the torso's convolutions and linear layers in fp16, the time embedding
    and the output head in fp32, activations cast at the torso's edges; the autoencoder in fp16
    with fp32 in and out. (On the CPU, where fp16 convolutions run, slowly: small maps.)"""
    unet = copy.deepcopy(micro.unet)
    half_torso(unet)
    assert unet.input_blocks[0][0].weight.dtype == unet.output_blocks[-1][0].in_layers[2].weight.dtype == torch.float16
    assert unet.time_embed[0].weight.dtype == unet.out[2].weight.dtype == torch.float32
    assert unet.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # GroupNorm stays fp32, as convert_module_to_f16
    generator = torch.Generator().manual_seed(0)
    x, lq, noise = (torch.randn(1, c, 16, 16, generator=generator) for c in (3, 3, 1))
    t = torch.tensor([14])
    with torch.no_grad():
        reference, half = micro.unet(x, t, lq, noise), unet(x, t, lq, noise)
    assert half.dtype == torch.float32 and 1e-5 < ((half - reference).norm() / reference.norm()).item() < 1e-2  # fp16 rounding
    codec = HalfCodec(copy.deepcopy(micro.codec))
    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        z = codec.encode(image)
        assert z.dtype == codec.decode(z).dtype == torch.float32 and codec.inner.vq.encoder.conv_in.weight.dtype == torch.float16
        torch.testing.assert_close(z, micro.codec.encode(image), rtol=0, atol=5e-2)
