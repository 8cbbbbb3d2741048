"""``rsd-upscale``: x4 super-resolution of images or folders of images into PNGs.

Every input gets ``OUT/{name}_x4.png``; a folder's tree is mirrored under OUT (searched
recursively, hidden entries skipped). Two inputs of one run never share an output: the later one
(in input order) gets ``{name}_2_x4.png``, ``_3``... An output from an earlier run is kept and
the input skipped, unless --overwrite.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..atomic import TargetExistsError
from ..imageio import ImageError, ImageTooLargeError, Picture, list_images, png_strips, read_image
from ..models.attention import attention_backends
from ..chain import SIZE_MULTIPLE
from ..pipeline import SRPipeline, TileOptions
from .args import USAGE_ERROR, HelpFormatter, UsageError, add_model_arguments, load_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# LR pixels decoded at most by default: 4096 x 4096, a 16384 x 16384 output; 12 MP photos and
# 4K frames fit, and the input tensors stay under about 1 GB
DEFAULT_MAX_PIXELS = 4096 * 4096
# Pillow refuses more than twice its MAX_IMAGE_PIXELS in any case
PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
# control characters (ESC, CR, LF...) and lone surrogates (undecodable bytes in file names)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: object) -> str:
    """``text`` on one line without terminal escape sequences: control characters from file
    names or library messages are shown as ``\\xNN``."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", str(text))


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see --help)\n")


def integer(minimum: int, maximum: int | None = None, multiple: int = 1) -> Callable[[str], int]:
    """argparse type: an integer in [minimum, maximum], a multiple of ``multiple``."""
    wanted = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    if multiple > 1:
        wanted = f"a multiple of {multiple} >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum) or value % multiple:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rsd-upscale", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("inputs", nargs="*", help="image files or folders (none given: a bundled photo)")
    parser.add_argument("-o", "--out", default="rsd-upscale-out", help="output folder for the PNGs (not an input folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs of earlier runs (otherwise their inputs are skipped)")
    parser.add_argument(
        "--max-pixels", type=integer(1, PILLOW_MAX_PIXELS), default=DEFAULT_MAX_PIXELS,
        help="refuse inputs whose header declares more LR pixels, before decoding (16777216 = 4096x4096)",
    )
    add_model_arguments(parser)
    run = parser.add_argument_group("sampling")
    run.add_argument("--steps", type=integer(1), default=1, help="1 (one-step) or the schedule's T (teacher chain)")
    run.add_argument("--seed", type=integer(0), default=0)
    run.add_argument("--tile", type=integer(SIZE_MULTIPLE, multiple=SIZE_MULTIPLE), default=256, help=f"tile size in LR pixels (multiple of {SIZE_MULTIPLE})")
    run.add_argument("--overlap", type=integer(0), default=32, help="tile overlap in LR pixels (less than --tile)")
    run.add_argument("--tile-batch", type=integer(1), default=1, help="tiles per network call")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    run.add_argument("--attention", choices=attention_backends(), default="reference", help="window-attention implementation")
    return parser


@dataclass
class Job:
    name: str  # what the messages call the input
    target: Path
    read: Callable[[int], Picture]  # max_pixels -> picture


def bundled_photo(max_pixels: int) -> Picture:
    """A 128 x 128 crop of scikit-image's astronaut photo, the input when none is given."""
    from skimage import data

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    return Picture(photo[:, 64:192, 160:288].contiguous())


