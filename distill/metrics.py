"""Image quality on [0, 1] RGB batches: PSNR and SSIM (scikit-image, on 8-bit RGB) and LPIPS."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .losses import LPIPSLoss


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_metrics(output: torch.Tensor, target: torch.Tensor, lpips: LPIPSLoss) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and LPIPS over a batch of (B, 3, H, W) images in [0, 1]."""
    out, ref = _uint8(output), _uint8(target)
    psnr = [peak_signal_noise_ratio(r, o, data_range=255) for o, r in zip(out, ref)]
    ssim = [structural_similarity(r, o, channel_axis=2, data_range=255) for o, r in zip(out, ref)]
    with torch.no_grad():
        device = next(lpips.parameters()).device
        quantised = torch.from_numpy(out).permute(0, 3, 1, 2).float().to(device) / 255
        distance = lpips(quantised * 2 - 1, target.to(device).float() * 2 - 1)
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "lpips": float(distance.mean())}
