"""What ``rsd-bench`` can measure: one registry entry per backend, its properties as fields.

Every backend is made through the runner classes of :mod:`.runners` (PyTorch eager or
``torch.compile``, ONNX Runtime, TensorRT) or is an upstream procedure
(:class:`~.bench_upstream.UpstreamProcedure`). Nothing outside this table tests a backend by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rsd_deploy import chain
from rsd_deploy.pipeline import SRPipeline

from .bench_upstream import UPSTREAM_STAGES, UpstreamProcedure
from .runners import OnnxRuntimeRunner, Runner, RunnerUnavailable, TensorRTRunner, TorchRunner
from .stages import STAGE_NAMES, ShapeRange, describe_stages, onnx_file_name

# How a backend's end-to-end number is produced (Backend.end_to_end).
FUSED_OR_CHAIN = "the fused pipeline stage where the runner has it, else chain.upscale over its stages"
PROCEDURE = "the procedure itself: SRPipeline.forward image by image"

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
    ranges = {"batch": wanted.batch, "lr_height": wanted.height, "lr_width": wanted.width}
    return all(key in recorded and recorded[key][0] <= low and high <= recorded[key][2] for key, (low, _, high) in ranges.items())


def fp32_graphs(ctx: BenchContext) -> dict[str, Path]:
    """The fp32 graphs of every stage: ``--onnx-dir``'s, or exported into ``work_dir/onnx`` (again
    when those were exported from another model or for a smaller shape range than the grid)."""
    if ctx.exported:
        return ctx.exported
    from .onnx_export import export_stage, read_metadata

    directory = ctx.onnx_dir
    if directory is None:
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
    graphs = {name: directory / onnx_file_name(name, "fp32") for name in STAGE_NAMES}
    missing = [str(graphs[name]) for name in chain.STAGE_NAMES if not graphs[name].is_file()]
    if missing:
        raise RunnerUnavailable(f"no exported graphs: {', '.join(missing)} (run rsd-export first, or drop --onnx-dir)")
    ctx.exported = {name: path for name, path in graphs.items() if path.is_file()}  # the fused graph when there
    return ctx.exported


def _onnxruntime(provider: str) -> Callable[[BenchContext], Runner]:
    def make(ctx: BenchContext) -> Runner:
        return OnnxRuntimeRunner(fp32_graphs(ctx), "fp32", provider=provider)

    return make


def _tensorrt(precision: str, plugin: bool = False) -> Callable[[BenchContext], Runner]:
    """Engines of the ``<stage>.<precision>.onnx`` graphs ``rsd-export --precision ...`` wrote, from
    its engine cache (built now when the cache has none for this GPU / TensorRT). ``plugin``:
    graphs exported with ``--attention plugin`` (the fused Triton window-attention kernel inside
    the engine), from ``--plugin-onnx-dir``."""

    def make(ctx: BenchContext) -> Runner:
        from .onnx_export import read_metadata

        directory = ctx.plugin_onnx_dir if plugin else ctx.onnx_dir
        if directory is None:
            wanted = "--plugin-onnx-dir (rsd-export --attention plugin --precision fp32)" if plugin else f"--onnx-dir (rsd-export --precision {precision})"
            raise RunnerUnavailable(f"needs {wanted} with every stage")
        graphs = {name: directory / onnx_file_name(name, precision) for name in STAGE_NAMES}
        missing = [str(graphs[name]) for name in chain.STAGE_NAMES if not graphs[name].is_file()]
        if missing:
            raise RunnerUnavailable(f"{', '.join(missing)} missing (rsd-export --precision {precision})")
        graphs = {name: path for name, path in graphs.items() if path.is_file()}
        for path in graphs.values():
            attention = read_metadata(path).get("attention", "reference")
            if attention != ("plugin" if plugin else "reference"):
                raise RunnerUnavailable(f"{path} was exported with --attention {attention}")
        cache = ctx.engine_dir or directory / "engines"
        return TensorRTRunner(graphs, describe_stages(ctx.pipe), precision, ctx.shape_range, cache)

    return make


def _upstream_student(ctx: BenchContext) -> Runner:
    return UpstreamProcedure(ctx.pipe, 1, ctx.device, ctx.seed)


def _upstream_teacher(ctx: BenchContext) -> Runner:
    if ctx.teacher is None:
        raise RunnerUnavailable("no teacher: pass --teacher (or --preset with a known teacher architecture)")
    return UpstreamProcedure(ctx.teacher, ctx.teacher.schedule.steps, ctx.device, ctx.seed)


# --- the registry -------------------------------------------------------------------------------


def backends(device: torch.device) -> list[Backend]:
    """Every backend, the quality reference first. ``device``: where the PyTorch and upstream
    backends run (it decides torch.compile's default selection)."""
    slow_compile = "compiling takes minutes on a CPU; select it with --backends torch-compile"
    fp32, fp16, bf16 = torch.float32, torch.float16, torch.bfloat16
    upstream = dict(upstream=True, end_to_end=PROCEDURE, stages=UPSTREAM_STAGES)
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
        Backend("onnxruntime-cuda", "ONNX Runtime, CUDA execution provider, fp32 graphs", _onnxruntime("CUDAExecutionProvider"), needs_gpu=True),
        Backend("tensorrt-fp32", "TensorRT engines from the fp32 graphs", _tensorrt("fp32"), needs_gpu=True),
        Backend("tensorrt-fp32-plugin", "TensorRT engines with the fused Triton window-attention plugin (fp32 graphs)",
                _tensorrt("fp32", plugin=True), needs_gpu=True),
        Backend("tensorrt-fp16", "TensorRT engines from the fp16 graphs", _tensorrt("fp16"), needs_gpu=True),
        Backend("tensorrt-int8", "TensorRT engines from the INT8 Q/DQ graphs", _tensorrt("int8"), needs_gpu=True),
        Backend("upstream-rsd-1step", "the one-step RSD procedure as the official scripts run it (SRPipeline.forward per image; "
                "fp16 autocast on CUDA)", _upstream_student, **upstream),
        Backend("upstream-resshift", "the ResShift chain on the teacher as the official scripts run it, all T steps of its schedule "
                "(fp16 autocast on CUDA)", _upstream_teacher, same_model=False, **upstream),
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
