"""The x4 super-resolution pipeline: pad, tile, encode, sample, decode, blend, crop.

One image flows as: LR in [0, 1] -> [-1, 1] -> pad to a multiple of 64 -> per tile: bicubic x4 ->
encoder -> latent z_y -> sampler (one step or T steps) -> decoder -> clamp -> blend tiles -> crop
-> [0, 1]. The three stages (:meth:`SRPipeline.encode`, :meth:`SRPipeline.generate`,
:meth:`SRPipeline.decode`) are exactly what the exported graphs contain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models.unet import UNetModelSwin
from .sampling import NOISE_MAP_STREAM, PRIOR_STREAM, NoiseField, sample_multi_step, sample_one_step
from .schedule import ResShiftSchedule

# noise(stream, channels) -> N(0, 1) tensor shaped like the latent batch, `channels` deep
NoiseSource = Callable[..., torch.Tensor]

SIZE_MULTIPLE = 64  # LR (= latent) sizes the UNet accepts: 8x8 windows at 1/8 resolution


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """Pad bottom/right to a multiple: reflect as the reference does, replicate where an image is
    too small to reflect (a 1-pixel input)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length), consecutive tiles sharing >= overlap."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def blend_ramp(length: int, ramp: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """1-D tile weight: linear ramps over the overlaps with neighbours, 1 elsewhere."""
    position = torch.arange(length, dtype=torch.float32) + 0.5
    weight = torch.ones(length)
    if fade_in:
        weight = torch.minimum(weight, position / ramp)
    if fade_out:
        weight = torch.minimum(weight, (length - position) / ramp)
    return weight


@dataclass
class TileOptions:
    size: int = 256  # LR pixels, a multiple of 64
    overlap: int = 32  # LR pixels shared by neighbouring tiles
    batch: int = 1  # tiles run through the network together

    def __post_init__(self):
        if self.size <= 0 or self.size % SIZE_MULTIPLE:
            raise ValueError(f"tile size must be a positive multiple of {SIZE_MULTIPLE}, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ValueError(f"tile overlap must be in [0, tile size), got {self.overlap}")


class SRPipeline(nn.Module):
    """LR image in [0, 1] -> x4 HR image in [0, 1] with a ResShift-family denoiser."""

    def __init__(self, unet: UNetModelSwin, codec: nn.Module, schedule: ResShiftSchedule, description: str = ""):
        super().__init__()
        self.unet = unet
        self.codec = codec
        self.schedule = schedule
        self.description = description

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def takes_noise_map(self) -> bool:
        return self.unet.noise_channels > 0

    # --- the three stages, on [-1, 1] tensors whose LR size is a multiple of 64 ---------------

    def encode(self, lq: torch.Tensor) -> torch.Tensor:
        """LR image (B, 3, h, w) -> latent z_y (B, C, h, w) of its bicubic x4 upsampling."""
        return self.codec.encode(F.interpolate(lq, scale_factor=self.codec.scale, mode="bicubic"))

    def generate(self, z_y: torch.Tensor, lq: torch.Tensor, noise: NoiseSource, steps: int = 1) -> torch.Tensor:
        """Latent x0 from z_y: one step at t = T-1, or the teacher's full T-step chain. Any other
        count would run timesteps the network was never trained at: refused."""
        total = self.schedule.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps not in (1, total):
            hint = " (a 4-step ResShift v3 checkpoint needs its 4-step schedule: realsr_swinunet_realesrgan256_journal.yaml)" \
                if steps == 4 and total == 15 else ""
            raise ValueError(f"steps: this model's schedule has {total} steps, so run 1 (one step at t = {total - 1}) "
                             f"or {total}, got {steps!r}{hint}")
        noise_map = noise(NOISE_MAP_STREAM, self.unet.noise_channels) if self.takes_noise_map else None
        if steps == 1:
            return sample_one_step(self.unet, self.schedule, z_y, lq, noise(PRIOR_STREAM), noise_map)
        return sample_multi_step(self.unet, self.schedule, z_y, lq, noise, noise_map)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(z).clamp(-1, 1)

    # --- whole images --------------------------------------------------------------------------

    @torch.no_grad()
    def forward(
        self,
        lr: torch.Tensor,
        steps: int = 1,
        seed: int = 0,
        tiles: TileOptions | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, 3, 4h, 4w) in [0, 1]. Image i of the batch uses the noise of
        sample i of ``seed``, so results do not depend on batch composition or tiling."""
        tiles = tiles or TileOptions()
        scale = self.codec.scale
        h, w = lr.shape[-2:]
        out = torch.empty(lr.shape[0], 3, h * scale, w * scale, dtype=torch.float32)
        for index in range(lr.shape[0]):
            padded = pad_to_multiple(lr[index : index + 1].float() * 2 - 1)
            hr = self._upscale_padded(padded, index, steps, NoiseField(seed), tiles, progress)
            out[index] = ((hr[0, :, : h * scale, : w * scale] + 1) / 2).clamp(0, 1)
        return out

    def _upscale_padded(self, lq, sample, steps, field, tiles: TileOptions, progress) -> torch.Tensor:
        scale = self.codec.scale
        height, width = lq.shape[-2:]
        tile_h, tile_w = min(tiles.size, height), min(tiles.size, width)
        boxes = [(top, left) for top in tile_starts(height, tile_h, tiles.overlap) for left in tile_starts(width, tile_w, tiles.overlap)]
        total = torch.zeros(1, 3, height * scale, width * scale)
        weights = torch.zeros(1, 1, height * scale, width * scale)
        ramp = max(tiles.overlap * scale, 1)
        bar = tqdm(total=len(boxes), desc="tiles", unit="tile", disable=not progress or len(boxes) == 1, leave=False)
        for first in range(0, len(boxes), tiles.batch):
            group = boxes[first : first + tiles.batch]
            lq_tiles = torch.cat([lq[..., t : t + tile_h, l : l + tile_w] for t, l in group])
            hr_tiles = self._run_tiles(lq_tiles, group, sample, steps, field, (tile_h, tile_w)).float().cpu()
            for (top, left), hr in zip(group, hr_tiles):
                weight = (
                    blend_ramp(tile_h * scale, ramp, top > 0, top + tile_h < height)[:, None]
                    * blend_ramp(tile_w * scale, ramp, left > 0, left + tile_w < width)[None, :]
                )
                y, x = top * scale, left * scale
                total[0, :, y : y + tile_h * scale, x : x + tile_w * scale] += hr * weight
                weights[0, :, y : y + tile_h * scale, x : x + tile_w * scale] += weight
            bar.update(len(group))
        bar.close()
        return total / weights

    def _run_tiles(self, lq_tiles, boxes, sample, steps, field: NoiseField, size) -> torch.Tensor:
        device, dtype = self.device, self.dtype
        channels = self.codec.latent_channels

        def noise(stream: int, n_channels: int = channels) -> torch.Tensor:
            crops = [field.crop(sample, stream, n_channels, top, left, *size) for top, left in boxes]
            return torch.stack(crops).to(device=device, dtype=dtype)

        lq_tiles = lq_tiles.to(device=device, dtype=dtype)
        return self.decode(self.generate(self.encode(lq_tiles), lq_tiles, noise, steps))

