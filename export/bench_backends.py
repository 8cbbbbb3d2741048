"""What ``rsd-bench`` can measure: one registry entry per backend, its properties as fields.

Every backend is made through the runner classes of :mod:`.runners` (PyTorch eager or
``torch.compile``, ONNX Runtime, OpenVINO, TensorRT) or is an upstream procedure: the official
code when ``--upstream-src`` has the checkout that runs it (:class:`~.bench_official.OfficialSampler`),
else the project pipeline, unbatched (:class:`~.bench_upstream.UpstreamProcedure`). Graphs of ``--onnx-dir`` are read with
:func:`~.artifacts.read_export` (a complete rsd-export folder, this model's, covering the grid).
Nothing outside this table tests a backend by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rsd_deploy import chain
from rsd_deploy.pipeline import SRPipeline

from .bench_upstream import UPSTREAM_STAGES, UpstreamProcedure, official_script
from .runners import OnnxRuntimeRunner, OpenVINORunner, Runner, RunnerUnavailable, TensorRTRunner, TorchRunner
from .stages import STAGE_NAMES, ShapeRange, describe_stages, onnx_file_name

# How a backend's end-to-end number is produced (Backend.end_to_end).
FUSED_OR_CHAIN = "the fused pipeline stage where the runner has it, else chain.upscale over its stages"
PROCEDURE = "the procedure itself, image by image (the official sampler's sample_func, or SRPipeline.forward)"

GROUPS = ("default", "all", "gpu", "cpu")  # names --backends accepts besides backend names


@dataclass
class BenchContext:
    """What the makers need: the model (and the teacher for the multi-step anchor), the device,
    where graphs and engines are (or go), and the grid's shape range."""

    pipe: SRPipeline
    teacher: SRPipeline | None
    device: torch.device
    shape_range: ShapeRange
    work_dir: Path  # exported graphs go to work_dir/onnx when no --onnx-dir is given
    onnx_dir: Path | None = None
    plugin_onnx_dir: Path | None = None
    engine_dir: Path | None = None
    seed: int = 0
    log: Callable[[str], None] = print
    upstream_src: tuple[Path, ...] = ()  # official checkouts (--upstream-src): the upstream backends run their code
    exported: dict[str, Path] = field(default_factory=dict)  # the fp32 graphs, once found or exported


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    make: Callable[[BenchContext], Runner]  # raises RunnerUnavailable with the reason
    needs_gpu: bool = False
    default: bool = True  # in the default selection
    not_default_reason: str = ""
    reference: bool = False  # the quality reference: every other output is compared with its output
    upstream: bool = False  # an official procedure: speed-ups are stated against it
    same_model: bool = True  # False: runs another model (the teacher), so its quality is not compared
    end_to_end: str = FUSED_OR_CHAIN
    stages: tuple[chain.Stage, ...] = chain.STAGES  # timed one by one, with what each reads

    def properties(self) -> dict:
        return {"summary": self.summary, "needs_gpu": self.needs_gpu, "reference": self.reference, "upstream": self.upstream,
                "same_model": self.same_model}


# --- makers -------------------------------------------------------------------------------------


def _torch(dtype: torch.dtype, attention: str, on_gpu: bool = False, compile: bool = False) -> Callable[[BenchContext], Runner]:
    def make(ctx: BenchContext) -> Runner:
        return TorchRunner(ctx.pipe, "cuda" if on_gpu else ctx.device, dtype, attention, compile=compile)

    return make


def _compiled(ctx: BenchContext) -> Runner:
    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    return TorchRunner(ctx.pipe, ctx.device, dtype, "sdpa", compile=True)


def _covers(recorded: dict, wanted: ShapeRange) -> bool:
    """Whether a graph's recorded ``shape_range`` metadata holds ``wanted`` (False when unreadable)."""
    try:
        return ShapeRange.from_json(recorded).covers(wanted)
    except (KeyError, TypeError, ValueError):
        return False


def exported_graphs(ctx: BenchContext, precision: str, directory: Path | None = None, option: str = "--onnx-dir") -> dict[str, Path]:
    """The ``precision`` graphs of the complete rsd-export folder ``directory`` (default
    ``--onnx-dir``), stage -> path (the fused stage too when the run exported it), checked to be
    the benchmarked model's and to cover the grid."""
    from .artifacts import ArtifactError, read_export

    directory = directory or ctx.onnx_dir
    if directory is None:
        raise RunnerUnavailable(f"needs {option} (rsd-export --precision {precision})")
    try:
        graphs = read_export(directory, precision).graphs
        missing = [name for name in chain.STAGE_NAMES if name not in graphs.graphs]
        if missing:
            raise ArtifactError(f"{directory}: no {precision} graph of the {', '.join(missing)} stage (rsd-export --stages)")
        if graphs.source != ctx.pipe.description:
            raise ArtifactError(f"{directory}: graphs of {graphs.source!r}, not of the benchmarked {ctx.pipe.description!r}")
        graphs.check_model(ctx.pipe)
        graphs.check_fits(ctx.shape_range, "the grid (--batch, --lr-size)")
    except ArtifactError as error:
        raise RunnerUnavailable(str(error)) from None
    return graphs.paths()


