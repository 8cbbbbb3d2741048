"""The x4 super-resolution pipeline: pad, tile, encode, sample, decode, blend, crop.

One image flows as: LR in [0, 1] -> [-1, 1] -> pad to a multiple of 64 -> per tile: bicubic x4 ->
encoder -> latent z_y -> sampler (one step or T steps) -> decoder -> clamp -> blend tiles -> crop
-> [0, 1]. The three stages (:meth:`SRPipeline.encode`, :meth:`SRPipeline.generate`,
:meth:`SRPipeline.decode`) are exactly what the exported graphs contain. Tiles run top to bottom
and their blend is handed out in strips as rows complete (:meth:`SRPipeline.upscale_strips`), so
memory is bounded by a row of tiles, not by the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import chain
from .chain import SIZE_MULTIPLE, pad_to_multiple
from .models.unet import UNetModelSwin
from .sampling import NOISE_MAP_STREAM, PRIOR_STREAM, NoiseField, predict_x0, sample_multi_step, sample_one_step
from .schedule import ResShiftSchedule

# noise(stream, channels) -> N(0, 1) tensor shaped like the latent batch, `channels` deep
NoiseSource = Callable[..., torch.Tensor]


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


class NonFiniteOutputError(ValueError):
    """The network produced NaN or Inf (broken weights, or an fp16 overflow); one line."""


class StripBlender:
    """Weighted sum of the tiles of one image, kept only for rows that a later tile may still
    touch: tiles arrive top to bottom (by their top row), and :meth:`take` hands out the finished
    rows. Each pixel sums the same products in the same order as a whole-canvas blend would, so
    the result is bit for bit the same."""

    def __init__(self, channels: int, width: int):
        self.top = 0  # first row not yet handed out
        self.total = torch.zeros(channels, 0, width)
        self.weights = torch.zeros(1, 0, width)

    def add(self, tile: torch.Tensor, weight: torch.Tensor, top: int, left: int) -> None:
        if top < self.top:
            raise ValueError(f"tile at row {top} arrived after row {self.top} was handed out")
        bottom = top + tile.shape[-2]
        grow = bottom - self.top - self.total.shape[1]
        if grow > 0:
            self.total = torch.cat([self.total, self.total.new_zeros(self.total.shape[0], grow, self.total.shape[2])], 1)
            self.weights = torch.cat([self.weights, self.weights.new_zeros(1, grow, self.weights.shape[2])], 1)
        rows, cols = slice(top - self.top, bottom - self.top), slice(left, left + tile.shape[-1])
        self.total[:, rows, cols] += tile * weight
        self.weights[:, rows, cols] += weight

    def take(self, until: int) -> torch.Tensor:
        """Blended rows ``self.top:until``; no tile added later may start above ``until``."""
        count = until - self.top
        done = self.total[:, :count] / self.weights[:, :count]
        self.total, self.weights = self.total[:, count:], self.weights[:, count:]
        self.top = until
        return done


def _check_finite(x: torch.Tensor, what: str, boxes: list[tuple[int, int]]) -> None:
    if not torch.isfinite(x).all():
        top, left = boxes[0]
        raise NonFiniteOutputError(
            f"the {what} has NaN/Inf values (tile batch at LR row {top}, column {left}): broken weights or an overflow in {x.dtype}"
        )


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
        if self.batch < 1:
            raise ValueError(f"tile batch must be at least 1, got {self.batch}")


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

    def run_stage(self, stage: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        """One stage of :mod:`rsd_deploy.chain` (a :data:`~rsd_deploy.chain.StageFn`)."""
        if stage == chain.ENCODER.name:
            return self.codec.encode(feeds["lq_up"])
        if stage == chain.GENERATOR.name:
            return predict_x0(self.unet, self.schedule, feeds["x_t"], feeds["lq"], self.schedule.steps - 1, feeds.get("noise_map"))
        if stage == chain.DECODER.name:
            return self.decode(feeds["z"])
        raise ValueError(f"unknown stage {stage!r}; the chain has {', '.join(chain.STAGE_NAMES)}")

    def encode(self, lq: torch.Tensor) -> torch.Tensor:
        """LR image (B, 3, h, w) -> latent z_y (B, C, h, w) of its bicubic x4 upsampling."""
        return self.codec.encode(chain.upsample(lq, self.codec.scale))

    def check_steps(self, steps: int) -> None:
        """One step at t = T-1 or the schedule's full T-step chain: any other count would run
        timesteps the network was never trained at, so it is refused."""
        total = self.schedule.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps not in (1, total):
            hint = " (a 4-step ResShift v3 checkpoint needs its 4-step schedule: realsr_swinunet_realesrgan256_journal.yaml)" \
                if steps == 4 and total == 15 else ""
            raise ValueError(f"steps: this model's schedule has {total} steps, so run 1 (one step at t = {total - 1}) "
                             f"or {total}, got {steps!r}{hint}")

    def generate(self, z_y: torch.Tensor, lq: torch.Tensor, noise: NoiseSource, steps: int = 1) -> torch.Tensor:
        """Latent x0 from z_y: one step at t = T-1, or the teacher's full T-step chain."""
        self.check_steps(steps)
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
        h, w = lr.shape[-2:]
        scale = self.codec.scale
        out = torch.empty(lr.shape[0], 3, h * scale, w * scale, dtype=torch.float32)
        for index in range(lr.shape[0]):
            top = 0
            for strip in self.upscale_strips(lr[index], steps, seed, tiles, progress, sample=index):
                out[index, :, top : top + strip.shape[1]] = strip
                top += strip.shape[1]
        return out

    @torch.no_grad()
    def upscale_strips(
        self,
        lr: torch.Tensor,
        steps: int = 1,
        seed: int = 0,
        tiles: TileOptions | None = None,
        progress: bool = False,
        sample: int = 0,
    ) -> Iterator[torch.Tensor]:
        """One image (3, h, w) in [0, 1] -> its x4 output as strips (3, rows, 4w) in [0, 1], top to
        bottom, each as soon as no later tile touches it. The same pixels as :meth:`forward` with
        noise sample ``sample``; memory is bounded by a row of tiles, not by the image."""
        self.check_steps(steps)
        tiles = tiles or TileOptions()
        scale = self.codec.scale
        h, w = lr.shape[-2:]
        padded = pad_to_multiple(chain.to_model_range(lr[None].float()))
        top = 0
        for hr in self._upscale_padded(padded, sample, steps, NoiseField(seed), tiles, progress):
            rows = min(hr.shape[1], h * scale - top)  # the padding is cropped
            if rows > 0:
                yield chain.to_image_range(hr[:, :rows, : w * scale])
            top += hr.shape[1]

    def _upscale_padded(self, lq, sample, steps, field, tiles: TileOptions, progress) -> Iterator[torch.Tensor]:
        """Blended HR rows of the padded [-1, 1] image ``lq``, top to bottom."""
        scale = self.codec.scale
        height, width = lq.shape[-2:]
        tile_h, tile_w = min(tiles.size, height), min(tiles.size, width)
        boxes = [(top, left) for top in tile_starts(height, tile_h, tiles.overlap) for left in tile_starts(width, tile_w, tiles.overlap)]
        blender = StripBlender(3, width * scale)
        ramp = max(tiles.overlap * scale, 1)
        # tqdm draws only on a terminal (disable=None): piped logs get no bars or escape codes
        bar = tqdm(total=len(boxes), desc="tiles", unit="tile", disable=True if not progress or len(boxes) == 1 else None, leave=False)
        for first in range(0, len(boxes), tiles.batch):
            group = boxes[first : first + tiles.batch]
            lq_tiles = torch.cat([lq[..., t : t + tile_h, l : l + tile_w] for t, l in group])
            hr_tiles = self._run_tiles(lq_tiles, group, sample, steps, field, (tile_h, tile_w)).float().cpu()
            for (top, left), hr in zip(group, hr_tiles):
                weight = (
                    blend_ramp(tile_h * scale, ramp, top > 0, top + tile_h < height)[:, None]
                    * blend_ramp(tile_w * scale, ramp, left > 0, left + tile_w < width)[None, :]
                )
                blender.add(hr, weight, top * scale, left * scale)
            bar.update(len(group))
            following = first + tiles.batch
            finished = boxes[following][0] * scale if following < len(boxes) else height * scale
            if finished > blender.top:
                yield blender.take(finished)
        bar.close()

    def _run_tiles(self, lq_tiles, boxes, sample, steps, field: NoiseField, size) -> torch.Tensor:
        device, dtype = self.device, self.dtype
        channels = self.codec.latent_channels

        def noise(stream: int, n_channels: int = channels) -> torch.Tensor:
            crops = [field.crop(sample, stream, n_channels, top, left, *size) for top, left in boxes]
            return torch.stack(crops).to(device=device, dtype=dtype)

        lq_tiles = lq_tiles.to(device=device, dtype=dtype)
        if steps == 1:
            noise_map = noise(NOISE_MAP_STREAM, self.unet.noise_channels) if self.takes_noise_map else None
            tensors = chain.run(self.run_stage, lq_tiles, noise(PRIOR_STREAM), noise_map, self.schedule.prior_scale, self.codec.scale)
            latent, hr = tensors["x0"], tensors["hr"]
        else:
            latent = self.generate(self.encode(lq_tiles), lq_tiles, noise, steps)
            hr = self.decode(latent)
        _check_finite(latent, "generated latent", boxes)  # the decoder's clamp would turn Inf into white
        _check_finite(hr, "decoded image", boxes)
        return hr

