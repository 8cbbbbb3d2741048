"""Real-ESRGAN / bicubic LR synthesis: shapes, ranges, seeded determinism, kernel properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rsd_deploy.distill.data import HRCrops, StepSampler, skimage_photo
from rsd_deploy.distill.degradations import (
    MAX_KERNEL,
    StageConfig,
    bicubic_degrade,
    jpeg_roundtrip,
    random_blur_kernel,
    realesrgan_degrade,
    sinc_kernel,
)


@pytest.fixture(scope="module")
def hr_batch() -> torch.Tensor:
    crops = HRCrops([skimage_photo("astronaut"), skimage_photo("coffee")], crop=64, seed=3)
    return torch.stack([crops[i] for i in range(8)])


def test_realesrgan_is_seeded_and_quantised(hr_batch):
    a = realesrgan_degrade(hr_batch, seed=7)
    b = realesrgan_degrade(hr_batch, seed=7)
    c = realesrgan_degrade(hr_batch, seed=8)
    assert a.shape == (8, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, (a * 255).round() / 255)


def test_realesrgan_statistics(hr_batch):
    """Over many seeds the LR keeps the picture (brightness, correlation with the clean bicubic LR)
    while differing from it clearly: degraded, not replaced."""
    bicubic = bicubic_degrade(hr_batch)
    brightness, distance, correlation = [], [], []
    for seed in range(12):
        lr = realesrgan_degrade(hr_batch, seed=seed)
        brightness.append((lr.mean(dim=(1, 2, 3)) - bicubic.mean(dim=(1, 2, 3))).abs().mean().item())
        distance.append((lr - bicubic).abs().mean().item())
        correlation.append(np.corrcoef(lr.flatten().numpy(), bicubic.flatten().numpy())[0, 1])
    assert np.mean(brightness) < 0.05
    assert 0.01 < np.mean(distance) < 0.2
    assert np.mean(correlation) > 0.7


def test_bicubic_keeps_flat_images_flat():
    hr = torch.full((2, 3, 32, 48), 100 / 255)
    lr = bicubic_degrade(hr)
    assert lr.shape == (2, 3, 8, 12)
    assert torch.allclose(lr, torch.full_like(lr, 100 / 255))


def test_sizes_that_do_not_divide_fail_clearly():
    with pytest.raises(ValueError, match="multiple of the scale"):
        realesrgan_degrade(torch.rand(1, 3, 30, 32), seed=0)


@pytest.mark.parametrize("seed", range(6))
def test_blur_kernels_are_normalised_and_point_symmetric(seed):
    rng = np.random.default_rng(seed)
    kernel = random_blur_kernel(rng, 15, StageConfig())
    assert kernel.shape == (15, 15)
    assert math.isclose(kernel.sum(), 1.0, rel_tol=1e-9)
    assert np.allclose(kernel, kernel[::-1, ::-1])  # Gaussians are symmetric under x -> -x


def test_sinc_kernel_is_a_low_pass():
    kernel = sinc_kernel(math.pi / 3, MAX_KERNEL)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(kernel, s=(64, 64))))
    assert math.isclose(kernel.sum(), 1.0, rel_tol=1e-9)
    assert spectrum[32, 32] > 0.99 and spectrum[32, 0] < 0.1  # DC passes, Nyquist is cut


def test_jpeg_roundtrip_loses_more_at_low_quality(hr_batch):
    def error(quality):
        return (jpeg_roundtrip(hr_batch, np.full(len(hr_batch), quality)) - hr_batch).abs().mean().item()

    assert error(95) < error(30) < 0.1


def test_crops_are_a_function_of_seed_and_index():
    photos = [skimage_photo("camera"), skimage_photo("microaneurysms")]  # grey, and smaller than the crop
    a, b = HRCrops(photos, 128, seed=1), HRCrops(photos, 128, seed=1)
    assert all(torch.equal(a[i], b[i]) for i in range(8))
    assert len({a[i].sum().item() for i in range(8)}) > 2  # different images, places, flips
    assert a[5].shape == (3, 128, 128)
    sampler = iter(StepSampler(start=2, batch=3, rank=1, world=2))
    assert [next(sampler) for _ in range(6)] == [15, 16, 17, 21, 22, 23]
