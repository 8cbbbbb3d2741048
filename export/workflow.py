"""The library behind ``rsd-export``: :func:`export_all` (pipeline + :class:`ExportOptions` ->
:class:`ExportReport`).

One run, in order: fp32 ONNX graphs of the chosen stages, each proven against PyTorch on random
inputs and on a real photo; the reduced-precision graphs (fp16 casts or calibrated INT8 Q/DQ)
with their quality against the fp32 pipeline; TensorRT engines (TensorRT 10/11 or TensorRT for
RTX, see :mod:`.tensorrt`); optionally a Triton model repository. Every check that fails is
listed in :attr:`ExportReport.failures`; the caller decides the exit code.

The output folder holds one set at a time: an ``INCOMPLETE`` marker is written before the first
artifact and removed only after ``report.json`` (the list of this set's files) is written, so a
failed or killed run leaves a folder that says it is incomplete (:func:`check_complete`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rsd_deploy.atomic import atomic_path
from rsd_deploy.environment import versions
from rsd_deploy.metrics import LPIPS, lpips_distance, psnr
from rsd_deploy.pipeline import SRPipeline

from . import calibration as calib
from . import tensorrt as trt_tools
from .onnx_export import ATTENTION_MODES, EXPORTERS, export_stage, graph_signature, read_metadata, set_metadata
from .parity import run_onnx, stage_parity, upscale_onnx
from .runners.onnxruntime_runner import default_providers
from .precision import CALIBRATION_METHODS
from .precisions import PRECISIONS
from .report import write_report
from .stages import CHAINED_STAGES, FUSED, SINGLE_INPUT, STAGE_NAMES, ShapeRange, StageSpec, describe_stages, onnx_file_name, single_input_stage, stage_inputs_from_images

FP32_PARITY_TARGET = 1e-4
INCOMPLETE_MARKER = "INCOMPLETE"
CROP_MULTIPLE = 4 * 64  # HR crops whose LR side is a multiple of 64
ATTENTION_STAGES = ("generator", FUSED, SINGLE_INPUT)  # the graphs with window attention (plugin nodes)


class OptionError(ValueError):
    """An option or path that cannot work, found before anything is exported; one line."""


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp16"
    stages: tuple[str, ...] = CHAINED_STAGES
    shapes: ShapeRange = field(default_factory=ShapeRange)
    out: Path = Path("rsd-export")
    exporter: str = "torchscript"
    attention: str = "reference"
    seed: int = 0
    calib_dir: Path | None = None
    calib_count: int = 8
    eval_count: int = 2
    crop: int | None = None  # HR crop size; default 4x the LR opt size
    int8_method: str = "entropy"
    int8_high_precision: str = "fp32"
    engine: str = "auto"  # one of tensorrt.ENGINE_CHOICES
    compute_capabilities: tuple[str, ...] | None = None  # TensorRT-RTX ahead-of-time targets
    opt_level: int | None = None
    engine_cache: Path | None = None  # default OUT/engines
    triton_repo: Path | None = None
    triton_backend: str = "auto"  # stage models of the repository (see triton_repo.TRITON_BACKENDS)
    single_input: bool = False  # the fused graph with its noise baked in (lr -> hr), for one-input tools
    quality_budget_psnr: float | None = None  # INT8: keep layer groups in high precision until the chain meets it

    @property
    def hr_crop(self) -> int:
        return self.crop or 4 * max(self.shapes.height[1], self.shapes.width[1])

    @property
    def default_capabilities(self) -> tuple[str, ...]:
        """TensorRT-RTX targets without --compute-capability and without a GPU (the precision's own,
        where not every GPU has its types)."""
        return PRECISIONS[self.precision].compute_capabilities or trt_tools.DEFAULT_COMPUTE_CAPABILITIES

    @property
    def engine_dir(self) -> Path:
        return self.engine_cache or self.out / "engines"

    def validate(self) -> None:
        """Every option and path checked before the model is loaded or anything exported."""
        if self.precision not in PRECISIONS:
            raise OptionError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        unknown = [s for s in self.stages if s not in STAGE_NAMES]
        if unknown or not self.stages:
            raise OptionError(f"--stages: unknown stage(s) {unknown}; choose from {', '.join(STAGE_NAMES)} or 'all'")
        if self.single_input and FUSED not in self.stages:
            raise OptionError(f"--single-input bakes the noise into the fused graph: add {FUSED} to --stages (or use --stages all)")
        if self.quality_budget_psnr is not None:
            if self.precision not in ("int8", "fp8"):
                raise OptionError(f"--quality-budget-psnr applies to the Q/DQ precisions (int8, fp8), not {self.precision}")
            if not 0 < self.quality_budget_psnr < 200:
                raise OptionError(f"--quality-budget-psnr: expected a PSNR in dB (0..200), got {self.quality_budget_psnr}")
            if not set(CHAINED_STAGES) <= set(self.stages):
                raise OptionError(f"--quality-budget-psnr measures the whole chain: --stages must include {', '.join(CHAINED_STAGES)}")
        if self.exporter not in EXPORTERS:
            raise OptionError(f"--exporter: expected one of {', '.join(EXPORTERS)}, got {self.exporter!r}")
        if self.attention not in ATTENTION_MODES:
            raise OptionError(f"--attention: expected one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}")
        if self.attention == "plugin" and self.precision != "fp32":
            raise OptionError("--attention plugin: fp16/INT8 conversion runs the graph in ONNX Runtime, which has no "
                              "plugin kernel; use --precision fp32 (strongly typed TensorRT builds it as fp32)")
        if self.seed < 0:
            raise OptionError(f"--seed: expected a non-negative integer, got {self.seed}")
        if PRECISIONS[self.precision].calibrated:
            if self.calib_count < 1:
                raise OptionError(f"--calib-count: expected at least 1, got {self.calib_count}")
            if self.eval_count < 1:
                raise OptionError(f"--eval-count: expected at least 1, got {self.eval_count}")
            if self.int8_method not in CALIBRATION_METHODS:
                raise OptionError(f"--int8-method: expected one of {', '.join(CALIBRATION_METHODS)}, got {self.int8_method!r}")
            if self.calib_dir is not None and not self.calib_dir.is_dir():
                raise OptionError(f"--calib-dir: {self.calib_dir} is not a folder")
        if self.crop is not None and (self.crop <= 0 or self.crop % CROP_MULTIPLE):
            raise OptionError(f"--crop: expected a positive multiple of {CROP_MULTIPLE} HR pixels, got {self.crop}")
        need = 4 * max(self.shapes.height[1], self.shapes.width[1])
        if self.hr_crop < need:
            raise OptionError(f"--crop: {self.hr_crop} HR pixels is smaller than 4x the LR opt size ({need})")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise OptionError(f"--opt-level: expected 0..5, got {self.opt_level}")
        if self.compute_capabilities and self.engine not in ("auto", "tensorrt-rtx"):
            raise OptionError("--compute-capability applies to TensorRT for RTX (--engine tensorrt-rtx or auto)")
        writable_folder(self.out, "--out")
        if self.engine_cache is not None:
            writable_folder(self.engine_cache, "--engine-cache")
        if self.triton_repo is not None:
            writable_folder(self.triton_repo, "--triton-repo")
            if self.triton_repo.resolve() == self.out.resolve():
                raise OptionError("--triton-repo: must be another folder than --out")
        target, _ = trt_tools.resolve_target(self.engine, self.compute_capabilities, self.default_capabilities)  # a flavour asked for by name must exist
        from .triton_repo import TRITON_BACKENDS

        if self.triton_backend not in TRITON_BACKENDS:
            raise OptionError(f"--triton-backend: expected one of {', '.join(TRITON_BACKENDS)}, got {self.triton_backend!r}")
        if self.triton_repo is not None and self.triton_backend == "tensorrt" and (target is None or target.flavour.name != "tensorrt"):
            raise OptionError("--triton-backend tensorrt serves TensorRT 10/11 plans, which need --engine tensorrt on a GPU machine "
                              "(TensorRT-RTX engines do not load in Triton's TensorRT backend)")


def writable_folder(path: Path, option: str) -> None:
    """A folder that exists and is writable, or can be created: else one line naming ``option``."""
    if path.is_symlink():
        raise OptionError(f"{option}: {path} is a symbolic link; give the folder it points to")
    if path.exists() and not path.is_dir():
        raise OptionError(f"{option}: {path} exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(f"{option}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError(f"{option}: {existing} is not writable")


def check_complete(folder: Path) -> None:
    """Raise :class:`OptionError` if ``folder`` is not a complete ``rsd-export`` set."""
    if (folder / INCOMPLETE_MARKER).is_file():
        raise OptionError(f"{folder}: an rsd-export run did not finish here ({INCOMPLETE_MARKER} is present); run it again")
    if not (folder / "report.json").is_file():
        raise OptionError(f"{folder}: no report.json (not an rsd-export output folder)")


@dataclass
class ExportReport:
    """Everything a run measured (``report.json``) plus the checks that failed."""

    precision: str
    model: dict
    shape_range: dict
    shape_range_text: str
    exporter: str
    attention: str
    versions: dict
    host: str
    stages: dict
    artifacts: list[dict] = field(default_factory=list)
    parity: list[dict] = field(default_factory=list)
    calibration: dict | None = None
    evaluation: dict | None = None
    precision_details: dict = field(default_factory=dict)
    quality: dict | None = None
    quality_budget: dict | None = None
    tensorrt: dict = field(default_factory=dict)
    triton_repository: dict | None = None
    failures: list[str] = field(default_factory=list)
    total_seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def export_all(pipe: SRPipeline, options: ExportOptions, log: Callable[[str], None] = print) -> ExportReport:
    """Run the whole export (see the module docstring); :attr:`ExportReport.failures` lists every
    check that failed (parity above target or not finite, an engine that did not build...)."""
    options.validate()
    started = time.perf_counter()
    out = options.out
    target, engine_reason = trt_tools.resolve_target(options.engine, options.compute_capabilities, options.default_capabilities)
    shapes = options.shapes
    stages = exported_stages(pipe, options)
    if options.triton_repo:  # a user's own model of the same name is refused before any work
        from .triton_config import RepositoryPlan
        from .triton_swap import check_repository_target

        check_repository_target(options.triton_repo, RepositoryPlan.from_pipeline(pipe, shapes).model_names(), overwrite=True)
    report = ExportReport(
        precision=options.precision,
        model={"description": pipe.description, "untrained": pipe.description.startswith("UNTRAINED"), "takes_noise_map": pipe.takes_noise_map,
               "latent_channels": pipe.codec.latent_channels, "codec": type(pipe.codec).__name__},
        shape_range=shapes.to_json(),
        shape_range_text=str(shapes),
        exporter=options.exporter,
        attention=options.attention,
        versions=versions(),
        host=f"{platform.machine()} CPU x{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        stages={name: spec.to_json() for name, spec in stages.items()},
    )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / INCOMPLETE_MARKER) as tmp:
        tmp.write_text(json.dumps({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid(),
                                   "note": "rsd-export is writing this folder; until it finishes the files may mix two runs"}) + "\n")

    def timed(label: str, fn, *args, **kwargs):
        begin = time.perf_counter()
        log(f"  {label} ...")
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - begin
        log(f"  {label}: done in {seconds:.1f} s")
        return result, seconds

    def add_artifact(name: str, precision: str, path: Path, seconds: float) -> None:
        report.artifacts.append({"stage": name, "precision": precision, "file": path.name, "bytes": path.stat().st_size,
                                 "seconds": seconds, "signature": graph_signature(path)})

    # 1. fp32 graphs, proven against PyTorch on fresh random inputs and on a real photo
    fp32_paths: dict[str, Path] = {}
    eval_images = calib.bundled_photos(1, 4 * max(shapes.height[1], shapes.width[1]), seed=options.seed + 1000)
    real = _inputs(pipe, eval_images.lr[:, :, : shapes.height[1], : shapes.width[1]], options.seed)
    plugin = options.attention == "plugin"
    for index, (name, stage) in enumerate(stages.items(), 1):
        log(f"[{index}/{len(stages)}] {name}: {stage.summary}")
        path = out / onnx_file_name(name, "fp32")
        _, seconds = timed("export fp32 ONNX", export_stage, stage, pipe, path, shapes, options.exporter, attention=options.attention)
        fp32_paths[name] = path
        add_artifact(name, "fp32", path, seconds)
        if plugin and name in ATTENTION_STAGES:
            log("  parity: skipped (plugin attention nodes run in TensorRT only)")
            report.parity.append({"stage": name, "inputs": "skipped: plugin attention (TensorRT only)", "relative_l2": None,
                                  "torch_s": None, "onnxruntime_s": None})
            continue
        random_inputs = stage.sample_inputs(shapes.batch[1], shapes.height[1], shapes.width[1], seed=options.seed)
        for label, inputs in (("random", random_inputs), (f"photo ({eval_images.names[0]})", real[name])):
            result = stage_parity(stage, pipe, path, inputs)
            ok = _finite(result["relative_l2"]) and result["relative_l2"] < FP32_PARITY_TARGET
            if not ok:
                report.failures.append(f"{name} fp32 parity on {label} inputs: relative L2 {result['relative_l2']:.3g} (target < {FP32_PARITY_TARGET:g})")
            log(f"  parity on {label} inputs: relative L2 {result['relative_l2']:.2e} ({'ok' if ok else f'FAILED, target < {FP32_PARITY_TARGET:g}'}); "
                f"PyTorch {result['torch_s']:.2f} s, ONNX Runtime {result['onnxruntime_s']:.2f} s")
            report.parity.append({"stage": name, "inputs": label, **result})

    # 2. reduced precision: fp16 casts or calibrated INT8 Q/DQ
    graphs = dict(fp32_paths)
    if PRECISIONS[options.precision].calibrated:
        cal_set = calib.load_calibration(options.calib_dir, options.calib_count + options.eval_count, options.hr_crop, options.seed)
        cal_set, held_out = cal_set.split(options.eval_count)
        log(f"calibration images: {cal_set.source}, {len(cal_set.names)} crops (+ {len(held_out.names)} held out)")
        report.calibration, report.evaluation = cal_set.to_json(), held_out.to_json()
        cal_inputs = _inputs(pipe, cal_set.lr, options.seed)
        graphs = {}
        precision = PRECISIONS[options.precision]
        seconds_of = {}
        for name in stages:
            path = out / onnx_file_name(name, options.precision)
            arrays = {k: v.numpy() for k, v in cal_inputs[name].items()}
            details, seconds_of[name] = timed(f"{name}: {precision.summary}, {len(cal_set.names)} calibration crops", precision.convert,
                                              fp32_paths[name], path, arrays, options)
            log("  " + ", ".join(f"{k}: {v}" for k, v in details.items() if k != "converter_warnings"))
            for warning in details["converter_warnings"]:
                log(f"  ModelOpt: {warning[:160]}")
            report.precision_details[name] = details
            graphs[name] = path
        if options.quality_budget_psnr is not None:
            budget, seconds = timed(f"quality budget: {options.quality_budget_psnr:g} dB PSNR vs fp32 on {len(held_out.names)} held-out crops",
                                    _apply_quality_budget, pipe, graphs, held_out, options, log)
            report.quality_budget = budget
            log(f"  kept {len(budget['kept'])} of {budget['groups']} layer groups in high precision: {budget['achieved_psnr_db']:.2f} dB "
                f"(every group quantized: {budget['plain_psnr_db']:.2f} dB)")
            if budget["achieved_psnr_db"] < budget["target_psnr_db"]:
                report.failures.append(f"quality budget: {budget['achieved_psnr_db']:.2f} dB with every group in high precision, "
                                       f"below the {budget['target_psnr_db']:g} dB asked")
        for name in stages:
            add_artifact(name, options.precision, graphs[name], seconds_of[name])
        report.quality = _quality(pipe, stages, graphs, held_out, options, log)
        for row in report.quality["rows"]:
            if not _finite(row["psnr_db"]) and row["psnr_db"] != float("inf"):
                report.failures.append(f"{options.precision} {row['graphs']}: PSNR vs fp32 is {row['psnr_db']} (the output is not finite)")

    # 3. TensorRT engines, or the exact commands that build them elsewhere
    report.tensorrt = _engines(options, target, engine_reason, stages, graphs, real, report.failures, log)

    # 4. optionally, a Triton Inference Server model repository over those artifacts
    if options.triton_repo:
        from .triton_repo import repository_from_export

        engines = {e["stage"]: Path(e["engine"]) for e in report.tensorrt.get("engines", []) if e["engine"] and target
                   and target.flavour.name == "tensorrt"}  # a Triton server's TensorRT backend is TensorRT 10/11
        _, backend = repository_from_export(options.triton_repo, pipe, shapes, graphs, engines, options.triton_backend, overwrite=True)
        report.triton_repository = {"path": str(options.triton_repo), "stage_backend": backend}
        log(f"Triton model repository ({backend} stages) written to {options.triton_repo}")
    report.total_seconds = time.perf_counter() - started
    write_report(out, report.to_json())
    (out / INCOMPLETE_MARKER).unlink()
    return report


def exported_stages(pipe: SRPipeline, options: ExportOptions) -> dict[str, StageSpec]:
    """The descriptions of the graphs this run writes, in order (``--single-input`` puts the
    noise-baked fused graph in the fused one's place)."""
    described = describe_stages(pipe)
    stages = {}
    for name in options.stages:
        if name == FUSED and options.single_input:
            stages[SINGLE_INPUT] = single_input_stage(pipe, options.shapes, options.seed)
        else:
            stages[name] = described[name]
    return stages


def _inputs(pipe: SRPipeline, lr: torch.Tensor, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Every graph's inputs for real LR images (see :func:`stage_inputs_from_images`)."""
    inputs = stage_inputs_from_images(pipe, lr, seed=seed)
    return {**inputs, SINGLE_INPUT: {"lr": inputs[FUSED]["lr"]}}


def _apply_quality_budget(pipe: SRPipeline, graphs: dict[str, Path], held_out: calib.CalibrationSet, options: ExportOptions, log) -> dict:
    """Rewrite the INT8 graphs with the fewest layer groups in high precision that meet the budget
    (:mod:`.quality_budget`); the fused graphs get the same groups."""
    import onnx

    from .quality_budget import ChainScorer, keep_in_high_precision, search

    fused = _inputs(pipe, held_out.lr, options.seed + 1)[FUSED]
    with torch.no_grad():
        reference = describe_stages(pipe)[FUSED].module(pipe)(*fused.values())
    models = {name: onnx.load(str(graphs[name])) for name in CHAINED_STAGES}
    scorer = ChainScorer(models, fused["lr"], fused["eps"], fused.get("noise_map"), pipe.schedule.prior_scale, pipe.codec.scale, reference)
    result, budgeted = search(models, scorer, options.quality_budget_psnr, log)
    for name in (FUSED, SINGLE_INPUT):
        if name in graphs:
            budgeted[name] = keep_in_high_precision(onnx.load(str(graphs[name])), set(result.kept))
    for name, model in budgeted.items():
        set_metadata(model, **{**read_metadata(model), "quality_budget": {"target_psnr_db": result.target_psnr_db, "kept": result.kept}})
        with atomic_path(graphs[name]) as tmp:
            onnx.save(model, str(tmp))
    return result.to_json()


def _quality(pipe: SRPipeline, stages, graphs: dict[str, Path], held_out: calib.CalibrationSet, options: ExportOptions, log) -> dict:
    """PSNR / LPIPS of reduced-precision HR images vs the fp32 PyTorch pipeline."""
    inputs = _inputs(pipe, held_out.lr, options.seed + 1)
    fused = inputs[FUSED]
    with torch.no_grad():
        reference = describe_stages(pipe)[FUSED].module(pipe)(*fused.values())
    lpips = LPIPS("auto")
    lpips_fp32_to_hr = lpips_distance(lpips, reference, held_out.hr)
    rows, notes = [], []
    candidates = []  # (label, the graphs' HR images, the fp32 PyTorch reference of the same)
    if all(name in graphs for name in CHAINED_STAGES):
        candidates.append(("encoder+generator+decoder", lambda: upscale_onnx({n: graphs[n] for n in CHAINED_STAGES}, pipe, fused["lr"], fused["eps"], fused.get("noise_map")), reference))
    if FUSED in graphs:
        candidates.append(("pipeline (fused)", lambda: upscale_onnx({FUSED: graphs[FUSED]}, pipe, fused["lr"], fused["eps"], fused.get("noise_map")), reference))
    if SINGLE_INPUT in graphs:
        with torch.no_grad():
            baked = stages[SINGLE_INPUT].module(pipe)(fused["lr"])
        candidates.append(("pipeline (single input, noise baked in)", lambda: torch.from_numpy(run_onnx(graphs[SINGLE_INPUT], {"lr": fused["lr"]})[0]), baked))
    if not candidates:
        notes.append("HR quality needs the fused pipeline graph or all of encoder, generator, decoder: not measured")
    for label, upscale, reference in candidates:
        start = time.perf_counter()
        try:
            hr = upscale()
        except Exception as error:  # e.g. an ONNX Runtime build without an fp16 kernel for some op
            notes.append(f"{label}: ONNX Runtime ({', '.join(default_providers())}) could not run the {options.precision} graphs: {str(error).splitlines()[0]}")
            continue
        seconds = time.perf_counter() - start
        row = {"graphs": label, "psnr_db": psnr(hr, reference), "lpips": lpips_distance(lpips, hr, reference),
               "lpips_fp32_to_hr": lpips_fp32_to_hr, "lpips_to_hr": lpips_distance(lpips, hr, held_out.hr), "seconds": seconds}
        log(f"  {options.precision} {label}: PSNR {row['psnr_db']:.2f} dB vs fp32, LPIPS distance {row['lpips']:.4f}")
        rows.append(row)
    return {"images": f"{len(held_out.names)} held-out crops: {held_out.source}", "lpips_kind": lpips.kind, "rows": rows, "notes": notes}


def _engines(options: ExportOptions, target, reason: str, stages, graphs: dict[str, Path], real, failures: list[str], log) -> dict:
    """Build (or take from the cache) one engine per graph; without a flavour that can build
    here, the TensorRT 10/11 commands that build them elsewhere."""
    opt_level = options.opt_level if options.opt_level is not None else PRECISIONS[options.precision].opt_level
    if target is None:
        commands = []
        for name, path in graphs.items():
            profile = options.shapes.profile(stages[name])
            engine = options.engine_dir / f"{name}.{options.precision}.plan"
            commands.append({"stage": name, "trtexec": trt_tools.trtexec_command(path, engine, profile, opt_level, options.engine_dir / "timing.cache"),
                             "polygraphy": trt_tools.polygraphy_command(path, profile, opt_level)})
        if options.engine == "none":
            status = "TensorRT engines not requested (--engine none); on a GPU machine with TensorRT 10/11 these commands build them"
        else:
            status = (f"TensorRT engines not built: {reason}. Everything before the engines is done; with TensorRT for RTX "
                      f"installed (pip install {trt_tools.FLAVOURS['tensorrt-rtx'].pip}) they build here; on a GPU machine with TensorRT 10/11 run")
        log(status + ":")
        for item in commands:
            log(f"  {item['trtexec']}")
        return {"status": status, "built": False, "commands": commands}
    log(f"TensorRT engines: {reason}; they run on {target.runs_on()}")
    engines = []
    can_run = trt_tools.local_gpu() is not None
    for name, path in graphs.items():
        record = trt_tools.cached_engine(path, stages[name], options.precision, options.shapes, options.engine_dir, target, opt_level)
        entry = asdict(record)
        if not record.ok:
            failures.append(f"{name} {options.precision} engine ({record.target}) failed: {record.error}")
        elif options.attention == "plugin" and name in ATTENTION_STAGES:
            entry["comparison"] = "skipped: plugin attention nodes do not run in ONNX Runtime"
        elif not can_run:
            entry["comparison"] = "not run: running an engine needs a GPU"
        else:
            tolerance = PRECISIONS[options.precision].engine_tolerance
            entry["comparison"] = trt_tools.compare_with_onnxruntime(path, Path(record.engine), target.flavour, [real[name]], atol=tolerance, rtol=tolerance)
            if not entry["comparison"]["passed"]:
                failures.append(f"{name} {options.precision} engine differs from ONNX Runtime: {entry['comparison']}")
        state = ("built" if record.built_now else "cached") if record.ok else "FAILED"
        log(f"  {name}: {state}" + (f" in {record.build_seconds:.1f} s" if record.built_now else "")
            + (f", {record.bytes / 1e6:.1f} MB, {record.warnings} warnings" if record.ok else f": {record.error}"))
        engines.append(entry)
    return {"status": reason, "built": all(e["error"] is None for e in engines), "runs_on": target.runs_on(), "engines": engines}