def check_out_dir(out_dir: Path, inputs: list[str]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: exists and is not a folder")
    for item in map(Path, inputs):
        if item.is_dir() and os.path.realpath(item) == os.path.realpath(out_dir):
            raise UsageError(f"-o {out_dir} is an input folder: earlier outputs would be read as inputs; choose another (e.g. {out_dir / 'x4'})")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"-o {out_dir}: cannot create the folder ({error.strerror or error})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError(f"-o {out_dir}: the folder is not writable")


def plan_jobs(inputs: list[str], out_dir: Path) -> list[Job]:
    """One job per input, each with its own output path (see the module docstring)."""
    if not inputs:
        return [Job("bundled photo (scikit-image astronaut)", out_dir / "astronaut_lr_x4.png", bundled_photo)]
    jobs, taken, seen = [], set(), set()
    for path, name in list_images(inputs, skip=out_dir):
        if path.exists():  # the same file given twice (or by a folder and by name) runs once
            if os.path.realpath(path) in seen:
                continue
            seen.add(os.path.realpath(path))
        for number in itertools.count(1):
            target = out_dir / name.parent / f"{name.stem}{'' if number == 1 else f'_{number}'}_x4.png"
            if str(target).casefold() not in taken:  # case-insensitive file systems too
                break
        taken.add(str(target).casefold())
        jobs.append(Job(str(path), target, lambda max_pixels, path=path: read_image(path, max_pixels)))
    return jobs


def prepare_model(args: argparse.Namespace) -> SRPipeline:
    """The model on its device, proven to run: one small tile goes through the whole path, so a
    wrong device, dtype, attention backend, step count or broken weights stop the run here."""
    pipe = load_model(args)
    pipe.unet.set_attention_backend(args.attention)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise UsageError(f"--device {args.device}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA GPU is available here (use --device cpu)")
    pipe = pipe.to(device=device, dtype=DTYPES[args.dtype])
    probe = torch.linspace(0, 1, SIZE_MULTIPLE).expand(3, SIZE_MULTIPLE, SIZE_MULTIPLE)
    try:
        for _ in pipe.upscale_strips(probe, steps=args.steps, seed=args.seed, tiles=TileOptions(SIZE_MULTIPLE, 0)):
            pass
    except (ValueError, RuntimeError, NotImplementedError, AssertionError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"the model does not run on a {SIZE_MULTIPLE}x{SIZE_MULTIPLE} test tile with --device {args.device} "
            f"--dtype {args.dtype} --attention {args.attention} --steps {args.steps}: {first_line}"
        ) from None
    return pipe


def upscale(job: Job, pipe: SRPipeline, args: argparse.Namespace, tiles: TileOptions) -> str:
    """Read, upscale strip by strip into the PNG, return the line that reports it."""
    picture = job.read(args.max_pixels)
    scale = pipe.codec.scale
    with png_strips(job.target, picture, scale=scale, replace=args.overwrite) as write:
        for strip in pipe.upscale_strips(picture.rgb, steps=args.steps, seed=args.seed, tiles=tiles, progress=True):
            write(strip)
    h, w = picture.rgb.shape[1:]
    return f"{job.name} -> {job.target} ({w}x{h} -> {w * scale}x{h * scale})"


def _say(message: str) -> None:
    tqdm.write(printable(message), file=sys.stdout)


def _error(message: str) -> None:
    tqdm.write(f"rsd-upscale: error: {printable(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.overlap >= args.tile:
        parser.error(f"argument --overlap: expected less than --tile ({args.tile}), got {args.overlap}")
    tiles = TileOptions(args.tile, args.overlap, args.tile_batch)
    # sizes are checked against --max-pixels before decoding; Pillow's own warning would only repeat it
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    out_dir = Path(args.out)
    started = time.perf_counter()
    try:
        check_out_dir(out_dir, args.inputs)
        jobs = plan_jobs(args.inputs, out_dir)
        pipe = prepare_model(args)
    except ValueError as error:  # UsageError, CheckpointError: one line, exit 2
        _error(str(error))
        return USAGE_ERROR
    _say(f"model: {pipe.description} (loaded and checked in {time.perf_counter() - started:.1f} s)")
    if pipe.description.startswith("UNTRAINED"):
        tqdm.write("rsd-upscale: WARNING: these weights are untrained; outputs are not super-resolution", file=sys.stderr)
    written = skipped = failed = 0
    # bars only on a terminal (disable=None): piped output gets plain lines, no escape codes
    for job in tqdm(jobs, desc="images", unit="img", disable=True if len(jobs) < 2 else None):
        if job.target.exists() and not args.overwrite:
            skipped += 1
            _say(f"{job.name}: skipped, {job.target} exists (--overwrite replaces it)")
            continue
        try:
            _say(upscale(job, pipe, args, tiles))
            written += 1
        except TargetExistsError:  # written by another process meanwhile: kept
            skipped += 1
            _say(f"{job.name}: skipped, {job.target} appeared meanwhile (--overwrite replaces it)")
        except ImageTooLargeError as error:
            failed += 1
            _error(f"{error} (--max-pixels {args.max_pixels})")
        except ImageError as error:  # names the file itself
            failed += 1
            _error(str(error))
        except ValueError as error:  # NaN/Inf output
            failed += 1
            _error(f"{job.name}: {error}")
        except OSError as error:
            failed += 1
            _error(f"{job.name} -> {job.target}: {error}")
        except torch.OutOfMemoryError:
            failed += 1
            _error(f"{job.name}: out of memory on {args.device} (lower --tile or --tile-batch)")
    _say(f"{len(jobs)} images: {written} written, {skipped} skipped, {failed} failed; outputs in {out_dir} ({time.perf_counter() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
