"""The upstream anchors of ``rsd-bench``: the sampling procedures as the official inference scripts
run them, the speed every backend is compared with.

Which script runs a model (:func:`official_script`): the T-step teacher is ResShift's
``inference_resshift.py``; a one-step student with a noise map is RSD's ``inference.py --task RSD
--one_step``; one without is SinSR's ``inference.py --one_step``. They differ in precision on a GPU
(:class:`OfficialScript`): ResShift runs its fp32 model under fp16 autocast (``use_amp=True``);
SinSR and RSD build their sampler with ``use_fp16=True`` (the UNet's torso, its input / middle /
output blocks, converted to fp16 by ``convert_to_fp16``) and halve the autoencoder
(``autoencoder.use_fp16: True`` in their configs). Their fp16 is CUDA-only: on a CPU every script
runs fp32, and the runner's notes say so.

Two kinds of anchor run these procedures:

- :class:`UpstreamProcedure` (no checkout given): the project pipeline, unbatched:
  ``SRPipeline.forward`` image by image (its tiling, noise from
  :class:`~rsd_deploy.sampling.NoiseField`), in the script's precision;
- :class:`~.bench_official.OfficialSampler` (``rsd-bench --upstream-src DIR``): the official
  sampler classes themselves.

Each is a runner of its own: its stages are the procedure's encode, sampler and decode; its
sampler reads ``z_y`` (not the chain's ``x_t``) because, as in the official samplers, it draws
x_T and every step's noise itself.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn

from rsd_deploy import chain
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.sampling import NoiseField

from .runners import Runner

SAMPLER = chain.Stage(chain.GENERATOR.name, ("z_y", "lq"), chain.GENERATOR.outputs)
UPSTREAM_STAGES = (chain.ENCODER, SAMPLER, chain.DECODER)  # what each stage of a procedure reads

# What an official script runs on CUDA (OfficialScript.precision); on a CPU all of them run FP32.
FP32 = "fp32"
FP16_AUTOCAST = "fp16 autocast"
FP16_TORSO = "fp16 UNet torso + fp16 autoencoder"
PRECISIONS = (FP32, FP16_AUTOCAST, FP16_TORSO)


@dataclass(frozen=True)
class OfficialScript:
    """How an official inference script runs its sampler: the sampler class in its ``sampler.py``,
    the config it loads, the keyword arguments it builds the sampler with, its precision on CUDA."""

    method: str  # ResShift, SinSR, RSD: the repository
    script: str  # the command line whose sampling is reproduced
    sampler: str  # class in sampler.py
    config: str  # YAML the script loads, relative to the checkout
    precision: str  # on CUDA
    one_step: bool
    sampler_kwargs: tuple[tuple[str, object], ...]  # what the script passes besides configs and seed
    config_overrides: tuple[tuple[str, object], ...]  # what the script sets in the loaded config (dotted keys)

    def label(self, device: torch.device) -> str:
        """The precision this script runs at on ``device``, and why when it is not its own."""
        if device.type == "cuda":
            return f"{self.precision}, as {self.script}"
        return f"fp32: {self.script} runs {self.precision} on CUDA only"


# inference_resshift.py (default options): sf 4, chop 512 / stride 448, chop_bs 1, use_amp True,
# padding_offset = the config's lq_size (64 in both real-world configs)
_RESSHIFT_KWARGS = (("sf", 4), ("chop_size", 512), ("chop_stride", 448), ("chop_bs", 1), ("use_amp", True), ("padding_offset", 64))
RESSHIFT = OfficialScript("ResShift", "inference_resshift.py", "ResShiftSampler", "configs/realsr_swinunet_realesrgan256.yaml",
                          FP16_AUTOCAST, False, _RESSHIFT_KWARGS, (("diffusion.params.sf", 4),))
RESSHIFT_V3 = OfficialScript("ResShift", "inference_resshift.py -v v3", "ResShiftSampler", "configs/realsr_swinunet_realesrgan256_journal.yaml",
                             FP16_AUTOCAST, False, _RESSHIFT_KWARGS, (("diffusion.params.sf", 4),))
# inference.py of SinSR and RSD (default options): chop 512 / stride 448, chop_bs 1, use_fp16 True,
# ddim False; it sets the config's sf to 4 and timestep_respacing to --infer_steps (= --steps, 15)
_SAMPLER_KWARGS = (("chop_size", 512), ("chop_stride", 448), ("chop_bs", 1), ("use_fp16", True), ("ddim", False))
_SAMPLER_CONFIG = (("diffusion.params.sf", 4), ("diffusion.params.timestep_respacing", 15))
SINSR = OfficialScript("SinSR", "inference.py --one_step", "Sampler", "configs/SinSR.yaml", FP16_TORSO, True, _SAMPLER_KWARGS, _SAMPLER_CONFIG)
RSD = OfficialScript("RSD", "inference.py --task RSD --one_step", "Sampler", "configs/RSD.yaml", FP16_TORSO, True, _SAMPLER_KWARGS,
                     _SAMPLER_CONFIG)


def official_script(pipe: SRPipeline, steps: int) -> OfficialScript:
    """The official script that runs ``pipe`` for ``steps`` steps."""
    if steps > 1:
        return RESSHIFT_V3 if steps == 4 else RESSHIFT
    return RSD if pipe.takes_noise_map else SINSR


# --- the official precisions on the project's modules ----------------------------------------------


def half_torso(unet: nn.Module) -> None:
    """``convert_to_fp16`` of the official UNet: the convolutions and linear layers of the input,
    middle and output blocks in fp16; the time embedding and the output head stay fp32. As in
    the official forward, activations and the time embedding enter the torso in fp16 and leave it
    for the head in fp32 (GroupNorm computes in fp32 either way)."""
    for blocks in (unet.input_blocks, unet.middle_block, unet.output_blocks):
        for module in blocks.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.half()
    to_half = lambda module, args: tuple(a.half() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)  # noqa: E731
    for block in (*unet.input_blocks, unet.middle_block, *unet.output_blocks):
        block.register_forward_pre_hook(to_half)
    unet.out.register_forward_pre_hook(lambda module, args: tuple(a.float() for a in args))


class HalfCodec(nn.Module):
    """The official samplers' half autoencoder: fp16 weights; ``encode_first_stage`` and
    ``decode_first_stage`` cast the input to fp16 and the output back to the caller's dtype."""

    def __init__(self, codec: nn.Module):
        super().__init__()
        self.inner = codec.half()
        self.kind, self.scale, self.latent_channels = codec.kind, codec.scale, codec.latent_channels

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.encode(x.half()).to(x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(z.half()).to(z.dtype)


class UpstreamProcedure(Runner):
    """``steps`` steps of ``pipe``'s sampler on ``device``, with the noise of ``seed``: the project
    pipeline, unbatched, at ``precision`` (default: what the official script runs on this device,
    see :func:`official_script`)."""

    def __init__(self, pipe: SRPipeline, steps: int, device: torch.device | str, seed: int = 0, precision: str | None = None):
        pipe.check_steps(steps)
        self.device = torch.device(device)
        script = official_script(pipe, steps)
        on_gpu = self.device.type == "cuda"
        self.precision = precision or (script.precision if on_gpu else FP32)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision != FP32 and not on_gpu:
            raise ValueError(f"precision {self.precision!r}: the official scripts' fp16 runs on CUDA only")
        self.pipe = copy.deepcopy(pipe).to(self.device).float().eval()
        if self.precision == FP16_TORSO:
            half_torso(self.pipe.unet)
            self.pipe.codec = HalfCodec(self.pipe.codec)
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if self.precision == FP16_AUTOCAST else nullcontext
        self.steps, self.seed = steps, seed
        self.own_noise = False  # the benchmark's noise (NoiseField), so its images are compared
        self.name = "upstream"
        self.stages = tuple(stage.name for stage in UPSTREAM_STAGES)
        how = script.label(self.device) if precision is None else self.precision
        self.notes = f"project pipeline, unbatched (SRPipeline.forward image by image) for the official {script.method} procedure; " \
                     f"{how}; {steps} step{'s' if steps > 1 else ''}"

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
        return {name: out.float()}

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
            return self.pipe(lr, steps=self.steps, seed=self.seed).float()

    def memory(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        return {"peak_gpu_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}

    def reset_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
