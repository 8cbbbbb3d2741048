"""Image metrics: PSNR by its definition (scikit-image's for 8-bit images), the per-image table of
SR quality, and the LPIPS wrapper (seeded random backbone said once, no third-party warnings)."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from rsd_deploy import metrics
from rsd_deploy.metrics import LPIPS, image_metrics, lpips_distance, psnr


@pytest.fixture(scope="module")
def lpips():
    return LPIPS("random")


def test_psnr_by_its_definition():
    a = torch.zeros(2, 3, 8, 8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # mse 0.01 over the whole batch
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert psnr(x, y, data_range=255) == peak_signal_noise_ratio(y, x, data_range=255)  # bit for bit


def test_image_metrics_are_per_image_means_of_the_8_bit_output(lpips):
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 32, 32, generator=generator)
    output = (target + 0.05 * torch.randn(2, 3, 32, 32, generator=generator)).clamp(0, 1)
    values = image_metrics(output, target, lpips)
    def eight_bit(image: torch.Tensor) -> np.ndarray:
        return (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()

    per_image = [peak_signal_noise_ratio(eight_bit(t), eight_bit(o), data_range=255) for o, t in zip(output, target)]
    assert values["psnr"] == np.mean(per_image)
    assert 0 < values["ssim"] < 1 and values["lpips"] > 0
    same = image_metrics(target, target, lpips)
    assert same["ssim"] == pytest.approx(1.0) and same["lpips"] < 1e-3  # 8-bit rounding of the output only


def test_lpips_is_zero_for_identical_images_and_grows_with_distortion(lpips):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert lpips_distance(lpips, image, image) == 0.0
    small, large = [lpips_distance(lpips, (image + s * torch.randn_like(image)).clamp(0, 1), image) for s in (0.02, 0.2)]
    assert 0 < small < large
    assert lpips.kind == "LPIPS-alex(random backbone, seed 0)" and not lpips.training


def test_the_random_backbone_is_said_once_per_process_and_torchvision_stays_quiet(monkeypatch, caplog):
    monkeypatch.setattr(metrics, "_random_backbone_logged", False)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger=metrics.__name__):
        warnings.simplefilter("always")
        LPIPS("random")
        LPIPS("random", seed=metrics.EVAL_BACKBONE_SEED)
    said = [r.getMessage() for r in caplog.records if "RANDOM backbone" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]
    assert not [str(w.message) for w in caught if "pretrained" in str(w.message) or "weight enum" in str(w.message)]


def test_pretrained_without_the_cached_weights_is_one_line(monkeypatch):
    monkeypatch.setattr(metrics, "alexnet_weights_cached", lambda: False)
    with pytest.raises(RuntimeError, match="alexnet-owt-7be5be79.pth is not in"):
        LPIPS("pretrained")
    with pytest.raises(ValueError, match="auto, pretrained or random"):
        LPIPS("vgg")
