"""What ``rsd-upscale`` runs on: one registry entry per ``--backend``, and ``--server``.

``torch`` runs the model the model options name (any ``--steps``, ``--dtype``, ``--attention``).
Every other backend runs the graphs (or the engines built from them) of one precision in a
complete ``rsd-export`` folder (``--artifacts``) through the runner interface
(:mod:`rsd_deploy.export.runners`): the graphs say their scale, prior scale, channels and the
shape range they were exported for, so no PyTorch model is needed; with model options the graphs
are checked to be that model's. ``--server URL`` sends the same stages to a Triton Inference
Server (:class:`~rsd_deploy.export.runners.TritonRunner`), several requests in flight.

Adding a backend is one :data:`BACKENDS` entry.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from .. import chain
from ..tiling import TileModel
from .args import UsageError, load_model

TORCH = "torch"
MODEL_OPTIONS = ("checkpoint", "vae", "config", "preset")

if TYPE_CHECKING:  # the export package is imported when a backend is loaded, not for --help
    from rsd_deploy.export.artifacts import GraphSet
    from rsd_deploy.export.runners import Runner
    from rsd_deploy.export.stages import ShapeRange


@dataclass
class Loaded:
    """A backend made ready: the tile model, what it is, the shapes it accepts, and how to let go."""

    model: TileModel
    description: str
    source: str  # the option that names what runs, for messages
    shape_range: ShapeRange | None = None  # what the graphs / engines / server accept; None: any
    engine: bool = False  # engines run fastest at the profile's opt shape: tiles default to it
    close: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    load: Callable[[argparse.Namespace], Loaded]


# --- torch --------------------------------------------------------------------------------------

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _torch(args: argparse.Namespace) -> Loaded:
    pipe = load_model(args)
    pipe.unet.set_attention_backend(args.attention)
    pipe = pipe.to(device=_device(args), dtype=DTYPES[args.dtype])
    return Loaded(pipe.tile_model(args.steps), pipe.description, f"--backend {TORCH}")


def _device(args: argparse.Namespace) -> torch.device:
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise UsageError(f"--device {args.device}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA GPU is available here (use --device cpu)")
    return device


# --- exported graphs ----------------------------------------------------------------------------


def _exported(args: argparse.Namespace):
    """The graphs of --precision in --artifacts, checked against the model options' model when
    any is given."""
    from rsd_deploy.export.artifacts import ArtifactError, read_export

    if args.artifacts is None:
        raise UsageError(f"--backend {args.backend} runs an rsd-export folder: give --artifacts DIR")
    if args.steps != 1:
        raise UsageError(f"--steps {args.steps}: the exported graphs run the one-step chain; only --backend torch runs {args.steps} steps")
    try:
        exported = read_export(args.artifacts, args.precision, chain.STAGE_NAMES)
        if any(getattr(args, option) for option in MODEL_OPTIONS):
            exported.graphs.check_model(load_model(args))
    except ArtifactError as error:
        raise UsageError(f"--artifacts {error}") from None
    return exported


def _loaded(runner, exported, engine: bool = False) -> Loaded:
    graphs = exported.graphs
    channels = {spec.name: spec.channels for spec in graphs.graphs[chain.GENERATOR.name].inputs}
    model = TileModel.from_stages(runner.stage_fn(), graphs.scale, graphs.prior_scale, channels["x_t"], channels.get("noise_map", 0),
                                  runner.device)
    return Loaded(model, f"{graphs.source} ({runner.name} {graphs.precision}: {runner.notes})",
                  f"--backend {runner.name} --artifacts {exported.folder} ({graphs.precision} graphs)", graphs.shape_range, engine, runner.close)


def _graphs(make_runner: Callable[[GraphSet, argparse.Namespace], Runner]) -> Callable[[argparse.Namespace], Loaded]:
    """A backend that runs the folder's .onnx graphs: ``make_runner(graphs, args)``."""

    def load(args: argparse.Namespace) -> Loaded:
        exported = _exported(args)
        return _loaded(make_runner(exported.graphs, args), exported)

    return load


