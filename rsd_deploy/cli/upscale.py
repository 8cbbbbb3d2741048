"""``rsd-upscale``: x4 super-resolution of images or folders of images into PNGs.

Every input gets ``OUT/{name}_x4.png``; a folder's tree is mirrored under OUT (searched
recursively, hidden entries skipped). Two inputs of one run never share an output: the later one
(in input order) gets ``{name}_2_x4.png``, ``_3``... An output from an earlier run is kept and
the input skipped, unless --overwrite.

Runs on PyTorch (--backend torch), on the graphs or engines of an rsd-export folder
(--backend onnxruntime|openvino|tensorrt|tensorrt-rtx --artifacts DIR) or on a Triton
Inference Server (--server grpc://HOST:PORT or http://HOST:PORT). Every tile of every image goes
through one tile shape, --tile-batch tiles per call across image boundaries.
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
from ..chain import SIZE_MULTIPLE
from ..errors import one_line
from ..imageio import ImageError, ImageTooLargeError, Picture, list_images, png_strips, read_image
from ..models.attention import attention_backends
from ..tiling import OFFICIAL, SEAMLESS, TILINGS, ImageJob, ScheduleStats, TileOptions, TileScheduler, upscale_images
from .args import USAGE_ERROR, HelpFormatter, UsageError, add_model_arguments
from .backends import BACKENDS, DTYPES, TORCH, Loaded, load_backend

# tile (or chop) size and overlap by tiling; official: the scripts' 512 LR px chops, stride 448
DEFAULT_TILE = {SEAMLESS: 256, OFFICIAL: 512}
DEFAULT_OVERLAP = {SEAMLESS: 32, OFFICIAL: 64}
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
    backend = parser.add_argument_group("backend")
    backend.add_argument("--backend", choices=list(BACKENDS), default=TORCH,
                         help="; ".join(f"{b.name}: {b.summary}" for b in BACKENDS.values()))
    backend.add_argument("--artifacts", type=Path, help="an rsd-export output folder (every backend but torch)")
    backend.add_argument("--precision", help="which of the folder's graphs: fp32, fp16, int8; None: the precision it was exported for")
    backend.add_argument("--server", help="a Triton Inference Server serving the repository rsd-export --triton-repo wrote: "
                                          "grpc://HOST:PORT or http://HOST:PORT")
    backend.add_argument("--in-flight", type=integer(1), default=4, help="requests in flight to --server")
    run = parser.add_argument_group("sampling and tiling")
    run.add_argument("--steps", type=integer(1), default=1, help="1 (one-step) or the schedule's T (teacher chain, --backend torch)")
    run.add_argument("--seed", type=integer(0), default=0)
    run.add_argument("--tiling", choices=TILINGS, default=SEAMLESS,
                     help="seamless: tiles blended with ramps, noise independent of the tiling; official: the ResShift/SinSR/RSD "
                          "scripts' chops (each padded on its own, averaged uniformly, fresh noise per chop)")
    run.add_argument("--tile", type=integer(SIZE_MULTIPLE, multiple=SIZE_MULTIPLE),
                     help=f"tile (official: chop) size in LR pixels, a multiple of {SIZE_MULTIPLE}; None: "
                          f"{DEFAULT_TILE[SEAMLESS]} (official: {DEFAULT_TILE[OFFICIAL]}; TensorRT: the engine profile's opt size)")
    run.add_argument("--overlap", type=integer(0),
                     help=f"LR pixels neighbouring tiles share, less than --tile; None: {DEFAULT_OVERLAP[SEAMLESS]} "
                          f"(official: {DEFAULT_OVERLAP[OFFICIAL]}, a stride of {DEFAULT_TILE[OFFICIAL] - DEFAULT_OVERLAP[OFFICIAL]})")
    run.add_argument("--tile-batch", type=integer(1),
                     help="tiles per network call, across images; None: 1 (TensorRT: the engine profile's opt batch)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="--backend torch")
    run.add_argument("--attention", choices=attention_backends(), default="reference", help="window-attention implementation (--backend torch)")
    return parser


@dataclass
class Job:
    name: str  # what the messages call the input
    target: Path
    read: Callable[[int], Picture]  # max_pixels -> picture


def bundled_photo(max_pixels: int) -> Picture:
    """A 128 x 128 crop of scikit-image's astronaut photo, the input when none is given."""
    from rsd_deploy import photos

    return Picture(photos.photo("astronaut")[:, 64:192, 160:288].contiguous())


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


