"""LR synthesis for real-world training: the Real-ESRGAN second-order degradation, batched in torch
(plain bicubic x4 is :func:`rsd_deploy.degradation.bicubic_degrade`).

The Real-ESRGAN model (Wang et al. 2021) as ResShift, SinSR and RSD train with it (ResShift's
``realsr_swinunet_realesrgan256.yaml`` and ``TrainerDifIR.prepare_data``): blur, resize, noise,
JPEG; then, with probability 0.5, a second blur (p 0.8), resize and noise; then a final resize +
sinc filter and JPEG, in random order. Kernel sizes are 3..19 in the first stage and 3..13 in the
second and for the final sinc. As there, the resize factor and mode, the noise kind and whether
the second stage runs are drawn once per batch (the trainer's pair pool mixes batches); kernels,
noise levels and JPEG qualities per image. Filtering (kornia's ``filter2d`` with per-sample
kernels), resizing and noise run on the batch's device (the GPU when there is one). The blur
kernels (generalised / plateau Gaussians, circular sinc) are built here in numpy because no
maintained library ships them. JPEG is libjpeg through OpenCV with a per-sample quality: the codec
real images went through (the release uses a differentiable re-implementation, DiffJPEG), for the
price of a host round trip of a few milliseconds per batch.

All randomness comes from one seed: parameters from a ``numpy.random.Generator``, noise from a
``torch.Generator``, so a batch is reproducible from ``(images, seed)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F
from scipy import special

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
MAX_KERNEL = 21  # every kernel is zero-padded to 21 x 21 so a batch stacks
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class StageConfig:
    """One degradation stage (blur -> resize -> noise, and JPEG in the first)."""

    blur_prob: float = 1.0
    kernel_sizes: tuple[int, ...] = tuple(range(3, 21, 2))  # blur_kernel_size 21: sizes 3..19
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # order of KERNEL_TYPES
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)  # sigma in 8-bit units
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)  # the first stage's JPEG; the second's is the final one


@dataclass(frozen=True)
class RealESRGANConfig:
    """ResShift's real-world x4 degradation (``realsr_swinunet_realesrgan256.yaml``)."""

    first: StageConfig = field(default_factory=StageConfig)
    second: StageConfig = field(
        default_factory=lambda: StageConfig(
            blur_prob=0.8,
            kernel_sizes=tuple(range(3, 15, 2)),  # blur_kernel_size2 15: sizes 3..13
            blur_sigma=(0.2, 1.5),
            resize_probs=(0.3, 0.4, 0.3),
            resize_range=(0.3, 1.2),
            noise_range=(1.0, 25.0),
            poisson_scale_range=(0.05, 2.5),
        )
    )
    second_order_prob: float = 0.5
    final_sinc_prob: float = 0.8  # sizes as the second stage's kernels
    final_jpeg_range: tuple[float, float] = (30.0, 95.0)  # jpeg_range2
    scale: int = 4


# --- blur kernels (numpy, float64) -----------------------------------------------------------


