"""One description per exported stage: the single source of tensor names, shapes and ranges.

Everything that handles an exported graph reads these descriptions and declares no shapes or
names of its own: ONNX export, fp16/INT8 conversion, TensorRT profiles, parity checks, reports,
benchmarks, Triton model repositories and the C++ runner.

Stages (``STAGE_NAMES``), for a pipeline whose latent has ``C`` channels (3 for the VQ-f4, 48 for
the pixel-unshuffle demo codec) and an LR size ``h x w`` (the latent has the same size):

==========  ====================================================  ==========================
stage       inputs                                                outputs
==========  ====================================================  ==========================
encoder     ``lq_up``  (B, 3, 4h, 4w) bicubic x4 LR in [-1, 1]     ``z_y`` (B, C, h, w)
generator   ``x_t`` (B, C, h, w) noised latent x_T,               ``x0`` (B, C, h, w)
            ``lq`` (B, 3, h, w) LR in [-1, 1],
            ``noise_map`` (B, 1, h, w) N(0, 1), RSD students only
decoder     ``z`` (B, C, h, w)                                     ``hr`` (B, 3, 4h, 4w) in [-1, 1]
pipeline    ``lr`` (B, 3, h', w') LR in [0, 1], any h' <= h,       ``hr`` (B, 3, 4h', 4w') in [0, 1]
            ``eps`` (B, C, h, w) N(0, 1) prior noise,
            ``noise_map`` (B, 1, h, w), RSD students only
==========  ====================================================  ==========================

``h`` and ``w`` are multiples of 64 (:data:`SIZE_MULTIPLE`). The fused ``pipeline`` graph pads
``lr`` inside (reflect, bottom/right, as :func:`rsd_deploy.pipeline.pad_to_multiple`) to the size
of ``eps`` and crops the result back, so callers give ``eps`` at
:func:`padded_size` of the LR size. The generator runs the one step at ``t = T - 1``:
``x0 = unet(x_t / sqrt(kappa^2 eta_T + 1), T - 1, lq, noise_map)``; callers form
``x_t = z_y + kappa sqrt(eta_T) eps`` (:meth:`ResShiftSchedule.prior_sample`).

Example::

    from rsd_deploy.checkpoints import build_pipeline
    from rsd_deploy.export.stages import ShapeRange, describe_stages

    pipe = build_pipeline("tiny-rsd")
    stages = describe_stages(pipe)
    gen = stages["generator"]
    gen.input_names                      # ('x_t', 'lq', 'noise_map')
    module = gen.module(pipe)            # torch module: forward(*inputs in input order)
    feeds = gen.sample_inputs(batch=2, height=64, width=64, seed=0)   # {name: tensor}
    ShapeRange().profile(gen)            # {name: (min_shape, opt_shape, max_shape)}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from rsd_deploy import chain
from rsd_deploy.chain import SIZE_MULTIPLE
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.sampling import NOISE_MAP_STREAM, PRIOR_STREAM, NoiseField

CHAINED_STAGES = chain.STAGE_NAMES  # run one after another, they make the pipeline
FUSED = "pipeline"  # the whole chain as one graph
STAGE_NAMES = (*CHAINED_STAGES, FUSED)
SINGLE_INPUT = "pipeline_single_input"  # the fused graph with its noise baked in: lr -> hr
Shape = tuple[int, ...]


# --- tensors and shape ranges ------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: (batch, channels, scale * height, scale * width), float32.

    ``height``/``width`` are LR (= latent) sizes. ``aligned`` tensors have them at a multiple of
    64; the fused graph's ``lr`` input is not aligned (any size up to the aligned one).
    """

    name: str
    channels: int
    scale: int = 1  # spatial size in LR pixels: 1 for LR images and latents, 4 for HR images
    doc: str = ""
    aligned: bool = True
    dtype: str = "float32"

    def shape(self, batch: int, height: int, width: int) -> Shape:
        return (batch, self.channels, self.scale * height, self.scale * width)

    def symbolic_shape(self) -> list[str | int]:
        """Shape with named dynamic axes, as written into the ONNX graph."""
        prefix = "" if self.scale == 1 else f"{self.scale}*"
        suffix = "" if self.aligned else "_lr"
        return ["batch", self.channels, f"{prefix}height{suffix}", f"{prefix}width{suffix}"]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": self.symbolic_shape(), "doc": self.doc}


