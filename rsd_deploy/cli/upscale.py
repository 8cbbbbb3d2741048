"""``rsd-upscale``: x4 super-resolution of images or folders of images into PNGs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoints import CheckpointError, build_pipeline, default_pipeline, load_pipeline
from ..imageio import ImageError, list_images, read_image, write_png
from ..models.attention import attention_backends
from ..pipeline import SRPipeline, TileOptions
from ..presets import PRESETS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsd-upscale", description=__doc__)
    parser.add_argument("inputs", nargs="*", help="image files or folders (default: a bundled photo)")
    parser.add_argument("-o", "--out", default="rsd-upscale-out", help="output folder for the PNGs")
    model = parser.add_argument_group("model (default: the embedded demo model)")
    model.add_argument("--checkpoint", help="UNet checkpoint (.pth/.safetensors) or a saved pipeline folder")
    model.add_argument("--vae", help="VQ-f4 autoencoder checkpoint (e.g. autoencoder_vq_f4.pth)")
    model.add_argument("--config", help="official ResShift YAML, when the weights alone are ambiguous")
    model.add_argument("--preset", choices=sorted(PRESETS), help="an architecture with random weights (testing)")
    run = parser.add_argument_group("sampling")
    run.add_argument("--steps", type=int, default=1, help="1 (one-step) or the schedule's T (teacher chain)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--tile", type=int, default=256, help="tile size in LR pixels (multiple of 64)")
    run.add_argument("--overlap", type=int, default=32, help="tile overlap in LR pixels")
    run.add_argument("--tile-batch", type=int, default=1, help="tiles per network call")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    run.add_argument("--attention", choices=attention_backends(), default="reference", help="window-attention implementation")
    return parser


def load_model(args: argparse.Namespace) -> SRPipeline:
    if args.preset:
        return build_pipeline(args.preset)
    if args.checkpoint:
        return load_pipeline(args.checkpoint, args.vae, unet_config=args.config)
    return default_pipeline()


def bundled_photo(out_dir: Path) -> Path:
    """scikit-image's astronaut photo, cropped and saved as the default input."""
    from skimage import data

    from ..imageio import Picture

    path = out_dir / "astronaut_lr.png"
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    write_png(path, Picture(photo[:, 64:192, 160:288]))
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out)
    try:
        tiles = TileOptions(args.tile, args.overlap, args.tile_batch)
        started = time.perf_counter()
        pipe = load_model(args)
        pipe.unet.set_attention_backend(args.attention)
        pipe = pipe.to(device=args.device, dtype=DTYPES[args.dtype])
    except (CheckpointError, ValueError, RuntimeError) as error:
        print(f"rsd-upscale: error: {error}", file=sys.stderr)
        return 2
    print(f"model: {pipe.description} (loaded in {time.perf_counter() - started:.1f} s)")
    if pipe.description.startswith("UNTRAINED"):
        print("rsd-upscale: WARNING: these weights are untrained; outputs are not super-resolution", file=sys.stderr)
    paths = list_images(args.inputs) if args.inputs else [bundled_photo(out_dir)]
    failures = 0
    for path in tqdm(paths, desc="images", unit="img", disable=len(paths) < 2):
        try:
            picture = read_image(path)
            hr = pipe(picture.rgb[None], steps=args.steps, seed=args.seed, tiles=tiles, progress=True)[0]
            target = out_dir / f"{path.stem}_x4.png"
            write_png(target, picture.upscaled(hr))
            tqdm.write(f"{path} -> {target} ({picture.rgb.shape[2]}x{picture.rgb.shape[1]} -> {hr.shape[2]}x{hr.shape[1]})")
        except (ImageError, ValueError) as error:
            failures += 1
            tqdm.write(f"rsd-upscale: error: {error}", file=sys.stderr)
    print(f"{len(paths) - failures} of {len(paths)} images written to {out_dir} in {time.perf_counter() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
