"""TensorRT engines from the exported graphs: TensorRT 10/11 and TensorRT for RTX, one code path.

Two flavours of the same builder / parser / runtime API (:data:`FLAVOURS`):

- ``tensorrt`` (module ``tensorrt``, 10.x and 11.x): data-centre GPUs, Hopper included. It builds
  for the GPU it runs on, so building needs that GPU.
- ``tensorrt-rtx`` (module ``tensorrt_rtx``): GeForce / RTX PRO GPUs, Turing to Blackwell. It
  builds ahead of time for chosen compute capabilities, on any machine (no GPU needed), and the
  engine is specialised for the actual GPU when it first runs; a runtime cache file keeps that work.

Common to both:

- Networks are strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: the required
  mode from TensorRT 10.12, always on in 11 and in TensorRT-RTX): precision comes from the ONNX
  file (fp16 casts, INT8 Q/DQ); no ``BuilderFlag.FP16/INT8``, no calibrators.
- One optimization profile per engine, from the stage description's shape range;
  ``builder_optimization_level`` and a timing cache that persists between builds.
- An engine cache: the file name holds a key over the ONNX file's sha256, precision, profile,
  optimization level, flavour, its version and the target (GPU name, or the compute
  capabilities of an ahead-of-time build), so a change of any of them rebuilds and a stale engine
  is never loaded. Beside each plan, ``<plan>.json`` records how it was built (layers, warnings,
  build time), so a cached engine reports the same as a fresh one.
- Every build returns a :class:`BuildRecord` with TensorRT's own errors and its warning count.
- :class:`EngineRunner`: torch-owned CUDA buffers, ``set_input_shape`` / ``set_tensor_address``
  / ``execute_async_v3``, CUDA-graph replay for static shapes (needs a GPU).

Both modules are imported lazily; :func:`resolve_target` says which flavour builds here and why
another cannot, and :func:`trtexec_command` / :func:`polygraphy_command` give the TensorRT
10/11 command lines that build and check the same engine elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from rsd_deploy.atomic import atomic_path

from .precisions import PRECISIONS
from .stages import ShapeRange, StageSpec

ENGINE_CHOICES = ("auto", "tensorrt", "tensorrt-rtx", "none")
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


class TensorRTUnavailable(RuntimeError):
    """The requested TensorRT flavour cannot build or run here; the message says why."""


# --- flavours and targets ---------------------------------------------------------------------


@dataclass(frozen=True)
class Flavour:
    name: str  # as on the command line
    module: str  # Python module
    title: str
    pip: str  # what to install


FLAVOURS = {
    "tensorrt": Flavour("tensorrt", "tensorrt", "TensorRT", "tensorrt (from NVIDIA's index, on a machine with a GPU)"),
    "tensorrt-rtx": Flavour("tensorrt-rtx", "tensorrt_rtx", "TensorRT for RTX", "tensorrt-rtx (the project's `rtx` extra)"),
}

# TensorRT-RTX ahead-of-time targets, as its ComputeCapability enum names them, and the GPUs of each.
COMPUTE_CAPABILITIES = {
    "sm75": "Turing: GeForce RTX 20, Quadro RTX, T4",
    "sm80": "Ampere data-centre: A100, A30",
    "sm86": "Ampere: GeForce RTX 30, RTX A-series, A10, A40",
    "sm89": "Ada: GeForce RTX 40, RTX Ada, L4, L40",
    "sm120": "Blackwell: GeForce RTX 50, RTX PRO Blackwell",
    "sm121": "Blackwell GB10: DGX Spark",
}
# RTX 30, 40 and 50 series and their workstation cards. Turing (sm75) is opt-in: TensorRT-RTX
# 1.7 cannot compile an fp32 GEMM for it, and every graph here keeps the time embedding in fp32.
DEFAULT_COMPUTE_CAPABILITIES = ("sm86", "sm89", "sm120")


def parse_compute_capabilities(text: str) -> tuple[str, ...]:
    """``"sm86,sm89"`` (or ``"86,8.9"``) -> ``("sm86", "sm89")``, checked against the known list."""
    names = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        name = item if item.startswith("sm") else "sm" + item.replace(".", "")
        if name not in COMPUTE_CAPABILITIES:
            raise ValueError(f"--compute-capability: unknown {item!r}; choose from {','.join(COMPUTE_CAPABILITIES)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("--compute-capability: give at least one, e.g. sm89")
    return tuple(names)


def import_flavour(flavour: Flavour):
    """The flavour's module, or :class:`TensorRTUnavailable` saying what is missing."""
    try:
        trt = importlib.import_module(flavour.module)
    except Exception as error:  # ImportError, or a PyPI stub package that raises on import
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TensorRTUnavailable(f"{flavour.title} is not installed ({detail}); pip install {flavour.pip}") from None
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable(f"{flavour.module} {getattr(trt, '__version__', '?')} has no builder (a lean runtime or a stub package)")
    return trt


