"""The upstream anchors of ``rsd-bench``: the sampling procedures as the official inference scripts
run them, the speed every backend is compared with.

- the one-step RSD (or SinSR) student: ``SRPipeline.forward`` image by image (its tiling, noise
  from :class:`~rsd_deploy.sampling.NoiseField`), one UNet call at t = T-1;
- the ResShift teacher: the same procedure over all T steps of its schedule.

Each is a runner of its own (:class:`UpstreamProcedure`): its stages are the procedure's encode,
sampler and decode; its sampler reads ``z_y`` (not the chain's ``x_t``) because, as in the
official samplers, it draws x_T and every step's noise itself. On CUDA it runs under fp16
autocast, as ResShift's script does; on a CPU in fp32 (autocast there is bf16, which no official
script uses). The report states which.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from rsd_deploy import chain
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.sampling import NoiseField

from .runners import Runner

SAMPLER = chain.Stage(chain.GENERATOR.name, ("z_y", "lq"), chain.GENERATOR.outputs)
UPSTREAM_STAGES = (chain.ENCODER, SAMPLER, chain.DECODER)  # what each stage of a procedure reads


class UpstreamProcedure(Runner):
    """``steps`` steps of ``pipe``'s sampler on ``device``, with the noise of ``seed``."""

    def __init__(self, pipe: SRPipeline, steps: int, device: torch.device | str, seed: int = 0, autocast: bool = True):
        pipe.check_steps(steps)
        self.device = torch.device(device)
        self.pipe = copy.deepcopy(pipe).to(self.device).float().eval()
        self.steps, self.seed = steps, seed
        on_gpu = self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if autocast and on_gpu else nullcontext
        self.name = "upstream"
        self.precision = "fp16 autocast" if autocast and on_gpu else "fp32"
        self.stages = tuple(stage.name for stage in UPSTREAM_STAGES)
        self.notes = (f"{self.precision}, as the official scripts" if on_gpu else "fp32: the official scripts' fp16 autocast is CUDA-only") \
            + f"; {steps} step{'s' if steps > 1 else ''}"

    @torch.no_grad()
    def run(self, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pipe = self.pipe
        feeds = {name: tensor.to(self.device) for name, tensor in feeds.items()}
        with self.autocast():
            if stage == SAMPLER.name:
                out = pipe.generate(feeds["z_y"], feeds["lq"], self._noise(feeds["z_y"]), self.steps)
            else:  # encode and decode are the pipeline's own stages
                out = pipe.run_stage(stage, feeds)
        (name,) = next(s for s in UPSTREAM_STAGES if s.name == stage).outputs
        return {name: out}

    def _noise(self, z_y: torch.Tensor):
        """The procedure's noise source: sample i of :class:`NoiseField` ``seed`` for image i."""
        field = NoiseField(self.seed)
        batch, channels, height, width = z_y.shape

        def noise(stream: int, depth: int = channels) -> torch.Tensor:
            return torch.stack([field.crop(i, stream, depth, 0, 0, height, width) for i in range(batch)]).to(self.device)

        return noise

    @torch.no_grad()
    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        """The whole procedure on LR images in [0, 1]: ``SRPipeline.forward``, image by image."""
        with self.autocast():
            return self.pipe(lr, steps=self.steps, seed=self.seed)

    def memory(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        return {"peak_gpu_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}

    def reset_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
