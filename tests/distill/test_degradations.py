"""Real-ESRGAN LR synthesis and training crops: shapes, ranges, seeded determinism, kernel properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rsd_deploy.degradation import bicubic_degrade
from rsd_deploy.distill import degradations
from rsd_deploy.distill.data import HRCrops, StepSampler
from rsd_deploy.distill.degradations import (
    MAX_KERNEL,
    RealESRGANConfig,
    StageConfig,
    final_kernel,
    jpeg_roundtrip,
    random_blur_kernel,
    realesrgan_degrade,
    sinc_kernel,
    stage_kernel,
)
from rsd_deploy.photos import photo_array


@pytest.fixture(scope="module")
def hr_batch() -> torch.Tensor:
    crops = HRCrops([photo_array("astronaut"), photo_array("coffee")], crop=64, seed=3)
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
    photos = [photo_array("camera"), photo_array("microaneurysms")]  # grey, and smaller than the crop
    a, b = HRCrops(photos, 128, seed=1), HRCrops(photos, 128, seed=1)
    assert all(torch.equal(a[i], b[i]) for i in range(8))
    assert len({a[i].sum().item() for i in range(8)}) > 2  # different images, places, flips
    assert a[5].shape == (3, 128, 128)
    sampler = iter(StepSampler(start=2, batch=3, rank=1, world=2))
    assert [next(sampler) for _ in range(6)] == [15, 16, 17, 21, 22, 23]


def test_kernel_sizes_are_resshifts(monkeypatch):
    """blur_kernel_size 21 -> sizes 3..19 in the first stage; blur_kernel_size2 15 -> 3..13 in the
    second and for the final sinc (range(3, size, 2) in ResShift's dataset)."""
    sizes = []
    for name in ("random_blur_kernel", "sinc_kernel"):
        original = getattr(degradations, name)
        monkeypatch.setattr(degradations, name, lambda *args, f=original: sizes.append(args[1]) or f(*args))

    def drawn(make) -> set:
        sizes.clear()
        for _ in range(400):
            assert make().shape == (MAX_KERNEL, MAX_KERNEL)
        return set(sizes)

    config, rng = RealESRGANConfig(), np.random.default_rng(0)
    assert drawn(lambda: stage_kernel(rng, config.first)) == set(range(3, 21, 2))
    assert drawn(lambda: stage_kernel(rng, config.second)) == set(range(3, 15, 2))
    assert drawn(lambda: final_kernel(rng, config)) == set(range(3, 15, 2))


def test_second_stage_runs_half_the_time_and_jpeg_only_twice(hr_batch, monkeypatch):
    """JPEG at the end of stage 1 and once in the final step, never inside stage 2; stage 2 with p 0.5."""
    stages, jpegs = [], []
    original_stage, original_jpeg = degradations._stage, degradations.jpeg_roundtrip

    def count_stage(x, stage, *args):
        stages.append(stage.blur_prob)
        return original_stage(x, stage, *args)

    def count_jpeg(x, qualities):
        jpegs.append(1)
        return original_jpeg(x, qualities)

    monkeypatch.setattr(degradations, "_stage", count_stage)
    monkeypatch.setattr(degradations, "jpeg_roundtrip", count_jpeg)
    runs = 40
    for seed in range(runs):
        realesrgan_degrade(hr_batch[:2], seed=seed)
    assert len(jpegs) == 2 * runs
    second = stages.count(RealESRGANConfig().second.blur_prob)
    assert 0.3 * runs < second < 0.7 * runs


def test_crops_rotate_and_rescale(tmp_path):
    photo = photo_array("astronaut")
    plain = HRCrops([photo], 64, seed=0, hflip=False)
    rotated = HRCrops([photo], 64, seed=0, hflip=False, rot=True)
    assert any(not torch.equal(plain[i], rotated[i]) for i in range(8))
    whole = HRCrops([photo], 64, seed=0, hflip=False, rescale_gt=True)[0]  # the 512 px photo, area-resized
    assert torch.allclose(whole, torch.nn.functional.interpolate(torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255,
                                                                 size=64, mode="area")[0], atol=2 / 255)
    scaled = HRCrops([photo], 64, seed=0, scale_range=(0.5, 0.5))[0]
    assert scaled.shape == (3, 64, 64)
    shuffled = HRCrops([photo], 64, seed=0, hflip=False, shuffle_channels=True)
    orders = set()
    for i in range(12):
        channels = [next(c for c in range(3) if torch.equal(shuffled[i][k], plain[i][c])) for k in range(3)]
        orders.add(tuple(channels))
    assert len(orders) > 2 and all(sorted(o) == [0, 1, 2] for o in orders)