def local_gpu() -> str | None:
    """The name of the CUDA GPU torch sees, if any."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


@dataclass(frozen=True)
class EngineTarget:
    """What an engine is built for: a flavour, its version, and either the local GPU or (TensorRT
    for RTX ahead of time) a list of compute capabilities."""

    flavour: Flavour
    version: str
    gpu: str | None  # the local GPU the engine is built on / for
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX ahead-of-time targets

    @property
    def label(self) -> str:
        """Short target text: ``TensorRT for RTX 1.7.1 sm86,sm89`` or ``TensorRT 10.13 on NVIDIA H100``."""
        where = ",".join(self.compute_capabilities) if self.compute_capabilities else f"on {self.gpu}"
        return f"{self.flavour.title} {self.version} {where}"

    def runs_on(self) -> str:
        """Where engines of this target can run, in words."""
        if self.compute_capabilities:
            families = "; ".join(f"{cc} ({COMPUTE_CAPABILITIES[cc]})" for cc in self.compute_capabilities)
            return f"GPUs of compute capability {families}, with TensorRT for RTX {self.version} (specialised on first run)"
        if self.flavour.name == "tensorrt-rtx":
            return f"{self.gpu} and GPUs of its compute capability, with TensorRT for RTX {self.version}"
        return f"{self.gpu} only (same GPU model), with TensorRT {self.version}"

    def cache_fields(self) -> dict:
        return {"flavour": self.flavour.name, "version": self.version, "gpu": self.gpu or "",
                "compute_capabilities": list(self.compute_capabilities)}


def resolve_target(choice: str, compute_capabilities: tuple[str, ...] | None = None,
                   default_capabilities: tuple[str, ...] = DEFAULT_COMPUTE_CAPABILITIES) -> tuple[EngineTarget | None, str]:
    """(target, reason) for ``--engine choice``: ``auto`` takes TensorRT 10/11 where it can build
    (installed, and a GPU), else TensorRT for RTX where installed, else none. TensorRT for RTX
    builds for ``compute_capabilities`` when given, else for the local GPU, else for
    ``default_capabilities``. An explicit flavour that cannot build here raises
    :class:`TensorRTUnavailable`. ``reason`` says why, in words."""
    if choice not in ENGINE_CHOICES:
        raise ValueError(f"--engine: expected one of {', '.join(ENGINE_CHOICES)}, got {choice!r}")
    if choice == "none":
        return None, "engines not requested (--engine none)"
    gpu = local_gpu()
    reasons = []
    for name in ("tensorrt", "tensorrt-rtx") if choice == "auto" else (choice,):
        flavour = FLAVOURS[name]
        try:
            trt = import_flavour(flavour)
            if name == "tensorrt":
                if compute_capabilities:
                    raise TensorRTUnavailable("TensorRT 10/11 builds for the GPU it runs on; --compute-capability is for --engine tensorrt-rtx")
                if gpu is None:
                    raise TensorRTUnavailable("TensorRT 10/11 builds only on the GPU it targets, and no CUDA GPU is visible")
                return EngineTarget(flavour, trt.__version__, gpu), f"{flavour.title} {trt.__version__} on {gpu}"
            if compute_capabilities or gpu is None:
                targets = compute_capabilities or default_capabilities
                how = "" if compute_capabilities else " (the default; no GPU here)"
                return EngineTarget(flavour, trt.__version__, None, targets), f"{flavour.title} {trt.__version__}, ahead of time for {','.join(targets)}{how}"
            return EngineTarget(flavour, trt.__version__, gpu), f"{flavour.title} {trt.__version__} for the local {gpu}"
        except TensorRTUnavailable as error:
            if choice != "auto":
                raise
            reasons.append(str(error))
    return None, "no TensorRT flavour can build here: " + "; ".join(reasons)


# --- engine cache ---------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_cache_key(onnx_sha256: str, precision: str, profile: Profile, target: dict, opt_level: int) -> str:
    """A short hex key that changes when anything the engine depends on changes (``target``:
    :meth:`EngineTarget.cache_fields`)."""
    fields = {
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "profile": {name: [list(shape) for shape in shapes] for name, shapes in sorted(profile.items())},
        "target": target,
        "builder_optimization_level": opt_level,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def engine_file_name(stage: str, precision: str, key: str) -> str:
    return f"{stage}.{precision}.{key}.plan"


# --- commands for machines with TensorRT 10/11 ----------------------------------------------


def _shape_arg(profile: Profile, which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[which])}" for name, shapes in profile.items())


def trtexec_command(onnx_path: Path, engine_path: Path, profile: Profile, opt_level: int, timing_cache: Path | None = None) -> str:
    """The trtexec line that builds the same engine (strongly typed: no --fp16/--int8, which
    trtexec 11 no longer has; the precision is in the ONNX file)."""
    parts = [
        "trtexec",
        f"--onnx={onnx_path}",
        "--stronglyTyped",
        f"--minShapes={_shape_arg(profile, 0)}",
        f"--optShapes={_shape_arg(profile, 1)}",
        f"--maxShapes={_shape_arg(profile, 2)}",
        f"--builderOptimizationLevel={opt_level}",
        f"--saveEngine={engine_path}",
    ]
    if timing_cache:
        parts.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(parts)


def polygraphy_command(onnx_path: Path, profile: Profile, opt_level: int) -> str:
    """The polygraphy line that builds the engine and compares it with ONNX Runtime."""
    parts = ["polygraphy", "run", str(onnx_path), "--trt", "--onnxrt", "--strongly-typed", f"--builder-optimization-level={opt_level}"]
    for flag, which in (("--trt-min-shapes", 0), ("--trt-opt-shapes", 1), ("--trt-max-shapes", 2)):
        parts += [flag, *(f"{name}:[{','.join(str(d) for d in shapes[which])}]" for name, shapes in profile.items())]
    parts += ["--input-shapes", *(f"{name}:[{','.join(str(d) for d in shapes[1])}]" for name, shapes in profile.items())]
    parts += ["--atol", "1e-3", "--rtol", "1e-3", "--check-error-stat", "median"]
    return shlex.join(parts)


# --- building ---------------------------------------------------------------------------------


@dataclass
class BuildRecord:
    """One engine: built (now or earlier) or failed with TensorRT's own error."""

    stage: str
    precision: str
    flavour: str  # FLAVOURS key: which runtime loads the plan
    target: str  # EngineTarget.label
    runs_on: str
    engine: str | None = None
    built_now: bool = False
    error: str | None = None
    build_seconds: float | None = None
    bytes: int | None = None
    network_layers: int | None = None
    warnings: int | None = None
    warning_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _logger(trt):
    class CollectingLogger(trt.ILogger):
        """Prints errors as TensorRT does and keeps them, and the warnings, for the report."""

        def __init__(self):
            super().__init__()
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, message):
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(message.strip())
            elif severity == trt.ILogger.WARNING:
                self.warnings.append(message.strip())

    return CollectingLogger()


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    target: EngineTarget,
    opt_level: int = 3,
    timing_cache: Path | None = None,
    record: BuildRecord | None = None,
) -> BuildRecord:
    """Parse ``onnx_path`` into a strongly typed network and build it for ``target`` with one
    optimization profile; the plan (and the updated timing cache) are written atomically. A
    failure is returned in the record (``error``: TensorRT's own messages), not raised."""
    trt = import_flavour(target.flavour)
    record = record or BuildRecord("", "", target.flavour.name, target.label, target.runs_on())
    logger = _logger(trt)
    started = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        record.error = "ONNX parser: " + "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        record.build_seconds = round(time.perf_counter() - started, 2)
        return record
    record.network_layers = network.num_layers
    config = builder.create_builder_config()
    config.builder_optimization_level = opt_level
    if target.compute_capabilities:
        config.num_compute_capabilities = len(target.compute_capabilities)
        for index, name in enumerate(target.compute_capabilities):
            config.set_compute_capability(getattr(trt.ComputeCapability, name.upper()), index)
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.items():
        optimization_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization_profile)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    record.build_seconds = round(time.perf_counter() - started, 2)
    record.warnings = len(logger.warnings)
    record.warning_samples = logger.warnings[:5]
    if serialized is None:
        record.error = " | ".join(logger.errors) or "the build returned no engine (no error was logged)"
        return record
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    record.engine, record.bytes, record.built_now = str(engine_path), engine_path.stat().st_size, True
    with atomic_path(_record_path(engine_path)) as tmp:
        tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    return record