def fp32_graphs(ctx: BenchContext) -> dict[str, Path]:
    """The fp32 graphs of every stage: ``--onnx-dir``'s, or exported into ``work_dir/onnx`` (again
    when those were exported from another model or for a smaller shape range than the grid)."""
    if ctx.exported:
        return ctx.exported
    if ctx.onnx_dir is not None:
        ctx.exported = exported_graphs(ctx, "fp32")
        return ctx.exported
    from .onnx_export import export_stage, read_metadata

    directory = ctx.work_dir / "onnx"
    stages = describe_stages(ctx.pipe)
    for name in STAGE_NAMES:
        path = directory / onnx_file_name(name, "fp32")
        recorded = read_metadata(path) if path.is_file() else {}
        if recorded.get("source") == ctx.pipe.description and _covers(recorded.get("shape_range", {}), ctx.shape_range):
            continue
        began = time.perf_counter()
        export_stage(stages[name], ctx.pipe, path, ctx.shape_range)
        ctx.log(f"  exported the {name} graph to {path} in {time.perf_counter() - began:.1f} s")
    ctx.exported = {name: directory / onnx_file_name(name, "fp32") for name in STAGE_NAMES}
    return ctx.exported


def graphs_of(ctx: BenchContext, precision: str) -> dict[str, Path]:
    """The graphs of ``precision``: fp32 as :func:`fp32_graphs`, others from ``--onnx-dir``."""
    return fp32_graphs(ctx) if precision == "fp32" else exported_graphs(ctx, precision)


def _onnxruntime(provider: str, precision: str = "fp32") -> Callable[[BenchContext], Runner]:
    def make(ctx: BenchContext) -> Runner:
        from .runners.onnxruntime_runner import _ort

        available = _ort().get_available_providers()
        if provider not in available:  # said before a full-size model is exported for nothing
            raise RunnerUnavailable(f"{provider} is not in this onnxruntime build ({', '.join(available)})")
        return OnnxRuntimeRunner(graphs_of(ctx, precision), precision, provider=provider)

    return make


def _openvino(precision: str, inference_precision: str) -> Callable[[BenchContext], Runner]:
    """OpenVINO on the CPU: the ``precision`` graphs compiled at ``inference_precision``."""

    def make(ctx: BenchContext) -> Runner:
        from .runners.openvino_runner import _ov

        _ov()  # one line when the extra is missing, before any graph is exported
        return OpenVINORunner(graphs_of(ctx, precision), precision, inference_precision)

    return make


def _tensorrt(precision: str, plugin: bool = False) -> Callable[[BenchContext], Runner]:
    """Engines of the ``<stage>.<precision>.onnx`` graphs ``rsd-export --precision ...`` wrote, from
    its engine cache (built now when the cache has none for this GPU / TensorRT). ``plugin``:
    graphs exported with ``--attention plugin`` (the fused Triton window-attention kernel inside
    the engine), from ``--plugin-onnx-dir``."""

    def make(ctx: BenchContext) -> Runner:
        from .onnx_export import read_metadata

        directory = ctx.plugin_onnx_dir if plugin else ctx.onnx_dir
        option = "--plugin-onnx-dir" if plugin else "--onnx-dir"
        if plugin and directory is None:
            raise RunnerUnavailable("needs --plugin-onnx-dir (rsd-export --attention plugin --precision fp32)")
        graphs = exported_graphs(ctx, precision, directory, option)
        for path in graphs.values():
            attention = read_metadata(path).get("attention", "reference")
            if attention != ("plugin" if plugin else "reference"):
                raise RunnerUnavailable(f"{path} was exported with --attention {attention}")
        cache = ctx.engine_dir or directory / "engines"
        return TensorRTRunner(graphs, describe_stages(ctx.pipe), precision, ctx.shape_range, cache)

    return make


def _upstream(teacher: bool) -> Callable[[BenchContext], Runner]:
    """The official procedure for the student (one step) or the teacher (all T steps): the official
    code when ``--upstream-src`` has a checkout of the repository whose script runs it, else the
    project pipeline, unbatched."""

    def make(ctx: BenchContext) -> Runner:
        from .bench_official import OfficialSampler, find_checkout

        pipe = ctx.teacher if teacher else ctx.pipe
        if pipe is None:
            raise RunnerUnavailable("no teacher: pass --teacher (or --preset with a known teacher architecture)")
        steps = pipe.schedule.steps if teacher else 1
        try:
            find_checkout(ctx.upstream_src, official_script(pipe, steps))
        except RunnerUnavailable:  # none given for this script
            return UpstreamProcedure(pipe, steps, ctx.device, ctx.seed)
        return OfficialSampler(ctx.upstream_src, pipe, steps, ctx.device, ctx.seed)

    return make


# --- the registry -------------------------------------------------------------------------------