def _check_triple(what: str, triple: tuple[int, int, int], multiple: int) -> tuple[int, int, int]:
    low, opt, high = (int(v) for v in triple)
    if not 0 < low <= opt <= high:
        raise ValueError(f"{what} range must satisfy 0 < min <= opt <= max, got {low}/{opt}/{high}")
    if any(v % multiple for v in (low, opt, high)):
        raise ValueError(f"{what} range must be multiples of {multiple}, got {low}/{opt}/{high}")
    return low, opt, high


@dataclass(frozen=True)
class ShapeRange:
    """The (min, opt, max) batch and LR sizes an exported graph / engine profile accepts.

    Sizes are LR pixels (multiples of 64). The default (batch 1..4, LR 64..256, opt 1 x 64) is
    modest on purpose: it bounds TensorRT workspace and export time, and it covers the tiles
    ``rsd-upscale`` sends (256 LR px by default).
    """

    batch: tuple[int, int, int] = (1, 1, 4)
    height: tuple[int, int, int] = (64, 64, 256)
    width: tuple[int, int, int] = (64, 64, 256)

    def __post_init__(self):
        object.__setattr__(self, "batch", _check_triple("batch", self.batch, 1))
        object.__setattr__(self, "height", _check_triple("LR height", self.height, SIZE_MULTIPLE))
        object.__setattr__(self, "width", _check_triple("LR width", self.width, SIZE_MULTIPLE))

    def profile(self, stage: "StageSpec") -> dict[str, tuple[Shape, Shape, Shape]]:
        """Per input name: (min, opt, max) shapes, e.g. for a TensorRT optimization profile."""
        out = {}
        for spec in stage.inputs:
            shapes = []
            for i in range(3):
                height, width = self.height[i], self.width[i]
                if not spec.aligned and i == 0:  # the smallest LR that pads to the minimum
                    height, width = max(1, height - SIZE_MULTIPLE + 1), max(1, width - SIZE_MULTIPLE + 1)
                shapes.append(spec.shape(self.batch[i], height, width))
            out[spec.name] = tuple(shapes)
        return out

    def contains(self, batch: int, height: int, width: int) -> bool:
        return (
            self.batch[0] <= batch <= self.batch[2]
            and self.height[0] <= height <= self.height[2]
            and self.width[0] <= width <= self.width[2]
            and height % SIZE_MULTIPLE == 0
            and width % SIZE_MULTIPLE == 0
        )

    def covers(self, other: "ShapeRange") -> bool:
        """Whether every shape ``other`` accepts is inside this range (its min and max)."""
        pairs = ((self.batch, other.batch), (self.height, other.height), (self.width, other.width))
        return all(mine[0] <= theirs[0] and theirs[2] <= mine[2] for mine, theirs in pairs)

    def to_json(self) -> dict:
        return {"batch": list(self.batch), "lr_height": list(self.height), "lr_width": list(self.width)}

    @classmethod
    def from_json(cls, recorded: dict) -> "ShapeRange":
        """The range :meth:`to_json` wrote; KeyError / TypeError / ValueError for anything else."""
        return cls(batch=tuple(recorded["batch"]), height=tuple(recorded["lr_height"]), width=tuple(recorded["lr_width"]))

    def __str__(self) -> str:
        def fmt(t):
            return f"{t[0]}..{t[2]} (opt {t[1]})"

        return f"batch {fmt(self.batch)}, LR height {fmt(self.height)}, LR width {fmt(self.width)}"


# --- the torch modules each graph is exported from ----------------------------------------------


class ChainStage(nn.Module):
    """One stage of :mod:`rsd_deploy.chain` as a module whose ``forward`` takes the stage's
    inputs in order (what ``torch.onnx.export`` needs)."""

    def __init__(self, pipe: SRPipeline, stage: chain.Stage):
        super().__init__()
        self.pipe = pipe
        self.stage = stage

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.pipe.run_stage(self.stage.name, dict(zip(self.stage.inputs, inputs)))


