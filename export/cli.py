"""``rsd-export``: checkpoint -> ONNX graphs (fp32 / fp16 / INT8) -> TensorRT engines, each proven
against the PyTorch reference; writes ``report.json`` and ``report.md`` into ``--out``.

    rsd-export --precision fp16                      # embedded default model: encoder, generator, decoder
    rsd-export --precision fp16 --stages all         # ... plus the fused one-graph pipeline
    rsd-export --precision int8 --checkpoint rsd.pth --vae autoencoder_vq_f4.pth --calib-dir DIV2K
    rsd-export --preset tiny-rsd --stages generator --precision fp32 --no-engine --out /tmp/x
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from rsd_deploy.checkpoints import CheckpointError, build_pipeline, default_pipeline, load_pipeline
from rsd_deploy.distill.losses import LPIPSLoss
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.presets import PRESETS

from . import calibration as calib
from . import tensorrt as trt_tools
from .onnx_export import ATTENTION_MODES, EXPORTERS, ExportError, export_stage, graph_signature
from .parity import lpips_distance, providers, psnr, stage_parity, upscale_onnx
from .precision import CALIBRATION_METHODS, PRECISIONS, convert_fp16, quantize_int8
from .report import write_report
from .stages import CHAINED_STAGES, STAGE_NAMES, ShapeRange, describe_stages, onnx_file_name, stage_inputs_from_images

FP32_PARITY_TARGET = 1e-4
DEFAULT_STAGES = CHAINED_STAGES


def _triple(text: str, what: str) -> tuple[int, int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected N or MIN,OPT,MAX integers, got {text!r}") from None
    if len(values) == 1:
        return values[0], values[0], values[0]
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{what}: expected N or MIN,OPT,MAX, got {text!r}")
    return values[0], values[1], values[2]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsd-export", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16", help="graph precision (default fp16)")
    model = parser.add_argument_group("model (default: the embedded model, see rsd_deploy.checkpoints.default_pipeline)")
    model.add_argument("--checkpoint", type=Path, help="UNet checkpoint (official .pth / our .safetensors) or a save_pipeline directory")
    model.add_argument("--vae", type=Path, help="VQ autoencoder checkpoint (official autoencoder_vq_f4.pth)")
    model.add_argument("--preset", choices=sorted(PRESETS), help="an architecture preset with seeded random weights (tests, demos)")
    shapes = parser.add_argument_group("shapes (LR pixels, multiples of 64)")
    shapes.add_argument("--lr-size", default="64,64,256", help="LR side range MIN,OPT,MAX or one size (default 64,64,256)")
    shapes.add_argument("--lr-width", help="LR width range when it differs from the height (MIN,OPT,MAX)")
    shapes.add_argument("--batch", default="1,1,4", help="batch range MIN,OPT,MAX or one size (default 1,1,4)")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help=f"comma-separated subset of {','.join(STAGE_NAMES)}, or 'all' (default: the three stages; "
                        "the fused 'pipeline' graph doubles the export time)")
    cal = parser.add_argument_group("calibration and evaluation images")
    cal.add_argument("--calib-dir", type=Path, help="DIV2K-style folder (DIV2K_train_HR/ ...); default: scikit-image's bundled photos")
    cal.add_argument("--calib-count", type=int, default=8, help="calibration crops (default 8)")
    cal.add_argument("--eval-count", type=int, default=2, help="held-out crops for the quality numbers (default 2)")
    cal.add_argument("--crop", type=int, default=None, help="HR crop size (default 4x the LR opt size)")
    cal.add_argument("--int8-method", choices=CALIBRATION_METHODS, default="entropy", help="INT8 calibration method")
    cal.add_argument("--int8-high-precision", choices=("fp32", "fp16"), default="fp32",
                     help="precision of the ops left unquantized (fp32 runs in ONNX Runtime on CPU; fp16 is faster in TensorRT)")
    parser.add_argument("--seed", type=int, default=0, help="seed for noise, crops and random weights")
    parser.add_argument("--out", type=Path, default=Path("rsd-export"), help="output directory (default ./rsd-export)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript", help="torch ONNX exporter (see docs/export.md)")
    parser.add_argument("--attention", choices=ATTENTION_MODES, default="reference",
                        help="plugin: each window attention becomes one TensorRT plugin node (fp32 only; such graphs "
                        "run in TensorRT only, so the ONNX Runtime parity checks are skipped)")
    parser.add_argument("--no-engine", action="store_true", help="stop after the ONNX graphs (no TensorRT)")
    parser.add_argument("--triton-repo", type=Path,
                        help="also write a Triton Inference Server model repository here (TensorRT plans when built, else the ONNX graphs)")
    parser.add_argument("--opt-level", type=int, default=None, help="TensorRT builder optimization level (default 3, INT8 4)")
    parser.add_argument("--engine-cache", type=Path, help="engine cache directory (default OUT/engines)")
    return parser


def _load_model(args) -> SRPipeline:
    if args.checkpoint and args.preset:
        raise CheckpointError("--checkpoint and --preset are exclusive")
    if args.checkpoint:
        return load_pipeline(args.checkpoint, args.vae)
    if args.vae:
        raise CheckpointError("--vae needs --checkpoint (the UNet) too")
    if args.preset:
        return build_pipeline(args.preset, seed=args.seed)
    return default_pipeline()


def _say(text: str) -> None:
    print(text, flush=True)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "nvidia-modelopt", "polygraphy", "tensorrt"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    _say(f"  {label} ...")
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    _say(f"  {label}: done in {seconds:.1f} s")
    return result, seconds


def run(args) -> int:
    started = time.perf_counter()
    stages_wanted = list(STAGE_NAMES) if args.stages == "all" else [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages_wanted if s not in STAGE_NAMES]
    if unknown or not stages_wanted:
        raise ValueError(f"--stages: unknown stage(s) {unknown}; choose from {', '.join(STAGE_NAMES)}")
    plugin = args.attention == "plugin"
    if plugin and args.precision != "fp32":
        raise ValueError("--attention plugin: fp16/INT8 conversion runs the graph in ONNX Runtime, which has no "
                         "plugin kernel; use --precision fp32 (strongly typed TensorRT builds it as fp32)")
    heights = _triple(args.lr_size, "--lr-size")
    shapes = ShapeRange(batch=_triple(args.batch, "--batch"), height=heights, width=_triple(args.lr_width, "--lr-width") if args.lr_width else heights)
    crop = args.crop or 4 * shapes.height[1]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    pipe = _load_model(args)
    untrained = pipe.description.startswith("UNTRAINED")
    banner = "!" * 78
    _say(banner if untrained else "")
    _say(f"MODEL: {pipe.description}")
    if untrained:
        _say("No trained checkpoint: the graphs are real, but they carry RANDOM weights. Pass --checkpoint")
        _say("(and --vae) to export a trained RSD / SinSR / ResShift model.")
        _say(banner)
    _say(f"precision {args.precision}; stages {', '.join(stages_wanted)}; {shapes}; output {out}")
    stages = describe_stages(pipe)
    report: dict = {
        "precision": args.precision,
        "model": {"description": pipe.description, "untrained": untrained, "takes_noise_map": pipe.takes_noise_map,
                  "latent_channels": pipe.codec.latent_channels, "codec": type(pipe.codec).__name__},
        "shape_range": shapes.to_json(),
        "shape_range_text": str(shapes),
        "exporter": args.exporter,
        "attention": args.attention,
        "versions": _versions(),
        "host": f"{platform.machine()} CPU x{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "stages": {name: stages[name].to_json() for name in stages_wanted},
        "artifacts": [],
        "parity": [],
    }

    # 1. fp32 graphs, proven against PyTorch on fresh random inputs and on real photos
    fp32_paths: dict[str, Path] = {}
    eval_images = calib.bundled_photos(1, 4 * max(shapes.height[1], shapes.width[1]), seed=args.seed + 1000)
    real = stage_inputs_from_images(pipe, eval_images.lr[:, :, : shapes.height[1], : shapes.width[1]], seed=args.seed)
    for index, name in enumerate(stages_wanted, 1):
        stage = stages[name]
        _say(f"[{index}/{len(stages_wanted)}] {name}: {stage.summary}")
        path = out / onnx_file_name(name, "fp32")
        _, seconds = _timed("export fp32 ONNX", export_stage, stage, pipe, path, shapes, args.exporter, attention=args.attention)
        fp32_paths[name] = path
        report["artifacts"].append({"stage": name, "precision": "fp32", "file": path.name, "bytes": path.stat().st_size,
                                    "seconds": seconds, "signature": graph_signature(path)})
        if plugin and name in ("generator", "pipeline"):
            _say("  parity: skipped (plugin attention nodes run in TensorRT only)")
            report["parity"].append({"stage": name, "inputs": "skipped: plugin attention (TensorRT only)", "relative_l2": None,
                                     "torch_s": None, "onnxruntime_s": None})
            continue
        random_inputs = stage.sample_inputs(shapes.batch[1], shapes.height[1], shapes.width[1], seed=args.seed)
        for label, inputs in (("random", random_inputs), (f"photo ({eval_images.names[0]})", real[name])):
            result = stage_parity(stage, pipe, path, inputs)
            verdict = "ok" if result["relative_l2"] < FP32_PARITY_TARGET else f"ABOVE the {FP32_PARITY_TARGET:g} target"
            _say(f"  parity on {label} inputs: relative L2 {result['relative_l2']:.2e} ({verdict}); "
                 f"PyTorch {result['torch_s']:.2f} s, ONNX Runtime {result['onnxruntime_s']:.2f} s")
            report["parity"].append({"stage": name, "inputs": label, **result})

    # 2. reduced precision: fp16 casts or calibrated INT8 Q/DQ
    graphs = dict(fp32_paths)
    if args.precision != "fp32":
        cal_set = calib.load_calibration(args.calib_dir, args.calib_count + args.eval_count, crop, args.seed)
        cal_set, held_out = cal_set.split(args.eval_count)
        _say(f"calibration images: {cal_set.source}, {len(cal_set.names)} crops (+ {len(held_out.names)} held out)")
        report["calibration"] = cal_set.to_json()
        report["evaluation"] = held_out.to_json()
        cal_inputs = stage_inputs_from_images(pipe, cal_set.lr, seed=args.seed)
        report["precision_details"] = {}
        graphs = {}
        for name in stages_wanted:
            path = out / onnx_file_name(name, args.precision)
            arrays = {k: v.numpy() for k, v in cal_inputs[name].items()}
            if args.precision == "fp16":
                details, seconds = _timed(f"{name}: fp16 with fp32 islands (ModelOpt AutoCast)", convert_fp16, fp32_paths[name], path, {k: v[:1] for k, v in arrays.items()})
            else:
                details, seconds = _timed(f"{name}: INT8 Q/DQ, {args.int8_method} calibration on {len(cal_set.names)} crops (ModelOpt)",
                                          quantize_int8, fp32_paths[name], path, arrays, args.int8_method, args.int8_high_precision)
            _say(f"  {details}")
            report["precision_details"][name] = details
            graphs[name] = path
            report["artifacts"].append({"stage": name, "precision": args.precision, "file": path.name, "bytes": path.stat().st_size,
                                        "seconds": seconds, "signature": graph_signature(path)})
        report["quality"] = _quality(pipe, stages, graphs, held_out, args)

    # 3. TensorRT engines, or the exact commands that build them
    report["tensorrt"] = _tensorrt(args, stages, graphs, shapes, out, real)

    # 4. optionally, a Triton Inference Server model repository over those artifacts
    if args.triton_repo:
        from .triton_repo import repository_from_export

        engines = {e["stage"]: Path(e["engine"]) for e in report["tensorrt"].get("engines", [])}
        _, backend = repository_from_export(args.triton_repo, pipe, shapes, graphs, engines, overwrite=True)
        report["triton_repository"] = {"path": str(args.triton_repo), "stage_backend": backend}
        _say(f"Triton model repository ({backend} stages) written to {args.triton_repo}")
    report["total_seconds"] = time.perf_counter() - started
    json_path, md_path = write_report(out, report)
    _say(f"wrote {json_path} and {md_path} ({report['total_seconds']:.0f} s in all)")
    if untrained:
        _say("REMINDER: these artifacts carry RANDOM weights (no trained checkpoint was given).")
    return 0


def _quality(pipe, stages, graphs: dict[str, Path], held_out: calib.CalibrationSet, args) -> dict:
    """PSNR / LPIPS of reduced-precision HR images vs the fp32 PyTorch pipeline."""
    inputs = stage_inputs_from_images(pipe, held_out.lr, seed=args.seed + 1)["pipeline"]
    with torch.no_grad():
        reference = stages["pipeline"].module(pipe)(*inputs.values())
    lpips = LPIPSLoss("auto")
    lpips_fp32_to_hr = lpips_distance(lpips, reference, held_out.hr)
    rows, notes = [], []
    candidates = []
    if all(name in graphs for name in CHAINED_STAGES):
        candidates.append(("encoder+generator+decoder", {n: graphs[n] for n in CHAINED_STAGES}))
    if "pipeline" in graphs:
        candidates.append(("pipeline (fused)", {"pipeline": graphs["pipeline"]}))
    if not candidates:
        notes.append("HR quality needs the fused pipeline graph or all of encoder, generator, decoder: not measured")
    for label, chosen in candidates:
        start = time.perf_counter()
        try:
            hr = upscale_onnx(chosen, pipe, inputs["lr"], inputs["eps"], inputs.get("noise_map"))
        except Exception as error:  # e.g. an ONNX Runtime build without an fp16 kernel for some op
            notes.append(f"{label}: ONNX Runtime ({', '.join(providers())}) could not run the {args.precision} graphs: {str(error).splitlines()[0]}")
            continue
        seconds = time.perf_counter() - start
        row = {"graphs": label, "psnr_db": psnr(hr, reference), "lpips": lpips_distance(lpips, hr, reference),
               "lpips_fp32_to_hr": lpips_fp32_to_hr, "lpips_to_hr": lpips_distance(lpips, hr, held_out.hr), "seconds": seconds}
        _say(f"  {args.precision} {label}: PSNR {row['psnr_db']:.2f} dB vs fp32, LPIPS distance {row['lpips']:.4f}")
        rows.append(row)
    return {"images": f"{len(held_out.names)} held-out crops: {held_out.source}", "lpips_kind": lpips.kind, "rows": rows, "notes": notes}


def _tensorrt(args, stages, graphs: dict[str, Path], shapes: ShapeRange, out: Path, real) -> dict:
    usable, reason = trt_tools.tensorrt_status()
    opt_level = args.opt_level if args.opt_level is not None else trt_tools.DEFAULT_OPT_LEVEL[args.precision]
    engines_dir = args.engine_cache or out / "engines"
    if args.no_engine or not usable:
        why = "skipped (--no-engine)" if args.no_engine else f"not built: {reason}"
        commands = []
        for name, path in graphs.items():
            profile = shapes.profile(stages[name])
            engine = engines_dir / f"{name}.{args.precision}.plan"
            commands.append({"stage": name, "trtexec": trt_tools.trtexec_command(path, engine, profile, opt_level, engines_dir / "timing.cache"),
                             "polygraphy": trt_tools.polygraphy_command(path, profile, opt_level)})
        status = f"TensorRT engines {why}. Everything before the engine is done; on a machine with TensorRT and a GPU run:"
        _say(status)
        for item in commands:
            _say(f"  {item['trtexec']}\n  {item['polygraphy']}")
        return {"status": status, "built": False, "commands": commands}
    engines = []
    for name, path in graphs.items():
        (engine, built), seconds = _timed(f"{name}: TensorRT engine", trt_tools.cached_engine, path, stages[name], args.precision, shapes, engines_dir, opt_level)
        tolerance = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}[args.precision]
        if args.attention == "plugin" and name in ("generator", "pipeline"):
            comparison = "skipped: plugin attention nodes do not run in ONNX Runtime"
        else:
            comparison = trt_tools.compare_with_onnxruntime(path, engine, [real[name]], atol=tolerance, rtol=tolerance)
        engines.append({"stage": name, "engine": str(engine), "built_now": built, "seconds": seconds, "polygraphy": comparison})
    return {"status": reason, "built": True, "engines": engines}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (CheckpointError, ExportError, ValueError, FileNotFoundError, argparse.ArgumentTypeError) as error:
        print(f"rsd-export: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
