"""``rsd-bench``: every available backend side by side, per stage and end to end, in one run.

For each backend x batch x LR size the same inputs run through the three stages (encoder,
generator, decoder) one at a time and through the fused one-step pipeline (pad, bicubic,
encode, step, decode, crop: the ``pipeline`` stage of :mod:`.stages`). Reported per case:
latency p50 / p90 / p99 after warm-up (CUDA events on a GPU, ``perf_counter`` on the CPU),
images/s, peak memory (GPU allocator for PyTorch backends, device memory in use for the others,
process RSS sampled during the case) and quality of the end-to-end output against the fp32
PyTorch reference on the same photos and noise (PSNR and LPIPS from :mod:`.parity`; the report
says when LPIPS runs on a random AlexNet backbone). Backends that cannot run here are listed
with the reason.

The upstream reference is the sampling procedure as the official scripts run it:
``SRPipeline.forward`` image by image (with its tiling), under fp16 autocast on CUDA; the
15-step ResShift chain on the teacher and the one-step RSD student. Speed-ups in the report are
stated against it.

Outputs in ``--out``: ``bench.json``, ``bench.md`` (tables) and ``bench.png`` (latency vs batch
per backend, stacked per stage, one panel per LR size).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rsd_deploy.atomic import atomic_path
from rsd_deploy.distill.losses import LPIPSLoss
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.sampling import NOISE_MAP_STREAM, PRIOR_STREAM, NoiseField

from .parity import lpips_distance, psnr
from .stages import CHAINED_STAGES, STAGE_NAMES, ShapeRange, describe_stages, onnx_file_name, stage_inputs

END_TO_END = "pipeline"
REFERENCE = "pytorch-fp32"  # the quality reference: official attention, fp32


class Unavailable(RuntimeError):
    """A backend that cannot run on this machine; the message says why."""


# --- inputs -----------------------------------------------------------------------------------


def photo_batch(batch: int, size: int) -> torch.Tensor:
    """(batch, 3, size, size) LR images in [0, 1]: crops of scikit-image's bundled photos,
    area-downscaled by 2 so that they look like LR inputs."""
    import skimage.data
    import torch.nn.functional as F

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    out = []
    for index in range(batch):
        photo = torch.from_numpy(photos[index % len(photos)]).permute(2, 0, 1).float() / 255
        photo = F.avg_pool2d(photo[None], 2)[0]
        h, w = photo.shape[-2:]
        crop = min(size, h, w)
        top, left = (h - crop) // 2, (w - crop) // 2
        tile = photo[:, top : top + crop, left : left + crop]
        out.append(F.interpolate(tile[None], size=(size, size), mode="area")[0] if crop != size else tile)
    return torch.stack(out).clamp(0, 1)


@dataclass
class CaseInputs:
    """The same inputs for every backend: stage inputs from the fp32 pipeline, noise from the
    :class:`NoiseField` that ``SRPipeline.forward(seed)`` uses, so the fused graph and the
    upstream procedure compute the same images."""

    lr: torch.Tensor
    seed: int
    z_y: torch.Tensor
    stage_feeds: dict[str, dict[str, torch.Tensor]]

    @property
    def upstream_extras(self) -> dict:
        """What the upstream procedure draws itself: the seed of its noise, and z_y (it samples
        x_T inside its generate call)."""
        return {"_seed": self.seed, "_z_y": self.z_y}


def case_inputs(reference: SRPipeline, batch: int, size: int, seed: int = 0) -> CaseInputs:
    """Photos, the pipeline's own block-seeded noise, and every stage's inputs computed by
    ``reference`` (a float32 CPU copy of the benchmarked pipeline)."""
    lr = photo_batch(batch, size)
    field_ = NoiseField(seed)

    def noise(stream: int, depth: int) -> torch.Tensor:
        return torch.stack([field_.crop(i, stream, depth, 0, 0, size, size) for i in range(batch)])

    eps = noise(PRIOR_STREAM, reference.codec.latent_channels)
    noise_map = noise(NOISE_MAP_STREAM, reference.unet.noise_channels) if reference.takes_noise_map else None
    feeds = stage_inputs(reference, lr, eps, noise_map)
    with torch.no_grad():
        z_y = reference.codec.encode(feeds["encoder"]["lq_up"])
    return CaseInputs(lr, seed, z_y, feeds)


# --- timing and memory --------------------------------------------------------------------------


def percentiles(times_ms: list[float]) -> dict:
    values = np.asarray(times_ms)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "iterations": len(values),
    }


class Timer:
    """Times one call: CUDA events around it on a GPU (what the device spent), wall clock on
    the CPU. Runs ``warmup`` calls, then at least ``min_iters`` and at most ``max_iters``,
    stopping once ``budget_s`` has been spent."""

    def __init__(self, device: torch.device, warmup: int, min_iters: int, max_iters: int, budget_s: float):
        self.device, self.warmup, self.min_iters, self.max_iters, self.budget_s = device, warmup, min_iters, max_iters, budget_s

    def _once(self, fn: Callable[[], object]) -> tuple[float, object]:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), result
        begin = time.perf_counter()
        result = fn()
        return (time.perf_counter() - begin) * 1000, result

    def measure(self, fn: Callable[[], object]) -> tuple[dict, object]:
        """Timing statistics, and what the last call returned."""
        first, result = self._once(fn)  # includes lazy work (compilation, allocator growth, autotuning)
        for _ in range(self.warmup - 1):
            self._once(fn)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < self.max_iters and (len(times) < self.min_iters or time.perf_counter() - started < self.budget_s):
            elapsed, result = self._once(fn)
            times.append(elapsed)
        return {**percentiles(times), "first_call_ms": first}, result


class RssSampler:
    """Peak resident set size of this process while a block runs (sampled every 2 ms)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.002)

    @contextmanager
    def track(self):
        self.start = self._rss()
        self.peak = self.start
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self._stop.clear()
            self.peak = max(self.peak, self._rss())


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