def _onnxruntime(graphs: GraphSet, args: argparse.Namespace) -> Runner:
    from rsd_deploy.export.runners import OnnxRuntimeRunner

    provider = "CUDAExecutionProvider" if _device(args).type == "cuda" else "CPUExecutionProvider"
    return OnnxRuntimeRunner(graphs.paths(), graphs.precision, provider)


def _openvino(graphs: GraphSet, args: argparse.Namespace) -> Runner:
    from rsd_deploy.export.runners.openvino_runner import OpenVINORunner
    return OpenVINORunner(graphs.paths(), graphs.precision)


def _tensorrt(flavour: str) -> Callable[[argparse.Namespace], Loaded]:
    """Engines of the folder's graphs for ``flavour``, from the engine cache its rsd-export run
    filled (built now when it has none for this GPU), over the shape range the graphs record."""

    def load(args: argparse.Namespace) -> Loaded:
        from rsd_deploy.export import tensorrt as trt_tools
        from rsd_deploy.export.runners import TensorRTRunner

        exported = _exported(args)
        if trt_tools.local_gpu() is None:
            raise UsageError(f"--backend {flavour}: running TensorRT engines needs a CUDA GPU, and none is visible here")
        engines = exported.engine_files(flavour)
        cache = next(iter(engines.values())).parent if engines else exported.folder / "engines"
        graphs = exported.graphs
        try:
            target, _ = trt_tools.resolve_target(flavour)
            runner = TensorRTRunner(graphs.paths(), graphs.specs(), graphs.precision, graphs.shape_range, cache, target)
        except trt_tools.TensorRTUnavailable as error:  # not installed, or an engine for another GPU / version
            raise UsageError(f"--backend {flavour}: {error}") from None
        return _loaded(runner, exported, engine=True)

    return load


def load_server(args: argparse.Namespace) -> Loaded:
    """The stages a Triton Inference Server serves at ``--server``; everything besides the
    images (scale, prior scale, channels, shapes, precision) is read from the server."""
    from rsd_deploy.export.runners import TritonRunner

    if args.steps != 1:
        raise UsageError(f"--steps {args.steps}: a server runs the exported one-step chain; only --backend torch runs {args.steps} steps")
    runner = TritonRunner(args.server, max_in_flight=args.in_flight)
    model = TileModel.from_stages(runner.stage_fn(), runner.scale, runner.prior_scale, runner.latent_channels, runner.noise_channels,
                                  runner.device)
    return Loaded(model, f"served by {runner.notes}", f"--server {args.server}", runner.shape_range, close=runner.close)


BACKENDS = {
    backend.name: backend
    for backend in (
        Backend(TORCH, "PyTorch: the model the model options name, any --steps, --dtype and --attention", _torch),
        Backend("onnxruntime", "ONNX Runtime: the graphs in --artifacts (CPU; CUDA with --device cuda)", _graphs(_onnxruntime)),
        Backend("openvino", "OpenVINO: the graphs in --artifacts, on the CPU whatever --device says (the openvino extra)", _graphs(_openvino)),
        Backend("tensorrt", "TensorRT 10/11 engines of the graphs in --artifacts (a CUDA GPU)", _tensorrt("tensorrt")),
        Backend("tensorrt-rtx", "TensorRT for RTX engines of the graphs in --artifacts (an RTX GPU)", _tensorrt("tensorrt-rtx")),
    )
}


def load_backend(args: argparse.Namespace) -> Loaded:
    """The backend the options name, ready to run; problems are one-line :class:`UsageError`."""
    from rsd_deploy.export.runners import RunnerUnavailable

    if args.server is not None:
        if args.backend != TORCH or args.artifacts is not None:
            raise UsageError("--server runs the stages the server serves: it goes without --backend and --artifacts")
        what = f"--server {args.server}"
        load = load_server
    else:
        backend = BACKENDS[args.backend]
        if backend.name == TORCH and args.artifacts is not None:
            raise UsageError("--artifacts is an rsd-export folder for --backend onnxruntime, openvino, tensorrt or tensorrt-rtx; "
                             "--backend torch runs the model options' model")
        what = f"--backend {backend.name}"
        load = backend.load
    try:
        return load(args)
    except RunnerUnavailable as error:
        raise UsageError(f"{what}: {error}") from None

