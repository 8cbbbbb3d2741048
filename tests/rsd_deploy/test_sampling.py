"""Noise schedule tables, the samplers, and their determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.sampling import NoiseField, PRIOR_STREAM, predict_x0, sample_multi_step, sample_one_step
from rsd_deploy.schedule import TEACHER_4, TEACHER_15, ResShiftSchedule

TABLE_15 = [0.02, 0.1172, 0.1763, 0.2336, 0.2916, 0.3510, 0.4124, 0.4759, 0.5417, 0.6099, 0.6807, 0.7540, 0.8300, 0.9086, 0.99]
TABLE_4 = [0.1, 0.5201, 0.7614, 0.99]


def test_sqrt_eta_tables():
    assert np.abs(TEACHER_15.sqrt_etas - TABLE_15).max() < 1e-4
    assert np.abs(TEACHER_4.sqrt_etas - TABLE_4).max() < 1e-4


def test_forward_process_and_input_scaling():
    s = TEACHER_15
    x0, y, eps = torch.randn(3, 2, 3, 4, 4).unbind(0)
    t = torch.tensor([0, 14])
    x_t = s.q_sample(x0, y, t, eps)
    eta = torch.tensor(s.etas)[t].view(-1, 1, 1, 1).float()
    assert torch.allclose(x_t, x0 + eta * (y - x0) + 2.0 * eta.sqrt() * eps, atol=1e-6)
    assert torch.allclose(s.scale_input(x_t, t), x_t / torch.sqrt(4 * eta + 1), atol=1e-6)
    assert torch.allclose(s.prior_sample(y, eps), y + 1.98 * eps, atol=1e-6)


def test_posterior_matches_formula():
    s = ResShiftSchedule(steps=4, min_noise=0.2)
    x0, x_t = torch.randn(2, 1, 3, 2, 2).unbind(0)
    t = torch.tensor([2])
    mean, std = s.posterior(x0, x_t, t)
    eta, eta_prev = s.etas[2], s.etas[1]
    alpha = eta - eta_prev
    assert torch.allclose(mean, (eta_prev / eta) * x_t + (alpha / eta) * x0, atol=1e-6)
    assert torch.allclose(std, torch.full_like(std, (4 * eta_prev / eta * alpha) ** 0.5), atol=1e-6)


def test_noise_field_crops_are_tiling_independent():
    field = NoiseField(seed=7, block=16)
    whole = field.crop(0, PRIOR_STREAM, 3, 0, 0, 40, 50)
    assert torch.equal(field.crop(0, PRIOR_STREAM, 3, 13, 21, 20, 17), whole[:, 13:33, 21:38])
    assert not torch.equal(field.crop(1, PRIOR_STREAM, 3, 0, 0, 40, 50), whole)  # other sample
    assert not torch.equal(field.crop(0, PRIOR_STREAM + 1, 3, 0, 0, 40, 50), whole)  # other stream
    assert abs(whole.mean().item()) < 0.1 and abs(whole.std().item() - 1) < 0.1


def test_one_step_is_one_network_call_at_T_minus_1(tiny_rsd):
    unet, s = tiny_rsd.unet, tiny_rsd.schedule
    g = torch.Generator().manual_seed(0)
    z_y, lq, eps = (torch.randn(1, 3, 64, 64, generator=g) for _ in range(3))
    noise_map = torch.randn(1, 1, 64, 64, generator=g)
    with torch.no_grad():
        got = sample_one_step(unet, s, z_y, lq, eps, noise_map)
        t = torch.tensor([14])
        expected = unet((z_y + 1.98 * eps) / (4 * 0.99**2 + 1) ** 0.5, t, lq=lq, noise=noise_map)
    assert torch.allclose(got, expected, atol=1e-5)


def test_multi_step_chain_uses_every_step(tiny_teacher):
    unet, s = tiny_teacher.unet, ResShiftSchedule(steps=4, min_noise=0.2)
    g = torch.Generator().manual_seed(0)
    z_y, lq = torch.randn(2, 1, 3, 64, 64, generator=g).unbind(0)
    noises = {k: torch.randn(1, 3, 64, 64, generator=g) for k in range(8)}
    calls = []
    original = unet.forward

    def counting(x, t, lq=None, noise=None):
        calls.append(int(t[0]))
        return original(x, t, lq=lq, noise=noise)

    unet.forward = counting
    try:
        with torch.no_grad():
            out = sample_multi_step(unet, s, z_y, lq, lambda stream: noises[stream])
    finally:
        del unet.forward
    assert calls == [3, 2, 1, 0]
    with torch.no_grad():  # the last x0 estimate is returned
        assert out.shape == z_y.shape and torch.isfinite(out).all()


def test_pipeline_seeded_and_reproducible(tiny_rsd):
    lr = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    a = tiny_rsd(lr, seed=11)
    assert a.shape == (2, 3, 80, 96) and a.min() >= 0 and a.max() <= 1
    # same seed, same result, whatever the batch companions; another seed, another sample
    assert torch.equal(tiny_rsd(lr[:1], seed=11)[0], a[0])
    assert not torch.equal(tiny_rsd(lr[:1], seed=12)[0], a[0])


def test_teacher_steps(tiny_teacher):
    teacher = SRPipeline(tiny_teacher.unet, tiny_teacher.codec, TEACHER_4)
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    full = teacher(lr, steps=4, seed=1)
    one = teacher(lr, steps=1, seed=1)
    assert full.shape == one.shape == (1, 3, 64, 64) and not torch.equal(full, one)
    for steps in (3, 0, -1, 15, True):  # timesteps a 4-step model never saw: refused, in one line
        with pytest.raises(ValueError, match=rf"steps: this model's schedule has 4 steps, so run 1 \(one step at t = 3\) or 4, got {steps!r}"):
            teacher(lr, steps=steps)


def test_four_steps_on_a_fifteen_step_schedule_names_the_v3_config(tiny_teacher):
    with pytest.raises(ValueError, match="realsr_swinunet_realesrgan256_journal.yaml"):
        tiny_teacher(torch.rand(1, 3, 16, 16), steps=4)


def test_predict_x0_normalises_input(tiny_teacher):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = predict_x0(tiny_teacher.unet, tiny_teacher.schedule, x, x, 5)
        b = tiny_teacher.unet(tiny_teacher.schedule.scale_input(x, torch.tensor([5])), torch.tensor([5]), lq=x)
    assert torch.equal(a, b)