def tile_options(args: argparse.Namespace, loaded: Loaded) -> TileOptions:
    """The run's tiles: one shape for every tile of every image (seamless), from the options or,
    for engines, the profile's opt shape; checked against what the backend accepts."""
    shapes = loaded.shape_range
    if args.tile is not None:
        size = args.tile
    elif loaded.engine and args.tiling == SEAMLESS:
        size = (shapes.height[1], shapes.width[1])
    else:
        size = DEFAULT_TILE[args.tiling]
    overlap = DEFAULT_OVERLAP[args.tiling] if args.overlap is None else args.overlap
    batch = args.tile_batch or (shapes.batch[1] if loaded.engine else 1)
    if overlap >= min(size if isinstance(size, tuple) else (size,)):
        raise UsageError(f"--overlap {overlap}: expected less than the tile size ({size})")
    tiles = TileOptions(size, overlap, batch, args.tiling, static=args.tiling == SEAMLESS)
    if shapes is not None:
        from rsd_deploy.export.stages import ShapeRange

        (height, width), low = tiles.shape, SIZE_MULTIPLE if args.tiling == OFFICIAL else None
        wanted = ShapeRange((batch,) * 3, (low or height, height, height), (low or width, width, width))
        if not shapes.covers(wanted):
            what = f"chops of {low}..{height} x {low}..{width}" if low else f"tiles of {height}x{width}"
            raise UsageError(f"{loaded.source} accepts {shapes}; --tiling {args.tiling} --tile-batch {batch} runs {what} LR px, "
                             f"{batch} per call: choose --tile / --tile-batch inside it, or export for them (rsd-export --lr-size, --batch)")
    return tiles


def check_backend_runs(loaded: Loaded, args: argparse.Namespace) -> None:
    """One small tile through the whole path, so a wrong device, dtype, attention backend, step
    count, broken weights or an unreachable server stop the run here."""
    shapes = loaded.shape_range
    height, width, batch = (shapes.height[0], shapes.width[0], shapes.batch[0]) if shapes else (SIZE_MULTIPLE, SIZE_MULTIPLE, 1)
    probe = torch.linspace(0, 1, width).expand(3, height, width)
    try:
        upscale_images(loaded.model, [probe], TileOptions((height, width), 0, batch), args.seed)
    except (ValueError, RuntimeError, NotImplementedError, AssertionError) as error:
        on = f"--device {args.device} --dtype {args.dtype} --attention {args.attention}" if loaded.source == f"--backend {TORCH}" else loaded.source
        raise UsageError(f"the model does not run on a {height}x{width} test tile with {on} --steps {args.steps}: {one_line(error)}") from None


def image_job(job: Job, args: argparse.Namespace, scale: int) -> ImageJob:
    """``job`` for the tile scheduler: read (with its kind: grey, alpha, 16-bit) on the reader
    thread, written strip by strip into its PNG on the writer thread."""
    picture: Picture | None = None

    def read() -> torch.Tensor:
        nonlocal picture
        picture = job.read(args.max_pixels)
        return picture.rgb

    def open_png():
        return png_strips(job.target, picture, scale=scale, replace=args.overwrite)

    return ImageJob(read, open_png, key=job)


def _say(message: str) -> None:
    tqdm.write(printable(message), file=sys.stdout)


def _error(message: str) -> None:
    tqdm.write(f"rsd-upscale: error: {printable(message)}", file=sys.stderr)


def _stats_line(stats: ScheduleStats, tiles: TileOptions) -> str:
    height, width = tiles.shape
    shape = f"{height}x{width} LR px" if tiles.static else f"chops up to {height}x{width} LR px"
    return (f"tiles: {stats.tiles} ({shape}, overlap {tiles.overlap}, {tiles.tiling}) in {stats.calls} calls of {tiles.batch}; "
            f"busy: compute {stats.compute_s:.1f} s, reading {stats.read_s:.1f} s, writing {stats.write_s:.1f} s; wall {stats.wall_s:.1f} s")


