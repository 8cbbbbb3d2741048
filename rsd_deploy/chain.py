"""The one-step chain, written once: the host steps, the stages in order, and the tensors between.

::

    lr   (B, 3, h, w) in [0, 1]   --to_model_range, pad_to-->   lq (B, 3, H, W) in [-1, 1]
    lq   --upsample (bicubic x scale)-->                         lq_up
    encoder     lq_up                   -> z_y
    prior       x_t = z_y + prior_scale * eps        (host: kappa sqrt(eta_T), ResShiftSchedule.prior_scale)
    generator   x_t, lq [, noise_map]   -> x0
    decoder     z (= x0)                -> hr (B, 3, scale H, scale W) in [-1, 1]
    hr   --crop, to_image_range-->     image (B, 3, scale h, scale w) in [0, 1]

``H`` and ``W`` are ``h`` and ``w`` padded to multiples of :data:`SIZE_MULTIPLE` (the UNet's
8x8 windows at 1/8 resolution). Everything that runs the chain reads it from here: the PyTorch
pipeline, the fused export graph, parity checks, ``rsd-bench``, the Triton models and their
ensemble. A stage is any ``run(stage_name, feeds) -> output`` (:data:`StageFn`): PyTorch modules,
ONNX Runtime sessions, TensorRT engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

SIZE_MULTIPLE = 64  # LR (= latent) sizes the UNet accepts


@dataclass(frozen=True)
class Stage:
    """One network of the chain and the chain tensors it reads and writes."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    optional: tuple[str, ...] = ()  # inputs only some models have (the RSD student's noise map)


ENCODER = Stage("encoder", ("lq_up",), ("z_y",))
GENERATOR = Stage("generator", ("x_t", "lq", "noise_map"), ("x0",), optional=("noise_map",))
DECODER = Stage("decoder", ("z",), ("hr",))
STAGES = (ENCODER, GENERATOR, DECODER)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
# A stage input reads the chain tensor of the same name, except the decoder's z: the generator's x0.
SOURCES = {(DECODER.name, "z"): "x0"}

StageFn = Callable[[str, dict[str, torch.Tensor]], torch.Tensor]


# --- host steps ---------------------------------------------------------------------------------


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return image * 2 - 1


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def padded_size(size: int) -> int:
    """The multiple of 64 an LR side is padded to."""
    return max(SIZE_MULTIPLE, -(-size // SIZE_MULTIPLE) * SIZE_MULTIPLE)


def _reflect_index(size, padded) -> torch.Tensor:
    index = torch.arange(padded)
    return torch.where(index < size, index, 2 * (size - 1) - index)


def pad_to(x: torch.Tensor, height, width) -> torch.Tensor:
    """Pad bottom/right to ``height x width``: reflect as the reference samplers do, replicate
    (on both axes) where an image is too small to reflect, e.g. a 1-pixel input. Tensor ops on
    the runtime sizes, no Python branch on them: an export keeps every size symbolic."""
    h, w = x.shape[-2:]
    rows, cols = _reflect_index(h, height), _reflect_index(w, width)
    too_small = (rows < 0).any() | (cols < 0).any()
    rows = torch.where(too_small, torch.arange(height).clamp(max=h - 1), rows)
    cols = torch.where(too_small, torch.arange(width).clamp(max=w - 1), cols)
    return x.index_select(-2, rows.to(x.device)).index_select(-1, cols.to(x.device))


def pad_to_multiple(x: torch.Tensor) -> torch.Tensor:
    """:func:`pad_to` the next multiples of :data:`SIZE_MULTIPLE`."""
    h, w = x.shape[-2:]
    if h % SIZE_MULTIPLE == 0 and w % SIZE_MULTIPLE == 0:
        return x
    return pad_to(x, padded_size(h), padded_size(w))


def upsample(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic x ``scale``: what the encoder sees (ResShift encodes the upsampled LR image)."""
    return F.interpolate(lq, scale_factor=scale, mode="bicubic")


def prior_sample(z_y: torch.Tensor, eps: torch.Tensor, prior_scale: float) -> torch.Tensor:
    """x_T = z_y + kappa sqrt(eta_T) eps, the start of the one step."""
    return z_y + prior_scale * eps


def crop(hr: torch.Tensor, height, width, scale: int) -> torch.Tensor:
    """The HR region of an ``height x width`` LR image (the padding cut off)."""
    return hr[..., : height * scale, : width * scale]


# --- the stages in order ------------------------------------------------------------------------


def stage_feeds(stage: Stage, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs of ``stage`` from the chain's tensors (optional ones when present)."""
    feeds = {}
    for name in stage.inputs:
        source = SOURCES.get((stage.name, name), name)
        if source in tensors:
            feeds[name] = tensors[source]
        elif name not in stage.optional:
            raise KeyError(f"{stage.name}: chain tensor {source!r} is missing")
    return feeds


def run(stage: StageFn, lq: torch.Tensor, eps: torch.Tensor, noise_map: torch.Tensor | None, prior_scale: float, scale: int) -> dict[str, torch.Tensor]:
    """Every tensor of the chain for a padded LR batch ``lq`` in [-1, 1] (sides multiples of 64):
    ``lq``, ``lq_up``, ``eps`` [, ``noise_map``], ``z_y``, ``x_t``, ``x0``, ``hr``."""
    tensors = {"lq": lq, "lq_up": upsample(lq, scale), "eps": eps}
    if noise_map is not None:
        tensors["noise_map"] = noise_map
    tensors["z_y"] = stage(ENCODER.name, stage_feeds(ENCODER, tensors))
    tensors["x_t"] = prior_sample(tensors["z_y"], eps, prior_scale)
    tensors["x0"] = stage(GENERATOR.name, stage_feeds(GENERATOR, tensors))
    tensors["hr"] = stage(DECODER.name, stage_feeds(DECODER, tensors))
    return tensors


def upscale(stage: StageFn, lr: torch.Tensor, eps: torch.Tensor, noise_map: torch.Tensor | None, prior_scale: float, scale: int) -> torch.Tensor:
    """LR images (B, 3, h, w) in [0, 1] -> x ``scale`` images in [0, 1]: pad to the size of
    ``eps``, run the chain, crop, back to [0, 1]."""
    height, width = lr.shape[-2:]
    lq = pad_to(to_model_range(lr), eps.shape[-2], eps.shape[-1])
    hr = run(stage, lq, eps, noise_map, prior_scale, scale)["hr"]
    return to_image_range(crop(hr, height, width, scale))
