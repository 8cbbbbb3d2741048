"""The x4 super-resolution pipeline: the model's stages and the whole-image call.

One image flows as: LR in [0, 1] -> [-1, 1] -> pad -> per tile: bicubic x4 -> encoder -> latent
z_y -> sampler (one step or T steps) -> decoder -> clamp -> blend tiles -> crop -> [0, 1]. The
three stages (:meth:`SRPipeline.encode`, :meth:`SRPipeline.generate`, :meth:`SRPipeline.decode`)
are exactly what the exported graphs contain; :meth:`SRPipeline.tile_model` hands them to the
tile scheduler (:mod:`rsd_deploy.tiling`), which cuts, batches, blends and streams the output.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import chain
from .models.unet import UNetModelSwin
from .sampling import NOISE_MAP_STREAM, PRIOR_STREAM, predict_x0, sample_multi_step, sample_one_step
from .schedule import ResShiftSchedule
from .tiling import NoiseSource, TileModel, TileOptions, upscale_images


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

    def tile_model(self, steps: int = 1, stage: chain.StageFn | None = None, device: torch.device | None = None) -> TileModel:
        """This model as the tile scheduler runs it: one step through :func:`rsd_deploy.chain.run`
        (the stages the exported graphs hold), or the teacher's T-step chain. ``stage`` runs the
        one-step chain's stages elsewhere (a runner's ``stage_fn()``, inputs on ``device``) with
        this model's scale, prior scale and channels."""
        self.check_steps(steps)
        if stage is not None and steps != 1:
            raise ValueError(f"another backend's stages run the one-step chain, not {steps} steps")
        if steps == 1:
            stage, device, dtype = (self.run_stage, self.device, self.dtype) if stage is None else (stage, device or self.device, None)
            return TileModel.from_stages(stage, self.codec.scale, self.schedule.prior_scale, self.codec.latent_channels,
                                         self.unet.noise_channels, device, dtype)

        def run(lq: torch.Tensor, noise: NoiseSource) -> dict[str, torch.Tensor]:
            def on_device(stream: int, channels: int | None = None) -> torch.Tensor:
                return noise(stream, channels).to(device=self.device, dtype=self.dtype)

            lq = lq.to(device=self.device, dtype=self.dtype)
            x0 = self.generate(self.encode(lq), lq, on_device, steps)
            return {"x0": x0, "hr": self.decode(x0)}

        return TileModel(run, self.codec.scale, self.codec.latent_channels, self.unet.noise_channels, steps, self.device)

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
        sample i of ``seed``, so results do not depend on batch composition or (seamless) tiling."""
        # tqdm draws only on a terminal (disable=None): piped logs get no bars or escape codes
        bar = tqdm(desc="tiles", unit="tile", disable=None if progress else True, leave=False)

        def advance(job, done: int, total: int) -> None:
            if done == 1:
                bar.reset(total=total)
            bar.update(1)

        try:
            outputs, _ = upscale_images(self.tile_model(steps), list(lr), tiles, seed, progress=advance)
        finally:
            bar.close()
        return torch.stack(outputs)