def backends(device: torch.device) -> list[Backend]:
    """Every backend, the quality reference first. ``device``: where the PyTorch and upstream
    backends run (it decides torch.compile's default selection)."""
    slow_compile = "compiling takes minutes on a CPU; select it with --backends torch-compile"
    fp32, fp16, bf16 = torch.float32, torch.float16, torch.bfloat16
    upstream = dict(upstream=True, end_to_end=PROCEDURE, stages=UPSTREAM_STAGES)
    how = ("the official code when --upstream-src has its checkout (its own noise: quality not compared), else the project pipeline, "
           "unbatched (SRPipeline.forward per image)")
    return [
        Backend("pytorch-fp32", "PyTorch eager fp32, official attention (the quality reference)", _torch(fp32, "reference"), reference=True),
        Backend("pytorch-fp32-sdpa", "PyTorch eager fp32, scaled_dot_product_attention", _torch(fp32, "sdpa")),
        Backend("pytorch-fp32-triton", "PyTorch eager fp32, fused Triton window attention", _torch(fp32, "triton"), needs_gpu=True),
        # fp16 is a GPU format here: PyTorch's CPU fp16 convolutions are slow reference kernels
        Backend("pytorch-fp16-sdpa", "PyTorch eager fp16, scaled_dot_product_attention", _torch(fp16, "sdpa", on_gpu=True), needs_gpu=True),
        Backend("pytorch-fp16-triton", "PyTorch eager fp16, fused Triton window attention", _torch(fp16, "triton", on_gpu=True), needs_gpu=True),
        Backend("pytorch-bf16", "PyTorch eager bf16, scaled_dot_product_attention", _torch(bf16, "sdpa")),
        Backend("torch-compile", "torch.compile (inductor), sdpa attention; fp16 on GPU, fp32 on CPU", _compiled,
                default=device.type == "cuda", not_default_reason=slow_compile),
        Backend("onnxruntime-cpu", "ONNX Runtime, CPU execution provider, fp32 graphs", _onnxruntime("CPUExecutionProvider")),
        Backend("onnxruntime-cpu-int8", "ONNX Runtime, CPU execution provider, the INT8 Q/DQ graphs of --onnx-dir (its QDQ kernels: "
                "VNNI where the CPU has it)", _onnxruntime("CPUExecutionProvider", "int8")),
        Backend("openvino-fp32", "OpenVINO CPU, fp32 graphs, f32 inference precision", _openvino("fp32", "f32")),
        Backend("openvino-bf16", "OpenVINO CPU, fp32 graphs, bf16 inference precision (CPUs with AVX-512 BF16 or AMX)",
                _openvino("fp32", "bf16")),
        Backend("openvino-int8", "OpenVINO CPU, the INT8 Q/DQ graphs of --onnx-dir, the other ops f32", _openvino("int8", "f32")),
        Backend("openvino-int8-bf16", "OpenVINO CPU, the INT8 Q/DQ graphs of --onnx-dir, the other ops bf16", _openvino("int8", "bf16")),
        Backend("onnxruntime-cuda", "ONNX Runtime, CUDA execution provider, fp32 graphs", _onnxruntime("CUDAExecutionProvider"), needs_gpu=True),
        Backend("tensorrt-fp32", "TensorRT engines from the fp32 graphs", _tensorrt("fp32"), needs_gpu=True),
        Backend("tensorrt-fp32-plugin", "TensorRT engines with the fused Triton window-attention plugin (fp32 graphs)",
                _tensorrt("fp32", plugin=True), needs_gpu=True),
        Backend("tensorrt-fp16", "TensorRT engines from the fp16 graphs", _tensorrt("fp16"), needs_gpu=True),
        Backend("tensorrt-int8", "TensorRT engines from the INT8 Q/DQ graphs", _tensorrt("int8"), needs_gpu=True),
        Backend("upstream-rsd-1step", f"the one-step student as RSD's (SinSR's without a noise map) inference.py --one_step runs it: "
                f"{how}; fp16 UNet torso + fp16 autoencoder on CUDA, fp32 on a CPU", _upstream(teacher=False), **upstream),
        Backend("upstream-resshift", f"the teacher's T-step chain as ResShift's inference_resshift.py runs it: {how}; "
                "fp16 autocast on CUDA, fp32 on a CPU", _upstream(teacher=True), same_model=False, **upstream),
    ]


def select(registry: list[Backend], wanted: list[str]) -> tuple[list[Backend], dict[str, str]]:
    """The backends ``wanted`` names (backend names or the groups ``default``, ``all``, ``gpu``,
    ``cpu``), in registry order, and every other one with why it is not selected."""
    names = {b.name for b in registry}
    unknown = [name for name in wanted if name not in names and name not in GROUPS]
    if unknown:
        raise ValueError(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(GROUPS)} or {', '.join(b.name for b in registry)}")

    def chosen(backend: Backend) -> bool:
        return any(
            name == backend.name
            or (name == "all")
            or (name == "default" and backend.default)
            or (name == "gpu" and backend.needs_gpu)
            or (name == "cpu" and not backend.needs_gpu)
            for name in wanted
        )

    selected = [b for b in registry if chosen(b)]
    skipped = {b.name: (b.not_default_reason if wanted == ["default"] and not b.default else f"not selected (--backends {','.join(wanted)})")
               for b in registry if not chosen(b)}
    return selected, skipped