class OneStepPipeline(nn.Module):
    """The whole one-step SR as one graph: ``lr`` in [0, 1], ``eps`` [, ``noise_map``] -> ``hr``
    in [0, 1]; :func:`rsd_deploy.chain.upscale` (pad to the size of ``eps``, bicubic x4, encode,
    prior sample, one step, decode, crop)."""

    def __init__(self, pipe: SRPipeline):
        super().__init__()
        self.pipe = pipe

    def forward(self, lr: torch.Tensor, eps: torch.Tensor, noise_map: torch.Tensor | None = None) -> torch.Tensor:
        def stage(name: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
            out = self.pipe.run_stage(name, feeds)
            # Latents take eps's shape (a no-op) so that their sizes are the graph input's, not
            # expressions through the encoder's and the UNet's down/upsampling: with those,
            # TensorRT's Myelin cannot plan the decoder's memory for a dynamic batch and fails
            # (std::bad_alloc in TensorRT-RTX 1.7 for batch > 1 at LR >= 128).
            return out if name == chain.DECODER.name else out.reshape(eps.shape)

        pipe = self.pipe
        return chain.upscale(stage, lr, eps, noise_map, pipe.schedule.prior_scale, pipe.codec.scale)


class SingleInputPipeline(nn.Module):
    """The fused graph with its noise baked in, for tools that feed a model one image and take
    one image back (vs-mlrt, chaiNNer): ``lr`` -> ``hr``. The noise is what ``rsd-upscale
    --seed S`` draws for an image's top-left corner (:class:`~rsd_deploy.sampling.NoiseField`
    sample 0), stored once at the largest padded size and sliced to each input's."""

    def __init__(self, pipe: SRPipeline, max_height: int, max_width: int, seed: int = 0):
        super().__init__()
        self.fused = OneStepPipeline(pipe)
        field = NoiseField(seed)
        self.register_buffer("eps", field.crop(0, PRIOR_STREAM, pipe.codec.latent_channels, 0, 0, max_height, max_width)[None])
        noise_map = field.crop(0, NOISE_MAP_STREAM, pipe.unet.noise_channels, 0, 0, max_height, max_width)[None] if pipe.takes_noise_map else None
        self.register_buffer("noise_map", noise_map)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = lr.shape
        # the padded size, written without max() so an export keeps it symbolic (sides are >= 1)
        padded_h = (height + SIZE_MULTIPLE - 1) // SIZE_MULTIPLE * SIZE_MULTIPLE
        padded_w = (width + SIZE_MULTIPLE - 1) // SIZE_MULTIPLE * SIZE_MULTIPLE

        def sliced(noise: torch.Tensor) -> torch.Tensor:
            return noise[:, :, :padded_h, :padded_w].expand(batch, -1, -1, -1)

        noise_map = sliced(self.noise_map) if self.noise_map is not None else None
        return self.fused(lr, sliced(self.eps), noise_map)


def single_input_stage(pipe: SRPipeline, shapes: ShapeRange, seed: int = 0) -> "StageSpec":
    """The description of :class:`SingleInputPipeline` for images up to ``shapes``' largest
    size (its noise is stored at that size)."""
    return StageSpec(
        SINGLE_INPUT,
        f"fused one-step SR with noise baked in (seed {seed}): LR [0, 1] -> HR [0, 1], the only input is the image",
        (TensorSpec("lr", 3, doc="LR image in [0, 1], any size up to the exported maximum", aligned=False),),
        (TensorSpec("hr", 3, scale=pipe.codec.scale, doc="HR image in [0, 1], 4x the size of lr", aligned=False),),
        lambda p: SingleInputPipeline(p, shapes.height[2], shapes.width[2], seed),
    )


# --- stage descriptions ------------------------------------------------------------------------


@dataclass(frozen=True)
class StageSpec:
    """Name, tensors and torch module of one exported graph (see the module docstring)."""

    name: str
    summary: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    builder: Callable[[SRPipeline], nn.Module] = field(repr=False, compare=False)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def module(self, pipe: SRPipeline) -> nn.Module:
        """The torch module this graph is exported from; ``forward`` takes the inputs in order."""
        return self.builder(pipe).eval()

    def sample_inputs(self, batch: int, height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Fresh random inputs in each tensor's natural range, for an LR size ``height x width``
        (multiples of 64; the fused graph's ``lr`` gets that size too)."""
        generator = torch.Generator().manual_seed(seed)
        feeds = {}
        for spec in self.inputs:
            shape = spec.shape(batch, height, width)
            if spec.name in ("lq_up", "lq"):  # images in [-1, 1]
                feeds[spec.name] = torch.rand(shape, generator=generator) * 2 - 1
            elif spec.name == "lr":  # image in [0, 1]
                feeds[spec.name] = torch.rand(shape, generator=generator)
            else:  # latents and noise
                feeds[spec.name] = torch.randn(shape, generator=generator)
        return feeds

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "summary": self.summary,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


def onnx_file_name(stage: str, precision: str) -> str:
    """``encoder.fp32.onnx``, ``generator.fp16.onnx``, ``pipeline.int8.onnx``, ..."""
    return f"{stage}.{precision}.onnx"


def chain_tensors(pipe: SRPipeline) -> dict[str, TensorSpec]:
    """Every tensor of :mod:`rsd_deploy.chain` for this pipeline (channels, scale, meaning)."""
    latent, scale = pipe.codec.latent_channels, pipe.codec.scale
    specs = [
        TensorSpec("lq_up", 3, scale, "bicubic x4 LR image in [-1, 1]"),
        TensorSpec("z_y", latent, doc="latent of the upsampled LR image"),
        TensorSpec("x_t", latent, doc="x_T = z_y + kappa sqrt(eta_T) eps"),
        TensorSpec("lq", 3, doc="LR image in [-1, 1]"),
        TensorSpec("x0", latent, doc="predicted clean latent"),
        TensorSpec("z", latent, doc="latent (x0 of the generator)"),
        TensorSpec("hr", 3, scale, "HR image in [-1, 1]"),
        TensorSpec("eps", latent, doc="N(0, 1) prior noise at the padded LR size"),
    ]
    if pipe.takes_noise_map:
        specs.append(TensorSpec("noise_map", pipe.unet.noise_channels, doc="N(0, 1) noise map (RSD student input)"))
    return {spec.name: spec for spec in specs}


def describe_stages(pipe: SRPipeline) -> dict[str, StageSpec]:
    """The four stage descriptions of a pipeline, keyed by :data:`STAGE_NAMES`: the chain's
    stages (tensor names from :mod:`rsd_deploy.chain`) and the fused graph."""
    tensors = chain_tensors(pipe)
    kind = pipe.codec.kind
    summaries = {
        "encoder": f"{kind} encoder: bicubic x4 LR -> latent z_y" + (" (no quantisation)" if kind == "vq" else ""),
        "generator": f"one-step UNet at t = T-1 = {pipe.schedule.steps - 1}: x_t, lq -> x0 latent",
        "decoder": f"{kind} decoder: latent -> HR image" + (" (codebook quantisation, clamp to [-1, 1])" if kind == "vq" else " (clamp to [-1, 1])"),
    }

    def described(stage: chain.Stage) -> StageSpec:
        inputs = tuple(tensors[name] for name in stage.inputs if name in tensors)
        return StageSpec(stage.name, summaries[stage.name], inputs, tuple(tensors[name] for name in stage.outputs),
                         lambda p: ChainStage(p, stage))

    fused = StageSpec(
        FUSED,
        "fused one-step SR: LR [0, 1] + noise -> HR [0, 1] (pad, bicubic, encode, step, decode, crop inside)",
        (
            TensorSpec("lr", 3, doc="LR image in [0, 1], any size up to the size of eps", aligned=False),
            tensors["eps"],
            *([tensors["noise_map"]] if "noise_map" in tensors else []),
        ),
        (TensorSpec("hr", 3, scale=pipe.codec.scale, doc="HR image in [0, 1], 4x the size of lr", aligned=False),),
        OneStepPipeline,
    )
    return {**{stage.name: described(stage) for stage in chain.STAGES}, FUSED: fused}


@torch.no_grad()
def stage_inputs_from_images(pipe: SRPipeline, lr: torch.Tensor, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs of every stage for real LR images (B, 3, h, w) in [0, 1], h and w multiples of 64:
    what each stage sees when the PyTorch pipeline runs on them (for parity on real photos and
    for INT8 calibration). Noise is seeded N(0, 1)."""
    if lr.shape[-1] % SIZE_MULTIPLE or lr.shape[-2] % SIZE_MULTIPLE:
        raise ValueError(f"LR images must be multiples of {SIZE_MULTIPLE} pixels, got {tuple(lr.shape[-2:])}")
    generator = torch.Generator().manual_seed(seed)
    batch, _, height, width = lr.shape
    eps = torch.randn(batch, pipe.codec.latent_channels, height, width, generator=generator)
    noise_map = torch.randn(batch, pipe.unet.noise_channels, height, width, generator=generator) if pipe.takes_noise_map else None
    return stage_inputs(pipe, lr, eps, noise_map)


@torch.no_grad()
def stage_inputs(pipe: SRPipeline, lr: torch.Tensor, eps: torch.Tensor, noise_map: torch.Tensor | None) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs of every stage when the PyTorch pipeline runs the chain on ``lr`` (sides multiples
    of 64) with the given noise."""
    lr = lr.float()
    tensors = chain.run(pipe.run_stage, chain.to_model_range(lr), eps, noise_map, pipe.schedule.prior_scale, pipe.codec.scale)
    extra = {} if noise_map is None else {"noise_map": noise_map}
    return {**{stage.name: chain.stage_feeds(stage, tensors) for stage in chain.STAGES}, FUSED: {"lr": lr, "eps": eps, **extra}}
