"""The bicubic x4 degradation: 8-bit LR, linear ramps kept, fine detail filtered (antialiased)."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy.degradation import bicubic_degrade


def test_flat_images_stay_flat_and_the_lr_is_8_bit():
    hr = torch.full((2, 3, 32, 48), 100 / 255)
    lr = bicubic_degrade(hr)
    assert lr.shape == (2, 3, 8, 12)
    assert torch.allclose(lr, torch.full_like(lr, 100 / 255))
    noisy = bicubic_degrade(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(noisy, (noisy * 255).round() / 255) and 0 <= noisy.min() and noisy.max() <= 1


def test_a_ramp_is_sampled_at_the_lr_pixel_centres():
    # bicubic reproduces linear functions: away from the borders LR pixel j is the ramp at HR x = 4j + 1.5
    width = 256
    hr = (torch.arange(width, dtype=torch.float32) / width).expand(1, 3, 16, width)
    lr = bicubic_degrade(hr)[0, 0, 0]
    centres = (4 * torch.arange(width // 4) + 1.5) / width
    assert (lr[4:-4] - centres[4:-4]).abs().max() <= 0.5 / 255 + 1e-6


def test_detail_finer_than_the_lr_grid_is_filtered_not_aliased():
    lines = (torch.arange(192) % 3 == 0).float().expand(1, 3, 192, 192)  # 3 px period: far beyond the LR Nyquist
    lr = bicubic_degrade(lines)[..., 4:-4, 4:-4]
    assert (lr - 1 / 3).abs().max() <= 2 / 255  # their mean; bicubic without antialiasing is off by up to 133 / 255


def test_sizes_that_do_not_divide_fail_clearly():
    with pytest.raises(ValueError, match="multiple of the scale"):
        bicubic_degrade(torch.rand(1, 3, 30, 32))