def _record_path(engine_path: Path) -> Path:
    return engine_path.with_suffix(".plan.json")


def cached_engine(
    onnx_path: Path,
    stage: StageSpec,
    precision: str,
    shapes: ShapeRange,
    cache_dir: Path,
    target: EngineTarget,
    opt_level: int | None = None,
) -> BuildRecord:
    """The engine of ``onnx_path`` for ``target`` from the cache, built now if it has none."""
    from .onnx_export import read_metadata

    record = BuildRecord(stage.name, precision, target.flavour.name, target.label, target.runs_on())
    if read_metadata(onnx_path).get("attention") == "plugin":
        from rsd_deploy.kernels import trt_plugin

        try:
            trt_plugin.register(target.flavour.module)  # the parser, and later the runtime, find the custom op by name
        except ImportError as error:
            record.error = f"window-attention plugin: {error}"
            return record
    opt_level = PRECISIONS[precision].opt_level if opt_level is None else opt_level
    profile = shapes.profile(stage)
    key = engine_cache_key(file_sha256(onnx_path), precision, profile, target.cache_fields(), opt_level)
    path = Path(cache_dir) / engine_file_name(stage.name, precision, key)
    if path.is_file() and _record_path(path).is_file():
        saved = json.loads(_record_path(path).read_text())
        return BuildRecord(**{**saved, "built_now": False, "engine": str(path)})
    # TensorRT-RTX times nothing at build time (kernels are chosen when the engine first runs)
    timing_cache = None if target.flavour.name == "tensorrt-rtx" else Path(cache_dir) / "timing.cache"
    return build_engine(onnx_path, path, profile, target, opt_level, timing_cache, record)


