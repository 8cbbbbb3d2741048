"""TensorRT engines from the exported graphs (TensorRT 10.x and 11.x APIs).

- Networks are created strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: the
  required mode from 10.12, always on and the flag ignored in 11): precision comes from the ONNX
  file (fp16 casts, INT8 Q/DQ). No ``BuilderFlag.FP16/INT8``, no calibrators: both are removed
  in TensorRT 11.
- One optimization profile per engine, from the stage description's shape range.
- ``builder_optimization_level`` and a timing cache file that persists between builds.
- An engine cache: the file name holds a key over the ONNX file's sha256, precision, profile,
  optimization level, TensorRT version and GPU name, so a change of any of them rebuilds and
  a stale engine is never loaded (:func:`engine_cache_key` is pure Python and tested here).
- :class:`EngineRunner`: torch-owned CUDA buffers, ``set_input_shape`` / ``set_tensor_address``
  / ``execute_async_v3``, and CUDA-graph replay for static shapes.
- :func:`compare_with_onnxruntime`: Polygraphy's Comparator, TrtRunner vs OnnxrtRunner.

``tensorrt`` is imported lazily; :func:`tensorrt_status` says why engines cannot be built here,
and :func:`trtexec_command` / :func:`polygraphy_command` give the exact commands that do it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Iterable

from rsd_deploy.atomic import atomic_path

from .stages import ShapeRange, StageSpec

DEFAULT_OPT_LEVEL = {"fp32": 3, "fp16": 3, "int8": 4}  # NVIDIA's diffusion demo builds INT8 at level 4
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


class TensorRTUnavailable(RuntimeError):
    pass


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): TensorRT importable with a builder library, and a CUDA GPU present."""
    try:
        import tensorrt as trt
    except Exception as error:  # ImportError, or a PyPI stub package that raises on import
        return False, f"TensorRT is not installed ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})"
    if not hasattr(trt, "Builder"):
        return False, f"tensorrt {getattr(trt, '__version__', '?')} has no builder (lean runtime or stub package)"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to PyTorch"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"


# --- engine cache ---------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_cache_key(onnx_sha256: str, precision: str, profile: Profile, trt_version: str, gpu_name: str, opt_level: int) -> str:
    """A short hex key that changes when anything the engine depends on changes."""
    fields = {
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "profile": {name: [list(shape) for shape in shapes] for name, shapes in sorted(profile.items())},
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "builder_optimization_level": opt_level,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def engine_file_name(stage: str, precision: str, key: str) -> str:
    return f"{stage}.{precision}.{key}.plan"


# --- commands for machines with TensorRT ------------------------------------------------------


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


def _trt():
    usable, reason = tensorrt_status()
    if not usable:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    return trt


def build_engine(onnx_path: Path, engine_path: Path, profile: Profile, opt_level: int = 3, timing_cache: Path | None = None) -> Path:
    """Parse ``onnx_path`` into a strongly typed network, build with one optimization profile,
    write the plan atomically (and the updated timing cache)."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse it: {errors}")
    config = builder.create_builder_config()
    config.builder_optimization_level = opt_level
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.items():
        optimization_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization_profile)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path


def cached_engine(
    onnx_path: Path, stage: StageSpec, precision: str, shapes: ShapeRange, cache_dir: Path, opt_level: int | None = None
) -> tuple[Path, bool]:
    """(engine path, whether it was built now): reuses an engine whose key matches."""
    trt = _trt()
    import torch

    from .onnx_export import read_metadata

    if read_metadata(onnx_path).get("attention") == "plugin":
        from rsd_deploy.kernels import trt_plugin

        trt_plugin.register()  # the parser, and later the runtime, find the custom op by name
    opt_level = DEFAULT_OPT_LEVEL[precision] if opt_level is None else opt_level
    profile = shapes.profile(stage)
    key = engine_cache_key(file_sha256(onnx_path), precision, profile, trt.__version__, torch.cuda.get_device_name(), opt_level)
    path = Path(cache_dir) / engine_file_name(stage.name, precision, key)
    if path.is_file():
        return path, False
    return build_engine(onnx_path, path, profile, opt_level, Path(cache_dir) / "timing.cache"), True


# --- running ----------------------------------------------------------------------------------


class EngineRunner:
    """Runs a plan with torch-owned CUDA buffers; ``cuda_graph=True`` captures one CUDA graph
    per input shape set (static shapes) and replays it."""

    def __init__(self, engine_path: str | Path, cuda_graph: bool = False):
        trt = _trt()
        import torch

        self.torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_path}: not an engine for TensorRT {trt.__version__} on this GPU (rebuild it)")
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


def compare_with_onnxruntime(onnx_path: Path, engine_path: Path, feeds: Iterable[dict], atol: float, rtol: float) -> dict:
    """Polygraphy: run the engine and ONNX Runtime (CPU EP) on the same feeds, compare outputs."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import CompareFunc, Comparator

    feeds = [{k: v.cpu().numpy() if hasattr(v, "cpu") else v for k, v in feed.items()} for feed in feeds]
    runners = [
        OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"])),
        TrtRunner(EngineFromBytes(Path(engine_path).read_bytes())),
    ]
    results = Comparator.run(runners, data_loader=feeds)
    accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol, check_error_stat="median"))
    return {"passed": bool(accuracy), "atol": atol, "rtol": rtol, "check_error_stat": "median"}
