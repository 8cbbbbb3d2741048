"""``rsd-bench``: every available backend side by side, per stage and end to end, in one run.

For each backend x batch x LR size the same photos and noise run through the three stages one at a
time and end to end; reported per case: latency p50 / p90 / p99, images/s, peak memory and the
quality of the end-to-end output against the fp32 PyTorch reference (PSNR, LPIPS). The upstream
anchors are the sampling procedures as the official scripts run them: the one-step RSD (or SinSR)
student and the teacher's T-step ResShift chain, run by the official code itself when --upstream-src
has its checkout, else by the project pipeline, unbatched (labelled so); speed-ups are stated
against them. Backends that cannot run here are listed with the reason.

    rsd-bench                                       # bundled demo model, batch 1,2, LR 64, the default backends
    rsd-bench --list                                # the backends and their properties
    rsd-bench --backends gpu --batch 1,4,16 --lr-size 64,128
    rsd-bench --backends pytorch-fp32,onnxruntime-cpu --large-image 1024 --tile-batch 1,4   # batched tiles on a large image
    rsd-bench --preset rsd-x4 --backends cpu --batch 1 --threads 2 --onnx-dir rsd-export-int8/ --upstream-src ResShift/
    rsd-bench --checkpoint rsd.pth --vae autoencoder_vq_f4.pth --teacher resshift_realsrx4_s15_v1.pth --onnx-dir rsd-export/

Writes OUT/bench.json, OUT/bench.md and OUT/bench.png. Exit codes: 0 measured; 1 no selected
backend could run here (one line says why each did not); 2 a bad option, path or checkpoint.

Modules: :mod:`.bench_backends` (the registry), :mod:`.bench_upstream` (the upstream procedures),
:mod:`.bench_official` (the official code as upstream anchors), :mod:`.bench_inputs` (photos and noise), :mod:`.bench_measure` (the run), :mod:`.bench_report`
(JSON, markdown, plot); timing is :mod:`rsd_deploy.timing`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from rsd_deploy.chain import SIZE_MULTIPLE
from rsd_deploy.checkpoints import BUNDLED_DIR, DEMO_NAME, build_pipeline, load_pipeline
from rsd_deploy.cli.args import OneLineParser, UsageError, add_model_arguments, load_model, positive_ints, run_command
from rsd_deploy.errors import one_line
from rsd_deploy.pipeline import SRPipeline

from .bench_backends import GROUPS, backends, select
from .bench_measure import BenchOptions, NothingRan, run_bench
from .bench_official import checkout_method
from .bench_tiled import OVERLAP
from .bench_report import write_report
from .workflow import OptionError, check_complete

# The teacher architecture of each preset, for the multi-step anchor (random weights, like the preset).
TEACHER_PRESETS = {"rsd-x4": "resshift-x4", "sinsr-x4": "resshift-x4", "resshift-x4": "resshift-x4",
                   "resshift-v3-x4": "resshift-v3-x4", "tiny-rsd": "tiny", "tiny": "tiny"}
BUNDLED_TEACHER = "demo-teacher"  # the 15-step teacher the bundled demo student was distilled from


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rsd-bench", description=__doc__.split("\n\nModules:")[0])
    add_model_arguments(parser)
    parser.add_argument("--teacher", type=Path, help="ResShift teacher checkpoint for the multi-step anchor (its codec: --vae or the "
                        "checkpoint folder's); default: the bundled demo teacher with the bundled model, the preset's teacher "
                        "architecture with --preset, else none")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--batch", type=positive_ints, default="1,2", help="batch sizes, comma-separated")
    grid.add_argument("--lr-size", type=positive_ints, default="64", help=f"LR sides, comma-separated multiples of {SIZE_MULTIPLE}")
    large = parser.add_argument_group("large image (rsd-upscale's tile scheduler)")
    large.add_argument("--large-image", type=int, metavar="SIDE", help="also run one SIDE x SIDE LR photo through the tile scheduler on "
                       "each backend, once per --tile-batch (e.g. 1024); default: not run")
    large.add_argument("--tile", type=int, default=256, help="its tile size, LR px")
    large.add_argument("--tile-batch", type=positive_ints, default="1,4", help="tiles per network call, comma-separated")
    parser.add_argument("--backends", default="default",
                        help=f"comma-separated backend names or groups ({', '.join(GROUPS)}: gpu = those that need a CUDA GPU, cpu = the "
                        "others); see --list (default: default)")
    parser.add_argument("--list", action="store_true", help="list the backends and their properties, and exit")
    graphs = parser.add_argument_group("exported graphs and engines")
    graphs.add_argument("--onnx-dir", type=Path, help="rsd-export output with <stage>.<precision>.onnx; default: fp32 graphs exported into OUT/onnx")
    graphs.add_argument("--plugin-onnx-dir", type=Path, help="rsd-export --attention plugin --precision fp32 output (TensorRT with the fused kernel)")
    graphs.add_argument("--engine-dir", type=Path, help="TensorRT engine cache; default ONNX_DIR/engines, as rsd-export")
    parser.add_argument("--upstream-src", type=Path, action="append", metavar="DIR",
                        help="a checkout of the official ResShift, SinSR or RSD code (repeat for several): an upstream backend whose "
                        "script it has runs its sampler class as the script does; the others run the project pipeline, unbatched")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--warmup", type=int, default=1, help="untimed calls before each number")
    timing.add_argument("--min-iters", type=int, default=3, help="fewest timed calls per number")
    timing.add_argument("--iters", type=int, default=20, help="most timed calls per number")
    timing.add_argument("--budget-s", type=float, default=1.0, help="stop timing a number after this many seconds once --min-iters are done")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="where PyTorch and the upstream procedures run; default: cuda when available")
    parser.add_argument("--threads", type=int, help="torch (and ONNX Runtime) CPU threads; default: torch's choice")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--out", type=Path, default=Path("bench"), help="output folder")
    return parser


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The options, checked before any model is loaded."""
    bad = [s for s in args.lr_size if s % SIZE_MULTIPLE]
    if bad:
        raise UsageError(f"--lr-size: expected multiples of {SIZE_MULTIPLE}, got {','.join(map(str, bad))}")
    if args.warmup < 1 or args.min_iters < 1 or args.iters < args.min_iters:
        raise UsageError(f"--warmup / --min-iters / --iters: expected 1 <= warmup, 1 <= min-iters <= iters, got "
                         f"{args.warmup}, {args.min_iters}, {args.iters}")
    if args.large_image is not None:
        if args.tile % SIZE_MULTIPLE or args.tile <= OVERLAP:
            raise UsageError(f"--tile: expected a multiple of {SIZE_MULTIPLE} above the overlap {OVERLAP}, got {args.tile}")
        if args.large_image % SIZE_MULTIPLE or args.large_image < args.tile:
            raise UsageError(f"--large-image: expected a multiple of {SIZE_MULTIPLE}, at least --tile {args.tile}, got {args.large_image}")
    if args.budget_s < 0:
        raise UsageError(f"--budget-s: expected >= 0, got {args.budget_s}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads: expected at least 1, got {args.threads}")
    if args.seed < 0:
        raise UsageError(f"--seed: expected a non-negative integer, got {args.seed}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch")
    for option, path in (("--onnx-dir", args.onnx_dir), ("--plugin-onnx-dir", args.plugin_onnx_dir)):
        if path is not None and not path.is_dir():
            raise UsageError(f"{option}: {path} is not a folder")
        if path is not None:
            try:
                check_complete(path)  # an interrupted rsd-export leaves a mixed set
            except OptionError as error:
                raise UsageError(f"{option}: {error}") from None
    for path in args.upstream_src or ():
        if not path.is_dir() or checkout_method(path) is None:
            raise UsageError(f"--upstream-src: {path} is not a checkout of the official ResShift, SinSR or RSD code "
                             "(expected inference_resshift.py, configs/RSD.yaml or configs/SinSR.yaml in it)")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: {args.out} exists and is not a folder")
    wanted = tuple(name.strip() for name in args.backends.split(",") if name.strip())
    try:
        select(backends(torch.device("cpu")), list(wanted))
    except ValueError as error:
        raise UsageError(str(error)) from None
    return BenchOptions(batches=tuple(args.batch), sizes=tuple(args.lr_size), backends=wanted, device=args.device,
                        onnx_dir=args.onnx_dir, plugin_onnx_dir=args.plugin_onnx_dir, engine_dir=args.engine_dir,
                        upstream_src=tuple(path.resolve() for path in args.upstream_src or ()), work_dir=args.out,
                        seed=args.seed, warmup=args.warmup, min_iters=args.min_iters, max_iters=args.iters, budget_s=args.budget_s,
                        large_image=args.large_image, tile=args.tile, tile_batches=tuple(args.tile_batch))