# --- backends -----------------------------------------------------------------------------------


@dataclass
class Runner:
    """A prepared backend: ``run(stage, feeds) -> output tensor`` for every stage name."""

    run: Callable[[str, dict[str, torch.Tensor]], torch.Tensor]
    device: torch.device
    torch_memory: bool = False  # True when torch's allocator sees its memory
    notes: str = ""


@dataclass
class Backend:
    name: str
    summary: str
    prepare: Callable[["BenchContext"], Runner]  # raises Unavailable
    default: bool = True  # in the default selection
    not_default_reason: str = ""


@dataclass
class BenchContext:
    pipe: SRPipeline
    teacher: SRPipeline | None
    device: torch.device
    onnx_dir: Path | None
    plugin_onnx_dir: Path | None
    engine_dir: Path | None
    work_dir: Path
    shape_range: ShapeRange
    notes: list[str] = field(default_factory=list)


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise Unavailable("needs a CUDA GPU (none visible to torch)")
    return torch.device("cuda")


def _torch_runner(ctx: BenchContext, dtype: torch.dtype, attention: str, device: torch.device, compile_: bool = False) -> Runner:
    pipe = copy.deepcopy(ctx.pipe).to(device=device, dtype=dtype)
    pipe.unet.set_attention_backend(attention)
    stages = describe_stages(pipe)
    modules = {name: stages[name].module(pipe) for name in STAGE_NAMES}
    if compile_:
        modules = {name: torch.compile(module) for name, module in modules.items()}

    @torch.no_grad()
    def run(stage: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        args = [v.to(device=device, dtype=dtype, non_blocking=True) for v in feeds.values()]
        return modules[stage](*args)

    return Runner(run, device, torch_memory=True)


def _eager(dtype: torch.dtype, attention: str, gpu_only: bool = False) -> Callable[[BenchContext], Runner]:
    def prepare(ctx: BenchContext) -> Runner:
        device = _cuda() if gpu_only else ctx.device
        if attention == "triton" and device.type != "cuda":
            raise Unavailable("the fused Triton window-attention kernel needs a CUDA GPU (CPU runs it only in the interpreter)")
        return _torch_runner(ctx, dtype, attention, device)

    return prepare


def _compiled(ctx: BenchContext) -> Runner:
    return _torch_runner(ctx, torch.float16 if ctx.device.type == "cuda" else torch.float32, "sdpa", ctx.device, compile_=True)


def _onnx_files(ctx: BenchContext) -> dict[str, Path]:
    """The exported graphs of every stage: ``--onnx-dir``, or exported now into the work dir
    (again when the graphs there were exported for a smaller shape range than the grid)."""
    from .onnx_export import read_metadata

    directory = ctx.onnx_dir
    if directory is None:
        directory = ctx.work_dir / "onnx"
        files = [directory / onnx_file_name(s, "fp32") for s in STAGE_NAMES]
        if not all(p.is_file() and _covers(read_metadata(p).get("shape_range", {}), ctx.shape_range) for p in files):
            export_onnx_stages(ctx.pipe, directory, ctx.shape_range)
    files = {s: directory / onnx_file_name(s, "fp32") for s in STAGE_NAMES}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise Unavailable(f"no exported graphs: {', '.join(missing)} (run rsd-export --stages all first or drop --onnx-dir)")
    return files


def _covers(recorded: dict, wanted: ShapeRange) -> bool:
    ranges = {"batch": wanted.batch, "lr_height": wanted.height, "lr_width": wanted.width}
    return all(key in recorded and recorded[key][0] <= low and high <= recorded[key][2] for key, (low, _, high) in ranges.items())


def export_onnx_stages(pipe: SRPipeline, directory: Path, shape_range: ShapeRange) -> None:
    """fp32 ONNX graphs of every stage, by the export module (as ``rsd-export`` writes them)."""
    from .onnx_export import export_stage

    stages = describe_stages(pipe)
    for name in STAGE_NAMES:
        began = time.perf_counter()
        export_stage(stages[name], pipe, directory / onnx_file_name(name, "fp32"), shape_range)
        print(f"  exported {name} to ONNX in {time.perf_counter() - began:.1f} s", flush=True)


def _onnxruntime(provider: str) -> Callable[[BenchContext], Runner]:
    def prepare(ctx: BenchContext) -> Runner:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise Unavailable(f"onnxruntime is not installed: {error}") from None
        if provider not in ort.get_available_providers():
            raise Unavailable(f"{provider} is not in this onnxruntime build ({', '.join(ort.get_available_providers())}); install onnxruntime-gpu alone")
        files = _onnx_files(ctx)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same CPU threads as the PyTorch backends
        sessions = {s: ort.InferenceSession(str(p), options, providers=[provider]) for s, p in files.items()}

        def run(stage: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
            session = sessions[stage]
            inputs = {i.name: feeds[i.name].numpy() for i in session.get_inputs()}
            return torch.from_numpy(session.run(None, inputs)[0])

        return Runner(run, torch.device("cpu"), notes=f"{provider}, graphs from {files['encoder'].parent}")

    return prepare


def _tensorrt(precision: str, plugin: bool = False) -> Callable[[BenchContext], Runner]:
    """Engines of the ``<stage>.<precision>.onnx`` graphs that ``rsd-export --precision ...``
    wrote, from its engine cache (built now if the cache has none for this GPU / TensorRT).
    ``plugin``: graphs exported with ``--attention plugin`` (the fused Triton window-attention
    kernel inside the engine), from ``--plugin-onnx-dir``."""

    def prepare(ctx: BenchContext) -> Runner:
        from . import tensorrt as trt_tools
        from .onnx_export import read_metadata

        if trt_tools.local_gpu() is None:
            raise Unavailable("running TensorRT engines needs a CUDA GPU")
        target, reason = trt_tools.resolve_target("auto")
        if target is None:
            raise Unavailable(reason)
        directory = ctx.plugin_onnx_dir if plugin else ctx.onnx_dir
        if directory is None:
            flag = "--plugin-onnx-dir (rsd-export --attention plugin --precision fp32)" if plugin else f"--onnx-dir (rsd-export --precision {precision})"
            raise Unavailable(f"needs {flag} with every stage")
        stages = describe_stages(ctx.pipe)
        cache = ctx.engine_dir or directory / "engines"
        runners = {}
        for name in STAGE_NAMES:
            graph = directory / onnx_file_name(name, precision)
            if not graph.is_file():
                raise Unavailable(f"{graph} missing (rsd-export --precision {precision} --stages all)")
            attention = read_metadata(graph).get("attention", "reference")
            if attention != ("plugin" if plugin else "reference"):
                raise Unavailable(f"{graph} was exported with --attention {attention}")
            record = trt_tools.cached_engine(graph, stages[name], precision, ctx.shape_range, cache, target)
            if not record.ok:
                raise Unavailable(f"the {name} engine did not build: {record.error}")
            runners[name] = trt_tools.EngineRunner(record.engine, target.flavour)

        def run(stage: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
            return next(iter(runners[stage](feeds).values()))

        return Runner(run, torch.device("cuda"), notes=f"{target.label} engines in {cache}")

    return prepare


def _upstream(steps_of: Callable[[BenchContext], tuple[SRPipeline, int]]) -> Callable[[BenchContext], Runner]:
    """The official procedure: ``SRPipeline.forward`` per image (tiling, NoiseField), fp16
    autocast on CUDA as the official scripts run; stages through the same autocast."""

    def prepare(ctx: BenchContext) -> Runner:
        source, steps = steps_of(ctx)
        pipe = copy.deepcopy(source).to(ctx.device).float()
        on_gpu = ctx.device.type == "cuda"
        autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if on_gpu else nullcontext
        channels = pipe.codec.latent_channels

        @torch.no_grad()
        def run(stage: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
            with autocast():
                if stage == "pipeline":
                    return pipe(feeds["lr"], steps=steps, seed=feeds["_seed"])
                if stage == "encoder":
                    return pipe.codec.encode(feeds["lq_up"].to(ctx.device))
                if stage == "decoder":
                    return pipe.decode(feeds["z"].to(ctx.device))
                field_ = NoiseField(feeds["_seed"])
                batch, _, h, w = feeds["_z_y"].shape

                def noise(stream: int, depth: int = channels) -> torch.Tensor:
                    return torch.stack([field_.crop(i, stream, depth, 0, 0, h, w) for i in range(batch)]).to(ctx.device)

                return pipe.generate(feeds["_z_y"].to(ctx.device), feeds["lq"].to(ctx.device), noise, steps)

        note = "fp16 autocast (CUDA), as the official scripts" if on_gpu else "fp32: the official scripts' fp16 autocast is CUDA-only"
        note += f"; {steps} step{'s' if steps > 1 else ''}"
        return Runner(run, ctx.device, torch_memory=True, notes=note)

    return prepare


def _upstream_student(ctx: BenchContext) -> tuple[SRPipeline, int]:
    return ctx.pipe, 1


def _upstream_teacher(ctx: BenchContext) -> tuple[SRPipeline, int]:
    if ctx.teacher is None:
        raise Unavailable("no teacher: pass --teacher (or --preset with a known teacher architecture)")
    return ctx.teacher, ctx.teacher.schedule.steps


def backends(device: torch.device) -> list[Backend]:
    slow_compile = "compiling takes minutes on a CPU; select it with --backends torch-compile"
    return [
        Backend(REFERENCE, "PyTorch eager fp32, official attention (the quality reference)", _eager(torch.float32, "reference")),
        Backend("pytorch-fp32-sdpa", "PyTorch eager fp32, scaled_dot_product_attention", _eager(torch.float32, "sdpa")),
        Backend("pytorch-fp32-triton", "PyTorch eager fp32, fused Triton window attention", _eager(torch.float32, "triton")),
        # fp16 is a GPU format here: PyTorch's CPU fp16 convolutions are slow reference kernels
        Backend("pytorch-fp16-sdpa", "PyTorch eager fp16, scaled_dot_product_attention", _eager(torch.float16, "sdpa", gpu_only=True)),
        Backend("pytorch-fp16-triton", "PyTorch eager fp16, fused Triton window attention", _eager(torch.float16, "triton", gpu_only=True)),
        Backend("pytorch-bf16", "PyTorch eager bf16, scaled_dot_product_attention", _eager(torch.bfloat16, "sdpa")),
        Backend("torch-compile", "torch.compile (inductor), sdpa attention; fp16 on GPU, fp32 on CPU", _compiled,
                default=device.type == "cuda", not_default_reason=slow_compile),
        Backend("onnxruntime-cpu", "ONNX Runtime, CPU execution provider, fp32 graphs", _onnxruntime("CPUExecutionProvider")),
        Backend("onnxruntime-cuda", "ONNX Runtime, CUDA execution provider, fp32 graphs", _onnxruntime("CUDAExecutionProvider")),
        Backend("tensorrt-fp32", "TensorRT engines from the fp32 graphs", _tensorrt("fp32")),
        Backend("tensorrt-fp32-plugin", "TensorRT engines with the fused Triton window-attention plugin (fp32 graphs)", _tensorrt("fp32", plugin=True)),
        Backend("tensorrt-fp16", "TensorRT engines from the fp16 graphs", _tensorrt("fp16")),
        Backend("tensorrt-int8", "TensorRT engines from the INT8 Q/DQ graphs", _tensorrt("int8")),
        Backend("upstream-rsd-1step", "official one-step RSD procedure (SRPipeline.forward, fp16 autocast on CUDA)", _upstream(_upstream_student)),
        Backend("upstream-resshift", "official multi-step ResShift chain on the teacher, all T steps of its schedule (fp16 autocast on CUDA)", _upstream(_upstream_teacher)),
    ]


# --- the run ----------------------------------------------------------------------------------


def run_case(runner: Runner, backend: Backend, inputs: CaseInputs, timer: Timer, rss: RssSampler) -> tuple[dict, torch.Tensor]:
    device = runner.device
    results: dict = {"stages": {}}
    batch = inputs.lr.shape[0]
    extras = inputs.upstream_extras if backend.name.startswith("upstream") else {}
    if runner.torch_memory and device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if device.type == "cuda":
        free_before = torch.cuda.mem_get_info()[0]
    output = None
    with rss.track():
        for stage in STAGE_NAMES:  # timed separately; the last one (pipeline) is end to end
            timing, result = timer.measure(lambda: runner.run(stage, {**inputs.stage_feeds[stage], **extras}))
            timing["images_per_s"] = batch * 1000 / timing["p50_ms"]
            results["stages"][stage] = timing
            if stage == END_TO_END:
                output = result
    memory = {"peak_rss_mib": _mib(rss.peak), "rss_growth_mib": _mib(rss.peak - rss.start)}
    if device.type == "cuda":
        if runner.torch_memory:
            memory["peak_gpu_allocated_mib"] = _mib(torch.cuda.max_memory_allocated())
        memory["gpu_in_use_mib"] = _mib(free_before - torch.cuda.mem_get_info()[0])
    results["memory"] = memory
    results["end_to_end"] = results["stages"].pop(END_TO_END)
    return results, output.float().cpu()


def environment(device: torch.device) -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnxruntime", "onnx", "tensorrt", "triton", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    info = {"versions": versions, "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    info["device"] = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return info


def run_bench(
    pipe: SRPipeline,
    out_dir: Path,
    batches: list[int],
    sizes: list[int],
    selected: list[str] | None = None,
    teacher: SRPipeline | None = None,
    onnx_dir: Path | None = None,
    engine_dir: Path | None = None,
    device: torch.device | None = None,
    timer: Timer | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
    plugin_onnx_dir: Path | None = None,
) -> dict:
    """Run the grid and write bench.json / bench.md / bench.png; return the report."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timer = timer or Timer(device, warmup=1, min_iters=3, max_iters=20, budget_s=1.0)
    registry = backends(device)
    names = [b.name for b in registry]
    unknown = [n for n in (selected or []) if n not in names]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {names}")
    shape_range = ShapeRange(batch=(1, min(batches), max(max(batches), 1)), height=(64, min(sizes), max(sizes)), width=(64, min(sizes), max(sizes)))
    ctx = BenchContext(pipe.eval(), teacher, device, onnx_dir, plugin_onnx_dir, engine_dir, out_dir, shape_range)
    report = {"environment": environment(device), "model": pipe.description, "grid": {"batch": batches, "lr_size": sizes},
              "timer": {"warmup": timer.warmup, "min_iters": timer.min_iters, "max_iters": timer.max_iters, "budget_s": timer.budget_s},
              "backends": {}, "results": [], "unavailable": []}
    reference = copy.deepcopy(pipe).float().cpu()
    inputs = {(b, s): case_inputs(reference, b, s, seed) for b in batches for s in sizes}
    del reference
    references: dict[tuple[int, int], torch.Tensor] = {}
    lpips = LPIPSLoss("auto")
    report["quality_metrics"] = {"psnr": f"dB vs {REFERENCE} end-to-end output", "lpips": lpips.kind}
    rss = RssSampler()
    order = [b for b in registry if b.name == REFERENCE] + [b for b in registry if b.name != REFERENCE]
    for backend in order:
        chosen = backend.name in selected if selected else backend.default
        if not chosen:
            reason = "not selected (--backends)" if selected else backend.not_default_reason
            report["unavailable"].append({"backend": backend.name, "reason": reason})
            continue
        began = time.perf_counter()
        try:
            runner = backend.prepare(ctx)
        except Unavailable as error:
            report["unavailable"].append({"backend": backend.name, "reason": str(error)})
            log(f"  {backend.name:26s} unavailable: {error}")
            continue
        report["backends"][backend.name] = {"summary": backend.summary, "notes": runner.notes, "prepare_s": round(time.perf_counter() - began, 2)}
        for (batch, size), case in inputs.items():
            try:
                result, output = run_case(runner, backend, case, timer, rss)
            except Exception as error:  # an engine without this shape, an op a provider lacks...
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                report["unavailable"].append({"backend": backend.name, "reason": f"failed at batch {batch}, LR {size}: {first_line}"})
                log(f"  {backend.name:26s} failed at batch {batch}, LR {size}: {first_line}")
                continue
            if backend.name == REFERENCE:
                references[(batch, size)] = output
            reference = references.get((batch, size))
            comparable = reference is not None and not backend.name.startswith("upstream-resshift")
            result["quality"] = {
                "psnr_db": psnr(output, reference) if comparable else None,
                "lpips": lpips_distance(lpips, output, reference) if comparable else None,
            }
            report["results"].append({"backend": backend.name, "batch": batch, "lr_size": size, **result})
            e2e = result["end_to_end"]
            log(f"  {backend.name:26s} batch {batch} LR {size}: end-to-end p50 {e2e['p50_ms']:.1f} ms, "
                f"{e2e['images_per_s']:.2f} img/s, PSNR {result['quality']['psnr_db'] or float('nan'):.1f} dB")
        del runner
        gc.collect()
    _speedups(report)
    write_report(report, out_dir)
    return report


def _speedups(report: dict) -> None:
    """End-to-end speed-up of every result over the upstream one-step procedure (same case)."""
    base = {(r["batch"], r["lr_size"]): r["end_to_end"]["p50_ms"] for r in report["results"] if r["backend"] == "upstream-rsd-1step"}
    multi = {(r["batch"], r["lr_size"]): r["end_to_end"]["p50_ms"] for r in report["results"] if r["backend"] == "upstream-resshift"}
    for r in report["results"]:
        key = (r["batch"], r["lr_size"])
        r["speedup_vs_upstream_rsd"] = base[key] / r["end_to_end"]["p50_ms"] if key in base else None
        r["speedup_vs_upstream_resshift"] = multi[key] / r["end_to_end"]["p50_ms"] if key in multi else None


# --- reports ----------------------------------------------------------------------------------


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# rsd-bench",
        "",
        f"Device: {env['device']}; {', '.join(f'{k} {v}' for k, v in env['versions'].items())}; "
        f"torch threads {env['torch_threads']}; load average at start {', '.join(f'{v:.1f}' for v in env['load_average'])}.",
        f"Model: {report['model']}.",
        f"Latency after {report['timer']['warmup']} warm-up call(s), {report['timer']['min_iters']}-{report['timer']['max_iters']} timed calls per number. "
        f"PSNR: {report['quality_metrics']['psnr']}. LPIPS: {report['quality_metrics']['lpips']}.",
        "",
        "| backend | batch | LR | end-to-end p50 / p90 / p99 ms | img/s | encoder p50 | generator p50 | decoder p50 | peak GPU MiB | peak RSS MiB | PSNR dB | LPIPS | x upstream RSD | x upstream ResShift |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        e2e, st, mem, q = r["end_to_end"], r["stages"], r["memory"], r["quality"]
        gpu = mem.get("peak_gpu_allocated_mib", mem.get("gpu_in_use_mib"))
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['lr_size']} | {_fmt(e2e['p50_ms'])} / {_fmt(e2e['p90_ms'])} / {_fmt(e2e['p99_ms'])} | "
            f"{_fmt(e2e['images_per_s'], 2)} | " + " | ".join(_fmt(st[s]["p50_ms"]) if s in st else "-" for s in CHAINED_STAGES)
            + f" | {_fmt(gpu)} | {_fmt(mem['peak_rss_mib'], 0)} | {_fmt(q['psnr_db'])} | {_fmt(q['lpips'], 3)} | "
            f"{_fmt(r['speedup_vs_upstream_rsd'], 2)} | {_fmt(r['speedup_vs_upstream_resshift'], 2)} |"
        )
    if report["unavailable"]:
        lines += ["", "Not run:", ""] + [f"- `{u['backend']}`: {u['reason']}" for u in report["unavailable"]]
    notes = [f"- `{name}`: {b['summary']}" + (f" ({b['notes']})" if b["notes"] else "") for name, b in report["backends"].items()]
    return "\n".join(lines + ["", "Backends:", ""] + notes) + "\n"


def plot(report: dict, path: Path) -> None:
    """One panel per LR size: for each batch size a group of bars, one per backend, stacked
    encoder / generator / decoder p50, with the end-to-end p50 as a black tick. The y axis is
    linear and capped at 1.2x the slowest one-step backend; taller bars (the multi-step chain)
    are cut and carry their value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, batches = report["grid"]["lr_size"], report["grid"]["batch"]
    names = list(report["backends"])
    colors = {"encoder": "#4C72B0", "generator": "#DD8452", "decoder": "#55A868"}
    one_step = [r["end_to_end"]["p50_ms"] for r in report["results"] if r["backend"] != "upstream-resshift"]
    cap = 1.2 * max(one_step) if one_step else None
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(6.0, 0.45 * len(names) * len(batches) + 2), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        ticks, labels = [], []
        for group, batch in enumerate(batches):
            for index, name in enumerate(names):
                row = next((r for r in report["results"] if r["backend"] == name and r["lr_size"] == size and r["batch"] == batch), None)
                if row is None:
                    continue
                x = group * (len(names) + 1) + index
                bottom = 0.0
                for stage in CHAINED_STAGES:
                    height = row["stages"][stage]["p50_ms"] if stage in row["stages"] else 0.0
                    ax.bar(x, height, 0.8, bottom=bottom, color=colors[stage], label=stage if (x, size) == (0, sizes[0]) else None)
                    bottom += height
                e2e = row["end_to_end"]["p50_ms"]
                ax.plot([x - 0.4, x + 0.4], [e2e, e2e], "k-", linewidth=2, label="end to end" if (x, size) == (0, sizes[0]) else None)
                if cap and max(e2e, bottom) > cap:
                    ax.text(x, cap * 0.98, f"{max(e2e, bottom) / 1000:.1f} s", ha="center", va="top", fontsize=7, rotation=90, color="white")
                ticks.append(x)
                labels.append(f"{name}  b{batch}")
        ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
        if cap:
            ax.set_ylim(0, cap)
        ax.set_ylabel("p50 latency per batch, ms")
        ax.set_title(f"LR {size}x{size} -> {4 * size}x{4 * size}", fontsize=10)
    fig.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"rsd-bench: {report['environment']['device']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(out_dir / "bench.md") as tmp:
        tmp.write_text(markdown(report))
    plot(report, out_dir / "bench.png")


# --- command line -----------------------------------------------------------------------------


_TEACHERS = {"rsd-x4": "resshift-x4", "sinsr-x4": "resshift-x4", "tiny-rsd": "tiny", "resshift-x4": "resshift-x4", "tiny": "tiny"}
BUNDLED_TEACHER = "demo-teacher"  # the 15-step teacher the bundled demo student was distilled from


def _models(args) -> tuple[SRPipeline, SRPipeline | None]:
    """The benchmarked model and the teacher for the multi-step upstream reference."""
    from rsd_deploy.checkpoints import BUNDLED_DIR, build_pipeline, default_pipeline, load_pipeline

    if args.checkpoint:
        pipe = load_pipeline(args.checkpoint, args.codec)
    elif args.preset:
        pipe = build_pipeline(args.preset)
    else:
        pipe = default_pipeline()
    if args.teacher:
        codec = args.codec or (args.checkpoint / "codec.safetensors" if args.checkpoint and args.checkpoint.is_dir() else None)
        return pipe, load_pipeline(args.teacher, codec)
    if args.preset in _TEACHERS:
        return pipe, build_pipeline(_TEACHERS[args.preset])
    if not args.checkpoint and not args.preset and (BUNDLED_DIR / BUNDLED_TEACHER / "unet.safetensors").is_file():
        return pipe, load_pipeline(BUNDLED_DIR / BUNDLED_TEACHER)
    return pipe, None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsd-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", help="an architecture with seeded random weights (tiny-rsd, rsd-x4, ...) instead of a checkpoint")
    parser.add_argument("--checkpoint", type=Path, help="model to benchmark: a directory from save_pipeline or a UNet file (+ --codec); "
                        "default: the bundled demo student (and its teacher for the multi-step reference)")
    parser.add_argument("--codec", type=Path, help="codec checkpoint, when --checkpoint is a UNet file")
    parser.add_argument("--teacher", type=Path, help="the ResShift teacher checkpoint for the multi-step upstream reference "
                        "(default: the bundled demo teacher, or the preset's teacher architecture with random weights)")
    parser.add_argument("--batch", type=_int_list, default=[1, 2], help="batch sizes (default 1,2)")
    parser.add_argument("--lr-size", type=_int_list, default=[64], help="LR sizes, multiples of 64 (default 64)")
    parser.add_argument("--backends", help="comma-separated subset (default: every backend but the slow-to-prepare ones); see --list")
    parser.add_argument("--list", action="store_true", help="list the backends and exit")
    parser.add_argument("--onnx-dir", type=Path, help="rsd-export output with <stage>.fp32.onnx (default: export into OUT/onnx)")
    parser.add_argument("--plugin-onnx-dir", type=Path, help="rsd-export --attention plugin --precision fp32 output (TensorRT with the fused kernel)")
    parser.add_argument("--engine-dir", type=Path, help="TensorRT engine cache (default ONNX_DIR/engines, as rsd-export)")
    parser.add_argument("--iters", type=int, default=20, help="most timed calls per number (default 20)")
    parser.add_argument("--min-iters", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=1.0, help="stop timing a number after this many seconds once --min-iters are done")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.list:
        for b in backends(device):
            print(f"{b.name:26s} {b.summary}" + ("" if b.default else f"  [not default: {b.not_default_reason}]"))
        return 0
    bad_sizes = [s for s in args.lr_size if s % 64]
    if bad_sizes:
        parser.error(f"--lr-size values must be multiples of 64, got {bad_sizes}")
    from rsd_deploy.checkpoints import CheckpointError

    try:
        pipe, teacher = _models(args)
    except (CheckpointError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    selected = [b for b in args.backends.split(",") if b] if args.backends else None
    timer = Timer(device, args.warmup, args.min_iters, args.iters, args.budget_s)
    print(f"rsd-bench: {pipe.description}; device {device}; batch {args.batch}; LR {args.lr_size}", flush=True)
    try:
        run_bench(pipe, args.out, args.batch, args.lr_size, selected=selected, teacher=teacher, onnx_dir=args.onnx_dir,
                  engine_dir=args.engine_dir, device=device, timer=timer, log=lambda line: print(line, flush=True),
                  plugin_onnx_dir=args.plugin_onnx_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'bench.json'}, {args.out / 'bench.md'}, {args.out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