# --- running ----------------------------------------------------------------------------------


class EngineRunner:
    """Runs a plan with torch-owned CUDA buffers; ``cuda_graph=True`` captures one CUDA graph
    per input shape set (static shapes) and replays it. TensorRT-RTX engines keep their
    just-in-time specialisation in ``<plan>.runtime-cache`` beside the plan."""

    def __init__(self, engine_path: str | Path, flavour: Flavour, cuda_graph: bool = False):
        import torch

        if not torch.cuda.is_available():
            raise TensorRTUnavailable(f"{engine_path}: running a {flavour.title} engine needs a CUDA GPU")
        trt = import_flavour(flavour)
        self.torch = torch
        self.runtime_cache_path = Path(f"{engine_path}.runtime-cache")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(f"{engine_path}: not an engine for {flavour.title} {trt.__version__} on this GPU (rebuild it)")
        self.runtime_cache = None
        if hasattr(self.engine, "create_runtime_config"):  # TensorRT-RTX
            config = self.engine.create_runtime_config()
            self.runtime_cache = config.create_runtime_cache()
            if self.runtime_cache_path.is_file():
                self.runtime_cache.deserialize(self.runtime_cache_path.read_bytes())
            config.set_runtime_cache(self.runtime_cache)
            self.context = self.engine.create_execution_context(config)
        else:
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16, trt.int8: torch.int8,
                  trt.int32: torch.int32, trt.int64: torch.int64, trt.bool: torch.bool}
        self.dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in names}
        self.stream = torch.cuda.Stream()
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple] = {}  # input shapes -> (graph, static inputs, static outputs)

    def save_runtime_cache(self) -> None:
        """Keep TensorRT-RTX's just-in-time kernels for the next process (no-op for TensorRT)."""
        if self.runtime_cache is not None:
            with atomic_path(self.runtime_cache_path) as tmp:
                tmp.write_bytes(bytes(self.runtime_cache.serialize()))

    def _bind(self, feeds: dict) -> dict:
        torch = self.torch
        for name in self.inputs:
            tensor = feeds[name]
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def __call__(self, feeds: dict) -> dict:
        torch = self.torch
        feeds = {n: feeds[n].to(device="cuda", dtype=self.dtypes[n]).contiguous() for n in self.inputs}
        if not self.cuda_graph:
            outputs = self._bind(feeds)
            with torch.cuda.stream(self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
            self.stream.synchronize()
            return outputs
        key = tuple(tuple(feeds[n].shape) for n in self.inputs)
        if key not in self._graphs:
            static_in = {n: t.clone() for n, t in feeds.items()}
            static_out = self._bind(static_in)
            with torch.cuda.stream(self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)  # warm-up: lazy allocations happen outside capture
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        for name, tensor in feeds.items():
            static_in[name].copy_(tensor)
        graph.replay()
        torch.cuda.synchronize()
        return {n: t.clone() for n, t in static_out.items()}


def compare_with_onnxruntime(onnx_path: Path, engine_path: Path, flavour: Flavour, feeds: Iterable[dict], atol: float, rtol: float) -> dict:
    """Run the engine and ONNX Runtime (CPU) on the same feeds; passed when the median of
    ``|engine - onnxruntime| - rtol * |onnxruntime|`` over every output stays within ``atol``
    (Polygraphy's ``check_error_stat="median"`` criterion)."""
    import numpy as np

    from .parity import run_onnx

    runner = EngineRunner(engine_path, flavour)
    worst = 0.0
    for feed in feeds:
        expected = run_onnx(onnx_path, feed)
        actual = runner(feed)
        for name, want in zip(runner.outputs, expected):
            got = actual[name].float().cpu().numpy()
            worst = max(worst, float(np.median(np.abs(got - want) - rtol * np.abs(want))))
    runner.save_runtime_cache()
    return {"passed": worst <= atol, "median_excess_error": worst, "atol": atol, "rtol": rtol}
