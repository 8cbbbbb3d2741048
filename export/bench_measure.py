"""The measuring half of ``rsd-bench``: every selected backend x batch x LR size on the same inputs
(:mod:`.bench_inputs`), per stage and end to end, into a :class:`BenchReport`.

Per case: latency (:class:`rsd_deploy.timing.Timer`: CUDA events on a GPU, ``perf_counter`` on
the CPU) of each stage alone and of the whole chain (``Backend.end_to_end``: the runner's fused
``pipeline`` stage where it has one, else :func:`rsd_deploy.chain.upscale` over its stages; an
upstream procedure's own whole-image call), images/s, memory (what the runner's allocator saw, GPU
memory in use, process RSS sampled during the case) and the quality of the end-to-end output
against the reference backend's on the same photos and noise (PSNR; LPIPS, whose ``kind`` says
when it runs on a random AlexNet backbone). Backends that cannot run are listed with the reason.
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rsd_deploy import chain
from rsd_deploy.environment import environment
from rsd_deploy.errors import one_line
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.timing import PeakRSS, Timer

from .bench_backends import PROCEDURE, Backend, BenchContext, backends, select
from .bench_inputs import CaseInputs, case_inputs
from .bench_tiled import TiledResult, large_photo, measure_tiled
from .runners import Runner, RunnerUnavailable
from .stages import FUSED, ShapeRange


class NothingRan(RuntimeError):
    """No selected backend could run here; the message lists each one's reason on one line."""


@dataclass
class CaseResult:
    backend: str
    batch: int
    lr_size: int
    end_to_end: dict  # Timing fields + images_per_s
    stages: dict[str, dict]
    memory: dict[str, float]
    quality: dict[str, float | None] = field(default_factory=dict)  # psnr_db, lpips against the reference
    speedup_vs: dict[str, float] = field(default_factory=dict)  # upstream backend -> its p50 / this p50


@dataclass
class BenchReport:
    environment: dict
    model: str
    grid: dict
    timer: dict
    quality_metrics: dict
    backends: dict[str, dict] = field(default_factory=dict)  # what ran: properties, notes, how end to end was measured
    results: list[CaseResult] = field(default_factory=list)
    unavailable: list[dict] = field(default_factory=list)  # {"backend", "reason"}
    large_image: list[TiledResult] = field(default_factory=list)  # --large-image: one row per backend x tile batch

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BenchOptions:
    batches: tuple[int, ...] = (1, 2)
    sizes: tuple[int, ...] = (64,)  # LR sides, multiples of 64
    backends: tuple[str, ...] = ("default",)  # names or groups, see bench_backends.select
    device: str | None = None  # default: cuda when available
    onnx_dir: Path | None = None
    plugin_onnx_dir: Path | None = None
    engine_dir: Path | None = None
    upstream_src: tuple[Path, ...] = ()  # official checkouts: the upstream backends run their code
    work_dir: Path = Path("bench")  # graphs exported here (onnx/) when no onnx_dir
    seed: int = 0
    warmup: int = 1
    min_iters: int = 3
    max_iters: int = 20
    budget_s: float = 1.0
    large_image: int | None = None  # LR side of the large-image run (bench_tiled), none by default
    tile: int = 256
    tile_batches: tuple[int, ...] = (1, 4)

    def shape_range(self) -> ShapeRange:
        """The grid's shapes, and the large-image run's tiles when it has one."""
        sizes, batches = self.sizes, self.batches
        if self.large_image:
            sizes, batches = (*sizes, self.tile), (*batches, *self.tile_batches)
        return ShapeRange(batch=(1, min(self.batches), max(batches)), height=(min(sizes), min(self.sizes), max(sizes)),
                          width=(min(sizes), min(self.sizes), max(sizes)))


def _mib(value: float) -> float:
    return round(value / 2**20, 1)


def end_to_end(backend: Backend, runner: Runner, case: CaseInputs) -> tuple[Callable[[], torch.Tensor], str]:
    """The end-to-end call for ``case`` (see ``Backend.end_to_end``) and what it is."""
    if backend.end_to_end == PROCEDURE:
        return lambda: runner.upscale(case.lr), PROCEDURE
    stage = runner.stage_fn()
    if FUSED in runner.stages:
        return lambda: stage(FUSED, case.fused_feeds), f"the fused {FUSED} stage"
    return (lambda: chain.upscale(stage, case.lr, case.eps, case.noise_map, case.prior_scale, case.scale),
            f"chain.upscale over {', '.join(runner.stages)}")


def run_case(backend: Backend, runner: Runner, case: CaseInputs, timer: Timer, rss: PeakRSS) -> tuple[CaseResult, torch.Tensor, str]:
    """Time each stage and the whole chain once per case; the end-to-end output (float32, CPU)."""
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.synchronize()
    runner.reset_memory()
    free_before = torch.cuda.mem_get_info()[0] if on_gpu else 0
    stages = {}
    with rss.track():
        for stage in backend.stages:
            feeds = case.feeds(stage)
            timing, _ = timer.measure(lambda: runner.run(stage.name, feeds))
            stages[stage.name] = timing.to_json()
        call, how = end_to_end(backend, runner, case)
        timing, output = timer.measure(call)
    memory = {"peak_rss_mib": _mib(rss.peak), "rss_growth_mib": _mib(rss.peak - rss.start)}
    memory.update({name: round(value, 1) for name, value in runner.memory().items()})
    if on_gpu:
        memory["gpu_growth_mib"] = _mib(free_before - torch.cuda.mem_get_info()[0])
    e2e = {**timing.to_json(), "images_per_s": case.batch * 1000 / timing.p50_ms}
    result = CaseResult(backend.name, case.batch, case.lr.shape[-1], e2e, stages, memory)
    return result, output.float().cpu(), how


