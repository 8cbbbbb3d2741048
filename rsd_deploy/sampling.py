"""Samplers in latent space: one step (RSD, SinSR) and the multi-step ResShift chain.

All noise comes from a :class:`NoiseField`, which makes any crop of the noise independent of how
an image is tiled, so tiled and untiled runs see the same random numbers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .models.unet import UNetModelSwin
from .schedule import ResShiftSchedule

# Noise streams drawn from one NoiseField.
PRIOR_STREAM = 0  # eps of x_T = y + kappa sqrt(eta_T) eps
NOISE_MAP_STREAM = 1  # the RSD student's extra N(0, 1) input channel
STEP_STREAM = 2  # stream STEP_STREAM + t: the noise added at step t of the multi-step chain


class NoiseField:
    """Seeded N(0, 1) noise over an unbounded latent grid, made in fixed blocks.

    Each ``block x block`` cell of each (sample, stream) has its own generator seeded from
    ``(seed, sample, stream, row, col)``, so a crop is the same whichever tile asks for it and
    memory stays proportional to the crop. Generated on the CPU: identical on every device.
    """

    def __init__(self, seed: int, block: int = 64):
        self.seed = int(seed)
        self.block = block

    def _cell(self, sample: int, stream: int, channels: int, row: int, col: int) -> torch.Tensor:
        state = np.random.SeedSequence([self.seed, sample, stream, channels, row, col]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randn(channels, self.block, self.block, generator=generator)

    def crop(self, sample: int, stream: int, channels: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """(channels, height, width) noise at latent rows top.. and columns left.."""
        b = self.block
        out = torch.empty(channels, height, width)
        for row in range(top // b, (top + height - 1) // b + 1):
            for col in range(left // b, (left + width - 1) // b + 1):
                cell = self._cell(sample, stream, channels, row, col)
                y0, x0 = max(top, row * b), max(left, col * b)
                y1, x1 = min(top + height, (row + 1) * b), min(left + width, (col + 1) * b)
                out[:, y0 - top : y1 - top, x0 - left : x1 - left] = cell[:, y0 - row * b : y1 - row * b, x0 - col * b : x1 - col * b]
        return out


def predict_x0(
    unet: UNetModelSwin,
    schedule: ResShiftSchedule,
    x_t: torch.Tensor,
    lq: torch.Tensor,
    t: int,
    noise_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """The network's x0 estimate from x_t at integer step t (input normalisation included)."""
    steps = schedule.timesteps(x_t.shape[0], t, x_t.device)
    return unet(schedule.scale_input(x_t, steps), steps, lq=lq, noise=noise_map)


def sample_one_step(
    unet: UNetModelSwin,
    schedule: ResShiftSchedule,
    z_y: torch.Tensor,
    lq: torch.Tensor,
    eps: torch.Tensor,
    noise_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """RSD / SinSR inference: x_T from the prior, one network call at t = T-1, x0 out."""
    x_t = schedule.prior_sample(z_y, eps)
    return predict_x0(unet, schedule, x_t, lq, schedule.steps - 1, noise_map)


def sample_multi_step(
    unet: UNetModelSwin,
    schedule: ResShiftSchedule,
    z_y: torch.Tensor,
    lq: torch.Tensor,
    noise: Callable[[int], torch.Tensor],
    noise_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ResShift teacher's chain t = T-1 .. 0; returns the last x0 estimate.

    ``noise(stream)`` supplies N(0, 1) tensors shaped like ``z_y``: stream PRIOR_STREAM for x_T,
    STEP_STREAM + t for the posterior noise at step t (none is added at t = 0).
    """
    x_t = schedule.prior_sample(z_y, noise(PRIOR_STREAM))
    x0 = x_t
    for t in range(schedule.steps - 1, -1, -1):
        x0 = predict_x0(unet, schedule, x_t, lq, t, noise_map)
        if t > 0:
            mean, std = schedule.posterior(x0, x_t, schedule.timesteps(x_t.shape[0], t, x_t.device))
            x_t = mean + std * noise(STEP_STREAM + t)
    return x0
