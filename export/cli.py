"""``rsd-export``: checkpoint -> ONNX graphs (fp32 / fp16 / INT8 / FP8) -> TensorRT engines, each proven
against the PyTorch reference; writes ``report.json`` and ``report.md`` into ``--out``.

    rsd-export --precision fp16                      # embedded default model: encoder, generator, decoder
    rsd-export --precision fp16 --stages all         # ... plus the fused one-graph pipeline
    rsd-export --precision int8 --checkpoint rsd.pth --vae autoencoder_vq_f4.pth --calib-dir DIV2K
    rsd-export --precision int8 --quality-budget-psnr 40   # the fewest layers in fp32 that keep 40 dB vs fp32
    rsd-export --engine tensorrt-rtx --compute-capability sm89,sm120   # TensorRT-RTX engines, no GPU needed
    rsd-export --preset tiny-rsd --stages generator --precision fp32 --engine none --out /tmp/x

Exit codes: 0 done and every check passed; 1 a check failed (parity, quality, an engine that did
not build; the report says which); 2 a bad option, path or checkpoint (nothing was written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsd_deploy.cli.args import OneLineParser, add_model_arguments, load_model, parse_range, run_command

from . import tensorrt as trt_tools
from .onnx_export import ATTENTION_MODES, EXPORTERS, ExportError
from .precision import CALIBRATION_METHODS
from .precisions import PRECISIONS
from .stages import CHAINED_STAGES, STAGE_NAMES, ShapeRange
from .artifacts import ArtifactError
from .triton_repo import TRITON_BACKENDS
from .workflow import ExportOptions, OptionError, export_all


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rsd-export", description=__doc__)
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp16",
                        help="graph precision: " + "; ".join(f"{p.name}: {p.summary}" for p in PRECISIONS.values()))
    add_model_arguments(parser)
    shapes = parser.add_argument_group("shapes (LR pixels, multiples of 64)")
    shapes.add_argument("--lr-size", default="64,64,256", help="LR side range MIN,OPT,MAX or one size")
    shapes.add_argument("--lr-width", help="LR width range when it differs from the height (MIN,OPT,MAX); default: as --lr-size")
    shapes.add_argument("--batch", default="1,1,4", help="batch range MIN,OPT,MAX or one size")
    parser.add_argument("--stages", default=",".join(CHAINED_STAGES),
                        help=f"comma-separated subset of {','.join(STAGE_NAMES)}, or 'all' (the fused 'pipeline' graph doubles the export time)")
    cal = parser.add_argument_group("calibration and evaluation images (fp16 / int8)")
    cal.add_argument("--calib-dir", type=Path, help="DIV2K-style folder (DIV2K_train_HR/ ...); default: scikit-image's bundled photos")
    cal.add_argument("--calib-count", type=int, default=8, help="calibration crops")
    cal.add_argument("--eval-count", type=int, default=2, help="held-out crops for the quality numbers")
    cal.add_argument("--crop", type=int, default=None, help="HR crop size, a multiple of 256; default 4x the LR opt size")
    cal.add_argument("--int8-method", choices=CALIBRATION_METHODS, default="entropy", help="INT8 calibration method (fp8 always calibrates by max)")
    cal.add_argument("--quality-budget-psnr", type=float, metavar="DB",
                     help="int8 / fp8: keep the fewest layer groups in high precision until the chain reaches this PSNR vs fp32 "
                     "on the held-out crops (no recalibration; needs encoder, generator and decoder in --stages)")
    cal.add_argument("--int8-high-precision", choices=("fp32", "fp16"), default="fp32",
                     help="int8 / fp8: precision of the ops left unquantized (fp32 runs in ONNX Runtime on CPU; fp16 is faster in TensorRT)")
    engine = parser.add_argument_group("TensorRT engines")
    engine.add_argument("--engine", choices=trt_tools.ENGINE_CHOICES, default="auto",
                        help="auto: TensorRT 10/11 where it can build (a GPU), else TensorRT for RTX where installed, else none")
    engine.add_argument("--no-engine", dest="engine", action="store_const", const="none", help="same as --engine none")
    engine.add_argument("--compute-capability", dest="compute_capabilities", type=_compute_capabilities, default=None,
                        help="TensorRT for RTX targets, e.g. sm86,sm89,sm120 (known: " + ",".join(trt_tools.COMPUTE_CAPABILITIES)
                        + "); default: the local GPU, or without one " + ",".join(trt_tools.DEFAULT_COMPUTE_CAPABILITIES))
    engine.add_argument("--opt-level", type=int, default=None, help="builder optimization level 0..5; default 3 (INT8: 4)")
    engine.add_argument("--engine-cache", type=Path, help="engine cache folder; default OUT/engines")
    parser.add_argument("--seed", type=int, default=0, help="seed for noise, crops and random weights")
    parser.add_argument("--out", type=Path, default=Path("rsd-export"), help="output folder")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript", help="torch ONNX exporter (see docs/export.md)")
    parser.add_argument("--attention", choices=ATTENTION_MODES, default="reference",
                        help="plugin: each window attention becomes one TensorRT plugin node (fp32 only; such graphs "
                        "run in TensorRT only, so the ONNX Runtime parity checks are skipped)")
    parser.add_argument("--single-input", action="store_true",
                        help="write the fused graph with its noise baked in (lr -> hr, the only input is the image), for tools "
                        "that run one-input SR models (vs-mlrt, chaiNNer); needs pipeline in --stages")
    parser.add_argument("--triton-repo", type=Path,
                        help="also write a Triton Inference Server model repository here (its stage models: see --triton-backend)")
    parser.add_argument("--triton-backend", choices=TRITON_BACKENDS, default="auto",
                        help="stage models of --triton-repo: auto = tensorrt when TensorRT 10/11 engines of every stage were built, "
                        "else python (any Triton with the python backend, the nvidia-pytriton one included); onnxruntime / tensorrt "
                        "need a Triton with those backends (an NGC container)")
    return parser


def _compute_capabilities(text: str) -> tuple[str, ...]:
    try:
        return trt_tools.parse_compute_capabilities(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--compute-capability: ")) from None


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    heights = parse_range(args.lr_size, "--lr-size")
    try:
        shapes = ShapeRange(batch=parse_range(args.batch, "--batch"), height=heights,
                            width=parse_range(args.lr_width, "--lr-width") if args.lr_width else heights)
    except ValueError as error:
        raise OptionError(f"--lr-size / --lr-width / --batch: {error}") from None
    stages = STAGE_NAMES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    options = ExportOptions(
        precision=args.precision, stages=stages, shapes=shapes, out=args.out, exporter=args.exporter, attention=args.attention,
        seed=args.seed, calib_dir=args.calib_dir, calib_count=args.calib_count, eval_count=args.eval_count, crop=args.crop,
        int8_method=args.int8_method, int8_high_precision=args.int8_high_precision, engine=args.engine,
        compute_capabilities=args.compute_capabilities, opt_level=args.opt_level, engine_cache=args.engine_cache,
        triton_repo=args.triton_repo, triton_backend=args.triton_backend, single_input=args.single_input, quality_budget_psnr=args.quality_budget_psnr,
    )
    options.validate()
    return options


def _say(text: str) -> None:
    print(text, flush=True)


def engine_table(report) -> list[str]:
    """The console's one short table of engines (nothing when none were built)."""
    engines = report.tensorrt.get("engines", [])
    if not engines:
        return []
    lines = ["", "| stage | precision | engine | MB | layers | build s | warnings | target |", "|---|---|---|---|---|---|---|---|"]
    for e in engines:
        state = ("built" if e["built_now"] else "cached") if e["error"] is None else "FAILED"
        size = f"{e['bytes'] / 1e6:.1f}" if e["bytes"] else "-"
        seconds = f"{e['build_seconds']:.1f}" if e["build_seconds"] is not None else "-"
        lines.append(f"| {e['stage']} | {e['precision']} | {state} | {size} | {e['network_layers'] or '-'} | {seconds} | "
                     f"{e['warnings'] if e['warnings'] is not None else '-'} | {e['target']} |")
    return lines


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    pipe = load_model(args, seed=args.seed)
    untrained = pipe.description.startswith("UNTRAINED")
    banner = "!" * 78
    if untrained:
        _say(banner)
    _say(f"MODEL: {pipe.description}")
    if untrained:
        _say("No trained checkpoint: the graphs are real, but they carry RANDOM weights. Pass --checkpoint")
        _say("(and --vae) to export a trained RSD / SinSR / ResShift model.")
        _say(banner)
    _say(f"precision {options.precision}; stages {', '.join(options.stages)}; {options.shapes}; output {options.out}")
    try:
        report = export_all(pipe, options, _say)
    except ExportError as error:  # a graph torch could not export: the folder stays marked incomplete
        print(f"rsd-export: error: {error}", file=sys.stderr)
        return 1
    for line in engine_table(report):
        _say(line)
    _say(f"wrote {options.out / 'report.json'} and {options.out / 'report.md'} ({report.total_seconds:.0f} s in all)")
    if untrained:
        _say("REMINDER: these artifacts carry RANDOM weights (no trained checkpoint was given).")
    if report.failures:
        print(f"rsd-export: {len(report.failures)} check(s) failed:", file=sys.stderr)
        for failure in report.failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("rsd-export", lambda: run(args), errors=(OptionError, ArtifactError, trt_tools.TensorRTUnavailable))


if __name__ == "__main__":
    sys.exit(main())