def _grid(size: int) -> np.ndarray:
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x over the kernel grid, Sigma = R diag(sx^2, sy^2) R^T."""
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    sigma = rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T
    xy = _grid(size)
    return np.einsum("hwi,ij,hwj->hw", xy, np.linalg.inv(sigma), xy)


def _beta(rng: np.random.Generator, low: float, high: float) -> float:
    # Real-ESRGAN: half the time below 1 (heavier tails), half above
    return rng.uniform(low, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, high)


def random_blur_kernel(rng: np.random.Generator, size: int, stage: StageConfig) -> np.ndarray:
    kind = KERNEL_TYPES[rng.choice(len(KERNEL_TYPES), p=np.asarray(stage.kernel_probs) / sum(stage.kernel_probs))]
    sigma_x = rng.uniform(*stage.blur_sigma)
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y, theta = rng.uniform(*stage.blur_sigma), rng.uniform(-math.pi, math.pi)
    q = _quadratic_form(size, sigma_x, sigma_y, theta)
    if kind.startswith("generalized"):
        kernel = np.exp(-0.5 * q ** _beta(rng, *stage.betag_range))
    elif kind.startswith("plateau"):
        kernel = 1.0 / (q ** _beta(rng, *stage.betap_range) + 1.0)
    else:
        kernel = np.exp(-0.5 * q)
    return kernel / kernel.sum()


def sinc_kernel(cutoff: float, size: int) -> np.ndarray:
    """Circular low-pass (2-D sinc / Airy) kernel with cutoff frequency ``cutoff`` (rad/pixel)."""
    xy = _grid(size)
    r = np.hypot(xy[..., 0], xy[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * special.j1(cutoff * r) / (2 * math.pi * r)
    kernel[size // 2, size // 2] = cutoff**2 / (4 * math.pi)
    return kernel / kernel.sum()


def _pad(kernel: np.ndarray) -> np.ndarray:
    p = (MAX_KERNEL - kernel.shape[0]) // 2
    return np.pad(kernel, p)


def stage_kernel(rng: np.random.Generator, stage: StageConfig) -> np.ndarray:
    size = int(rng.choice(stage.kernel_sizes))
    if rng.uniform() < stage.sinc_prob:
        cutoff = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
        return _pad(sinc_kernel(cutoff, size))
    return _pad(random_blur_kernel(rng, size, stage))


def final_kernel(rng: np.random.Generator, config: RealESRGANConfig) -> np.ndarray:
    if rng.uniform() < config.final_sinc_prob:
        size = int(rng.choice(config.second.kernel_sizes))
        return _pad(sinc_kernel(rng.uniform(math.pi / 3, math.pi), size))
    pulse = np.zeros((MAX_KERNEL, MAX_KERNEL))
    pulse[MAX_KERNEL // 2, MAX_KERNEL // 2] = 1.0
    return pulse


# --- batched operations (torch) ---------------------------------------------------------------


def _filter(x: torch.Tensor, kernels: list[np.ndarray]) -> torch.Tensor:
    k = torch.as_tensor(np.stack(kernels), dtype=x.dtype, device=x.device)
    # reflect borders as Real-ESRGAN; an image smaller than the kernel's reach cannot reflect
    border = "reflect" if min(x.shape[-2:]) > MAX_KERNEL // 2 else "replicate"
    return kornia.filters.filter2d(x, k, border_type=border)


def _poisson(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Poisson noise at each image's intensity resolution: 2^ceil(log2(#distinct 8-bit values))."""
    x = (x * 255).round().clamp(0, 255) / 255
    counts = [len(torch.unique(image)) for image in x]
    levels = torch.tensor([2.0 ** math.ceil(math.log2(c)) for c in counts], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    return torch.poisson(x * levels, generator=gen) / levels - x


def _add_noise(x: torch.Tensor, stage: StageConfig, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    gray = torch.as_tensor(rng.uniform(size=b) < stage.gray_noise_prob, device=x.device).view(b, 1, 1, 1)
    if rng.uniform() < stage.gaussian_noise_prob:
        sigma = torch.as_tensor(rng.uniform(*stage.noise_range, size=b) / 255.0, dtype=x.dtype, device=x.device).view(b, 1, 1, 1)
        color = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        mono = torch.randn((b, 1, *x.shape[2:]), generator=gen, device=x.device, dtype=x.dtype)
        noise = torch.where(gray, mono.expand_as(x), color) * sigma
    else:
        scale = torch.as_tensor(rng.uniform(*stage.poisson_scale_range, size=b), dtype=x.dtype, device=x.device).view(b, 1, 1, 1)
        color = _poisson(x.clamp(0, 1), gen)
        mono = _poisson(kornia.color.rgb_to_grayscale(x.clamp(0, 1)), gen).expand_as(x)
        noise = torch.where(gray, mono, color) * scale
    return (x + noise).clamp(0, 1)


def jpeg_roundtrip(x: torch.Tensor, qualities: np.ndarray) -> torch.Tensor:
    """Encode and decode each image with libjpeg (OpenCV) at its own quality: the real codec,
    byte-exact everywhere; the round trip through host memory costs milliseconds per batch."""
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image, quality in zip(images, qualities):
        ok, buffer = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        decoded.append(cv2.imdecode(buffer, cv2.IMREAD_COLOR)[..., ::-1])
    out = torch.from_numpy(np.ascontiguousarray(np.stack(decoded))).permute(0, 3, 1, 2)
    return out.to(device=x.device, dtype=x.dtype) / 255


def _jpeg(x: torch.Tensor, quality_range: tuple[float, float], rng: np.random.Generator) -> torch.Tensor:
    return jpeg_roundtrip(x, rng.uniform(*quality_range, size=x.shape[0]))


def _random_resize(x: torch.Tensor, size: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    mode = RESIZE_MODES[rng.integers(len(RESIZE_MODES))]
    return F.interpolate(x, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))


def _stage(x: torch.Tensor, stage: StageConfig, target: tuple[int, int], rng, gen) -> torch.Tensor:
    """Blur (p ``blur_prob``), resize to ``target`` x a random factor, noise."""
    if rng.uniform() < stage.blur_prob:
        x = _filter(x, [stage_kernel(rng, stage) for _ in range(x.shape[0])])
    direction = rng.choice(3, p=stage.resize_probs)
    factor = rng.uniform(1.0, stage.resize_range[1]) if direction == 0 else rng.uniform(stage.resize_range[0], 1.0) if direction == 1 else 1.0
    x = _random_resize(x, (max(1, int(target[0] * factor)), max(1, int(target[1] * factor))), rng)
    return _add_noise(x, stage, rng, gen)


@torch.no_grad()
def realesrgan_degrade(hr: torch.Tensor, seed: int, config: RealESRGANConfig = RealESRGANConfig()) -> torch.Tensor:
    """HR batch (B, 3, H, W) in [0, 1] -> LR (B, 3, H/scale, W/scale) in [0, 1], 8-bit quantised."""
    h, w = hr.shape[-2:]
    if h % config.scale or w % config.scale:
        raise ValueError(f"realesrgan_degrade: HR size {h}x{w} is not a multiple of the scale {config.scale}")
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=hr.device).manual_seed(seed)
    lr_size = (h // config.scale, w // config.scale)
    x = _jpeg(_stage(hr.float(), config.first, (h, w), rng, gen), config.first.jpeg_range, rng)
    if rng.uniform() < config.second_order_prob:
        x = _stage(x, config.second, lr_size, rng, gen)
    sinc = [final_kernel(rng, config) for _ in range(x.shape[0])]
    if rng.uniform() < 0.5:
        x = _jpeg(_filter(_random_resize(x, lr_size, rng), sinc), config.final_jpeg_range, rng)
    else:
        x = _filter(_random_resize(_jpeg(x, config.final_jpeg_range, rng), lr_size, rng), sinc)
    return (x.clamp(0, 1) * 255).round() / 255