def upscale_jobs(jobs: list[Job], loaded: Loaded, tiles: TileOptions, args: argparse.Namespace) -> tuple[int, int, int]:
    """Every job through one tile scheduler; (written, skipped, failed)."""
    written = skipped = failed = 0
    todo = []
    for job in jobs:
        if job.target.exists() and not args.overwrite:
            skipped += 1
            _say(f"{job.name}: skipped, {job.target} exists (--overwrite replaces it)")
        else:
            todo.append(job)
    scale = loaded.model.scale
    # bars only on a terminal (disable=None): piped output gets plain lines, no escape codes
    images = tqdm(total=len(todo), desc="images", unit="img", disable=True if len(todo) < 2 else None)
    tile_bar = tqdm(desc="tiles", unit="tile", disable=None, leave=False)

    def progress(image: ImageJob, done: int, total: int) -> None:
        if done == 1:
            tile_bar.reset(total=total)
        tile_bar.update(1)

    scheduler = TileScheduler(loaded.model, tiles, args.seed, args.in_flight if args.server else 1, progress)
    try:
        for result in scheduler.run([image_job(job, args, scale) for job in todo]):
            job, error = result.job.key, result.error
            images.update(1)
            if error is None:
                written += 1
                h, w = result.size
                _say(f"{job.name} -> {job.target} ({w}x{h} -> {w * scale}x{h * scale})")
            elif isinstance(error, TargetExistsError):  # written by another process meanwhile: kept
                skipped += 1
                _say(f"{job.name}: skipped, {job.target} appeared meanwhile (--overwrite replaces it)")
            else:
                failed += 1
                _error(_failure(job, error, args))
    finally:
        tile_bar.close()
        images.close()
    if scheduler.stats.tiles:
        _say(_stats_line(scheduler.stats, tiles))
    return written, skipped, failed


def _failure(job: Job, error: BaseException, args: argparse.Namespace) -> str:
    if isinstance(error, ImageTooLargeError):
        return f"{error} (--max-pixels {args.max_pixels})"
    if isinstance(error, ImageError):  # names the file itself
        return str(error)
    if isinstance(error, torch.OutOfMemoryError):
        return f"{job.name}: out of memory on {args.device} (lower --tile or --tile-batch)"
    if isinstance(error, OSError):
        return f"{job.name} -> {job.target}: {error}"
    return f"{job.name}: {one_line(error)}"  # NaN/Inf output, a backend or server error


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tile = args.tile or DEFAULT_TILE[args.tiling]
    if args.overlap is not None and args.overlap >= tile:
        parser.error(f"argument --overlap: expected less than --tile ({tile}), got {args.overlap}")
    if args.server is not None:
        from rsd_deploy.export.runners.triton_runner import parse_server_url

        try:
            parse_server_url(args.server)
        except ValueError as error:
            parser.error(f"argument --server: {error}")
    # sizes are checked against --max-pixels before decoding; Pillow's own warning would only repeat it
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    out_dir = Path(args.out)
    started = time.perf_counter()
    loaded = None
    try:
        try:
            check_out_dir(out_dir, args.inputs)
            jobs = plan_jobs(args.inputs, out_dir)
            loaded = load_backend(args)
            tiles = tile_options(args, loaded)
            check_backend_runs(loaded, args)
        except ValueError as error:  # UsageError, CheckpointError: one line, exit 2
            _error(str(error))
            return USAGE_ERROR
        _say(f"model: {loaded.description} (loaded and checked in {time.perf_counter() - started:.1f} s)")
        if loaded.description.startswith("UNTRAINED"):
            tqdm.write("rsd-upscale: WARNING: these weights are untrained; outputs are not super-resolution", file=sys.stderr)
        written, skipped, failed = upscale_jobs(jobs, loaded, tiles, args)
    finally:
        if loaded is not None:
            loaded.close()
    _say(f"{len(jobs)} images: {written} written, {skipped} skipped, {failed} failed; outputs in {out_dir} ({time.perf_counter() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
