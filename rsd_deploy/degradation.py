"""The bicubic x4 degradation: HR images to LR images like the official DIV2K X4 files.

Those files were made by MATLAB's ``imresize``: bicubic (Keys, a = -0.5), the kernel widened by the
scale when shrinking (antialiasing). torch's antialiased bicubic downscale does the same (borders
are handled differently), and the result is rounded to 8 bits as the PNG files are. The Real-ESRGAN
degradation of real-world training lives in ``rsd_deploy.distill.degradations``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def bicubic_degrade(hr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """HR (B, 3, H, W) in [0, 1] -> LR (B, 3, H/scale, W/scale): antialiased bicubic, 8-bit quantised."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"bicubic_degrade: HR size {h}x{w} is not a multiple of the scale {scale}")
    lr = F.interpolate(hr.float(), size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return (lr.clamp(0, 1) * 255).round() / 255