def _speedups(report: BenchReport) -> None:
    """End-to-end speed-up of every result over each upstream procedure on the same case."""
    anchors = [name for name, props in report.backends.items() if props["upstream"]]
    p50 = {(r.backend, r.batch, r.lr_size): r.end_to_end["p50_ms"] for r in report.results}
    for r in report.results:
        r.speedup_vs = {name: p50[(name, r.batch, r.lr_size)] / r.end_to_end["p50_ms"] for name in anchors if (name, r.batch, r.lr_size) in p50}


class Quality:
    """PSNR and LPIPS of end-to-end outputs against the reference backend's output on the same case.
    The LPIPS network is built at the first comparison (nothing to build when nothing runs)."""

    def __init__(self):
        self.references: dict[tuple[int, int], torch.Tensor] = {}
        self.lpips = None

    @property
    def lpips_kind(self) -> str:
        return self.lpips.kind if self.lpips is not None else "not computed (no output was compared)"

    def compare(self, backend: Backend, key: tuple[int, int], output: torch.Tensor, own_noise: bool = False) -> dict[str, float | None]:
        """``own_noise``: the runner drew its own noise (the official samplers), so its images are not compared."""
        from rsd_deploy.metrics import LPIPS, lpips_distance, psnr

        if backend.reference:
            self.references[key] = output
        expected = self.references.get(key) if backend.same_model and not own_noise else None
        if expected is None:
            return {"psnr_db": None, "lpips": None}
        if self.lpips is None:
            self.lpips = LPIPS("auto")
        return {"psnr_db": psnr(output, expected), "lpips": lpips_distance(self.lpips, output, expected)}


def run_bench(pipe: SRPipeline, options: BenchOptions, teacher: SRPipeline | None = None, log: Callable[[str], None] = print) -> BenchReport:
    """Measure the grid (see the module docstring); raises :class:`NothingRan` when no selected
    backend ran a single case. The inputs are made when the first backend is ready."""
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    registry = backends(device)
    selected, skipped = select(registry, list(options.backends))
    timer = Timer(device, options.warmup, options.min_iters, options.max_iters, options.budget_s)
    ctx = BenchContext(pipe.eval(), teacher, device, options.shape_range(), options.work_dir, options.onnx_dir,
                       options.plugin_onnx_dir, options.engine_dir, options.seed, log, options.upstream_src)
    reference_name = next((b.name for b in registry if b.reference), None)
    report = BenchReport(environment(device), pipe.description, {"batch": list(options.batches), "lr_size": list(options.sizes)},
                         timer.settings(), {"psnr": f"dB vs {reference_name} end-to-end output"},
                         unavailable=[{"backend": name, "reason": reason} for name, reason in skipped.items()])
    cases: list[CaseInputs] = []
    quality, rss = Quality(), PeakRSS()
    failed: list[str] = []  # why each selected backend did not run, for NothingRan
    for backend in selected:  # registry order: the reference first
        began = time.perf_counter()
        try:
            if backend.needs_gpu and not torch.cuda.is_available():
                raise RunnerUnavailable("needs a CUDA GPU (none visible to torch)")
            runner = backend.make(ctx)
        except RunnerUnavailable as error:
            report.unavailable.append({"backend": backend.name, "reason": str(error)})
            failed.append(f"{backend.name}: {error}")
            log(f"  {backend.name:24s} unavailable: {error}")
            continue
        prepare_s = round(time.perf_counter() - began, 2)
        if not cases:
            reference = copy.deepcopy(pipe).float().cpu()
            cases = [case_inputs(reference, b, s, options.seed) for b in options.batches for s in options.sizes]
        how = None
        for case in cases:
            key = (case.batch, case.lr.shape[-1])
            try:
                result, output, how = run_case(backend, runner, case, timer, rss)
            except Exception as error:  # an engine without this shape, an op a provider lacks...
                first_line = one_line((str(error).strip().splitlines() or [type(error).__name__])[0])
                report.unavailable.append({"backend": backend.name, "reason": f"failed at batch {key[0]}, LR {key[1]}: {first_line}"})
                failed.append(f"{backend.name}: {first_line}")
                log(f"  {backend.name:24s} failed at batch {key[0]}, LR {key[1]}: {first_line}")
                continue
            result.quality = quality.compare(backend, key, output, getattr(runner, "own_noise", False))
            report.results.append(result)
            psnr_db = result.quality["psnr_db"]
            log(f"  {backend.name:24s} batch {key[0]} LR {key[1]}: end-to-end p50 {result.end_to_end['p50_ms']:.1f} ms, "
                f"{result.end_to_end['images_per_s']:.2f} img/s, PSNR {'-' if psnr_db is None else f'{psnr_db:.1f} dB'}")
        if how is not None and options.large_image and not backend.upstream:
            model = pipe.tile_model(stage=runner.stage_fn(), device=runner.device)
            rows = measure_tiled(backend.name, model, large_photo(options.large_image), options.tile, options.tile_batches, options.seed)
            report.large_image += rows
            log("  " + "; ".join(f"{backend.name} large image, tile batch {r.tile_batch}: {r.tiles_per_s:.2f} tiles/s" for r in rows))
        if how is not None:
            report.backends[backend.name] = {**backend.properties(), "notes": runner.notes, "prepare_s": prepare_s, "end_to_end": how,
                                             "own_noise": getattr(runner, "own_noise", False)}
        runner.close()
        del runner
        gc.collect()
    if not report.results:
        raise NothingRan("nothing could run: " + "; ".join(failed or ["no backend selected"]))
    report.quality_metrics["lpips"] = quality.lpips_kind
    _speedups(report)
    return report
