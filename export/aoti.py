"""AOTInductor packages of the fused one-step pipeline, for C++ programs linking libtorch.

:func:`package_pipeline` compiles the ``pipeline`` stage of :mod:`.stages` (``lr`` in [0, 1],
``eps`` [, ``noise_map``] -> ``hr`` in [0, 1]; padding, bicubic, encode, one step, decode and
crop inside) for one LR size with ``torch._inductor.aoti_compile_and_package`` into a ``.pt2``
file. ``examples/cpp/aoti_runner.cpp`` loads it with ``torch::inductor::AOTIModelPackageLoader``,
reads a PNG, draws the noise and writes the x4 PNG.

The noise contract that makes C++ and Python agree bit for bit: one CPU generator seeded with
``seed`` draws ``eps`` (latent channels, padded LR size) and then ``noise_map`` (RSD students
only), with ``randn``. :func:`reference_upscale` is that procedure in Python. The package stores
the channel counts and the LR size in its metadata, so the runner needs no other file.

Command line: ``python -m rsd_deploy.export.aoti --preset tiny-rsd --lr-size 64 --out model.pt2``
(``--checkpoint DIR`` for a trained model; ``--reference in.png out.png`` writes Python's result).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from rsd_deploy.atomic import atomic_path
from rsd_deploy.pipeline import SRPipeline

from rsd_deploy.chain import padded_size

from .stages import describe_stages


def pipeline_noise(pipe: SRPipeline, height: int, width: int, seed: int) -> list[torch.Tensor]:
    """``eps`` [, ``noise_map``] for one LR image of ``height x width``, as the C++ runner
    draws them (one CPU generator, in that order)."""
    generator = torch.Generator().manual_seed(seed)
    size = (padded_size(height), padded_size(width))
    noise = [torch.randn(1, pipe.codec.latent_channels, *size, generator=generator)]
    if pipe.takes_noise_map:
        noise.append(torch.randn(1, pipe.unet.noise_channels, *size, generator=generator))
    return noise


def package_pipeline(pipe: SRPipeline, path: str | Path, height: int, width: int, log=print) -> Path:
    """Compile the fused one-step pipeline for ``height x width`` LR images (batch 1) into an
    AOTInductor package at ``path``; returns the path."""
    path = Path(path)
    stage = describe_stages(pipe)["pipeline"]
    module = stage.module(pipe.float().cpu())
    lr = torch.rand(1, 3, height, width)
    inputs = (lr, *pipeline_noise(pipe, height, width, 0))
    began = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(module, inputs)
    log(f"torch.export: {time.perf_counter() - began:.1f} s")
    metadata = {
        "rsd.inputs": ",".join(stage.input_names),
        "rsd.latent_channels": str(pipe.codec.latent_channels),
        "rsd.noise_channels": str(pipe.unet.noise_channels if pipe.takes_noise_map else 0),
        "rsd.lr_size": f"{height}x{width}",
        "rsd.scale": str(pipe.codec.scale),
    }
    began = time.perf_counter()
    with atomic_path(path) as tmp:
        tmp.unlink()  # the packager refuses to overwrite
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs={"aot_inductor.metadata": metadata})
    log(f"AOTInductor compile + package: {time.perf_counter() - began:.1f} s -> {path}")
    return path


def read_png(path: str | Path) -> torch.Tensor:
    """(1, 3, h, w) in [0, 1] from an 8-bit RGB PNG (as the C++ runner reads it)."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.array(image.convert("RGB"), dtype=np.uint8)
    # contiguous NCHW: a compiled package assumes the strides of its example inputs and does not
    # check them (a channels-last view gives wrong pixels, not an error)
    return (torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255).contiguous()


def to_uint8(hr: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounding as the C++ runner does."""
    return np.rint(hr[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@torch.no_grad()
def reference_upscale(model, pipe: SRPipeline, lr: torch.Tensor, seed: int) -> np.ndarray:
    """Python's result for the C++ runner's procedure: ``model`` is the eager ``pipeline`` stage
    module or a loaded package (``torch._inductor.aoti_load_package``)."""
    height, width = lr.shape[-2:]
    return to_uint8(model(lr.contiguous(), *pipeline_noise(pipe, height, width, seed)))


def main(argv: list[str] | None = None) -> int:
    from rsd_deploy.cli.args import OneLineParser, UsageError, add_model_arguments, load_model, run_command

    parser = OneLineParser(prog="python -m rsd_deploy.export.aoti", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--lr-size", default="64", help="LR size the package is compiled for: H or HxW")
    parser.add_argument("--out", type=Path, required=True, help="the .pt2 package to write")
    parser.add_argument("--reference", nargs=2, type=Path, metavar=("IN_PNG", "OUT_PNG"), help="also write Python's result for IN_PNG")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (and of random weights with --preset)")
    args = parser.parse_args(argv)

    def run() -> int:
        try:
            height, width = (int(v) for v in (args.lr_size.split("x") * 2)[:2])
        except ValueError:
            raise UsageError(f"--lr-size: expected H or HxW, got {args.lr_size!r}") from None
        lr = None
        if args.reference:
            lr = read_png(args.reference[0])
            if tuple(lr.shape[-2:]) != (height, width):
                raise UsageError(f"{args.reference[0]} is {lr.shape[-1]}x{lr.shape[-2]}, the package takes {width}x{height}")
        pipe = load_model(args, seed=args.seed)
        package_pipeline(pipe, args.out, height, width)
        if lr is not None:
            from PIL import Image

            result = reference_upscale(describe_stages(pipe)["pipeline"].module(pipe), pipe, lr, args.seed)
            with atomic_path(args.reference[1]) as tmp:
                Image.fromarray(result).save(tmp)
        return 0

    return run_command(parser.prog, run)


if __name__ == "__main__":
    sys.exit(main())
