"""ResShift's residual-shifting noise schedule ("exponential" eta schedule).

Forward process: ``x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps``, with ``y`` the latent of
the bicubic-upsampled LR image. The network sees ``x_t / sqrt(kappa^2 eta_t + 1)`` and predicts
``x0``. Timesteps fed to the network are the integer indices ``0 .. T-1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import chain


def exponential_sqrt_etas(steps: int, min_noise: float, kappa: float, power: float = 0.3, etas_end: float = 0.99) -> np.ndarray:
    """sqrt(eta_t) for t = 0 .. T-1, in float64 as the reference computes it."""
    start = min(min_noise / kappa, min_noise)
    if steps == 1:
        return np.array([etas_end], dtype=np.float64)
    base = math.exp(math.log(etas_end / start) / (steps - 1))
    exponent = np.linspace(0.0, 1.0, steps, dtype=np.float64) ** power * (steps - 1)
    return base**exponent * start


@dataclass(frozen=True)
class ResShiftSchedule:
    steps: int = 15
    min_noise: float = 0.04
    kappa: float = 2.0
    power: float = 0.3
    etas_end: float = 0.99

    @property
    def sqrt_etas(self) -> np.ndarray:
        return exponential_sqrt_etas(self.steps, self.min_noise, self.kappa, self.power, self.etas_end)

    @property
    def etas(self) -> np.ndarray:
        return self.sqrt_etas**2

    def _at(self, table: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        values = torch.as_tensor(table, dtype=torch.float64)[t.cpu().long()]
        return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def timesteps(self, batch: int, t: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.full((batch,), t, dtype=torch.int64, device=device)

    def q_sample(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x0, y)."""
        eta = self._at(self.etas, t, x0)
        return x0 + eta * (y - x0) + self.kappa * self._at(self.sqrt_etas, t, x0) * noise

    @property
    def prior_scale(self) -> float:
        """kappa sqrt(eta_T): the prior is x_T = y + prior_scale * eps."""
        return self.kappa * float(self.sqrt_etas[-1])

    def prior_sample(self, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_T = y + kappa sqrt(eta_T) eps: the starting point of sampling."""
        return chain.prior_sample(y, noise, self.prior_scale)

    def scale_input(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``normalize_input`` for latents: unit-variance network input."""
        return x_t / torch.sqrt(self._at(self.etas, t, x_t) * self.kappa**2 + 1)

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(x_{t-1} | x_t, x0)."""
        etas = self.etas
        etas_prev = np.append(0.0, etas[:-1])
        alpha = etas - etas_prev
        mean = self._at(etas_prev / etas, t, x_t) * x_t + self._at(alpha / etas, t, x_t) * x0
        variance = self.kappa**2 * etas_prev / etas * alpha
        # as the reference: variance at t = 0 (zero) is replaced by that at t = 1 in the log table;
        # sampling never adds noise at t = 0, so only t >= 1 values are ever used.
        variance = np.append(variance[1], variance[1:]) if len(variance) > 1 else variance
        return mean, self._at(np.sqrt(variance), t, x_t)


TEACHER_15 = ResShiftSchedule(steps=15, min_noise=0.04)  # ResShift v1/v2, the RSD/SinSR teacher
TEACHER_4 = ResShiftSchedule(steps=4, min_noise=0.2)  # ResShift v3