def load_teacher(args: argparse.Namespace) -> SRPipeline | None:
    """The teacher for the multi-step anchor (see ``--teacher``)."""
    if args.teacher:
        codec = args.vae or (args.checkpoint / "codec.safetensors" if args.checkpoint and args.checkpoint.is_dir() else None)
        return load_pipeline(args.teacher, codec)
    if args.preset:
        return build_pipeline(TEACHER_PRESETS[args.preset], seed=args.seed) if args.preset in TEACHER_PRESETS else None
    if not args.checkpoint and (BUNDLED_DIR / DEMO_NAME / "unet.safetensors").is_file():
        return load_pipeline(BUNDLED_DIR / BUNDLED_TEACHER)
    return None


def list_backends(device: torch.device) -> None:
    for b in backends(device):
        flags = [flag for flag, on in (("needs GPU", b.needs_gpu), ("quality reference", b.reference), ("upstream", b.upstream)) if on]
        default = "default" if b.default else f"not default: {b.not_default_reason}"
        print(f"{b.name:24s} {b.summary} [{', '.join([*flags, default])}]")


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.list:
        list_backends(device)
        return 0
    options = options_from_args(args)
    pipe, teacher = load_model(args, seed=args.seed), load_teacher(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"rsd-bench: {pipe.description}; device {device}; batch {list(options.batches)}; LR {list(options.sizes)}", flush=True)
    try:
        report = run_bench(pipe, options, teacher, log=lambda line: print(line, flush=True))
    except NothingRan as error:
        print(f"rsd-bench: error: {one_line(error)}", file=sys.stderr)
        return 1
    paths = write_report(report, args.out)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("rsd-bench", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
