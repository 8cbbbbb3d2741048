"""Triton Inference Server model repositories for the one-step pipeline.

:func:`write_triton_repository` lays out one model per exported stage plus python-backend
pre/post-processing, tied together by an ensemble (``<prefix>_sr``)::

    IMAGE uint8 (B, h, w, 3), SEED int64 (B, 1)
      -> <prefix>_preprocess  (python: pad to 64, bicubic x4, seeded noise)  lq_up, lq, eps, noise_map, lr_size
      -> <prefix>_encoder     (stage)                                        z_y
      -> <prefix>_prior       (python: x_T = z_y + kappa sqrt(eta_T) eps)    x_t
      -> <prefix>_generator   (stage)                                        x0
      -> <prefix>_decoder     (stage)                                        hr
      -> <prefix>_postprocess (python: crop, uint8)                          HR_IMAGE uint8 (B, 4h, 4w, 3)

Stage models use one of :data:`STAGE_BACKENDS`: ``tensorrt`` (``tensorrt_plan``, GPU instances,
CUDA graphs at the profile's opt size), ``onnxruntime`` (``onnxruntime_onnx``, CPU or GPU
instances) or ``python`` (an ONNX Runtime session inside a python-backend model, for Triton
builds that only have the python backend, such as the one bundled with ``nvidia-pytriton``).

The graphs are the truth: tensor names, channel counts, types, the scale, the prior scale and
the shape range are read from the exported ONNX files (their dims and the ``rsd_deploy.*``
metadata ``rsd-export`` writes), and a plan made from a pipeline is checked against them.

Every ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf (from ``tritonclient``)
and written in its text format; :func:`check_repository` parses a repository back and follows
the ensemble's tensors end to end. Python models need this package (and torch, for
pre-processing) in the server's Python environment.

A repository may be shared with other models: only the models named in this module's manifest
(``rsd_repository.json``) are ever replaced, each one swapped in whole (see
:func:`write_triton_repository`).

Standalone: ``python -m rsd_deploy.export.triton_repo --onnx-dir EXPORT_DIR --out REPO``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rsd_deploy.atomic import atomic_path
from rsd_deploy.pipeline import SRPipeline

from .stages import CHAINED_STAGES, ShapeRange, StageSpec, TensorSpec, describe_stages, onnx_file_name

STAGE_BACKENDS = ("tensorrt", "onnxruntime", "python")
MANIFEST = "rsd_repository.json"  # names the models this module wrote: the only ones it replaces
STAGING_SUFFIX = ".rsd-staging"  # new models are built in .<repo>.rsd-staging beside the repository
VERSION = "1"
DEFAULT_MAX_QUEUE = 32  # requests waiting per model; past it Triton refuses at once (UNAVAILABLE)

# ONNX TensorProto element types -> Triton data types (the ones an SR graph can carry)
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 2: "TYPE_UINT8", 6: "TYPE_INT32", 7: "TYPE_INT64"}
_SPEC_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}
_TRITON_TO_SPEC = {v: k for k, v in _SPEC_TO_TRITON.items()}
# the tensors the ensemble wires together, per stage: (inputs, outputs); RSD students' generators
# also take noise_map
_STAGE_TENSORS = {"encoder": (("lq_up",), ("z_y",)), "generator": (("x_t", "lq"), ("x0",)), "decoder": (("z",), ("hr",))}
_OPTIONAL_INPUTS = {"generator": ("noise_map",)}
_ENSEMBLE_STEPS = ("preprocess", "encoder", "prior", "generator", "decoder", "postprocess")


class RepositoryError(ValueError):
    """A repository (or its inputs) that Triton would reject; one line per problem."""


def _pb():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as error:
        raise RepositoryError(f"Triton repositories need tritonclient (pip install 'tritonclient[grpc]'): {error}") from None
    return model_config_pb2, text_format


# --- the pieces of a config ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # TYPE_FP32, TYPE_UINT8, ...
    dims: tuple[int, ...]  # without the batch axis; -1 = variable


def _spec_tensor(spec: TensorSpec) -> Tensor:
    return Tensor(spec.name, _SPEC_TO_TRITON[spec.dtype], (spec.channels, -1, -1))


# --- what an exported graph says about itself ---------------------------------------------------


@dataclass(frozen=True)
class StageGraph:
    """One exported stage graph, read without its weights: tensors as written (types and dims,
    e.g. ``['batch', 48, 'height', 'width']``), ``rsd_deploy.*`` metadata, external-data files."""

    path: Path
    inputs: dict[str, tuple[str, list]]  # name -> (TYPE_*, dims)
    outputs: dict[str, tuple[str, list]]
    metadata: dict
    weight_files: list[Path]


def read_stage_graph(path: str | Path, stage: str) -> StageGraph:
    """Read ``path`` (given for ``stage``), checking it is that stage's graph from ``rsd-export``
    with the tensors the ensemble wires together."""
    import onnx

    from .onnx_export import read_metadata

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)  # read once: a full-size generator is ~0.5 GB
    except Exception as error:
        raise RepositoryError(f"{path}: not a readable ONNX file ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    try:
        metadata = read_metadata(model)
    except ValueError as error:
        raise RepositoryError(f"{path}: unreadable rsd_deploy metadata ({error})") from None
    if metadata.get("stage") != stage:
        found = f"the {metadata['stage']} stage's graph" if "stage" in metadata else "not a graph written by rsd-export (no rsd_deploy.stage metadata)"
        raise RepositoryError(f"{path}: given for the {stage} stage, but it is {found}")

    def tensors(values) -> dict[str, tuple[str, list]]:
        out = {}
        for value in values:
            elem = value.type.tensor_type.elem_type
            if elem not in _ONNX_TO_TRITON:
                raise RepositoryError(f"{path}: tensor {value.name!r} has ONNX element type {elem}, which no stage uses")
            out[value.name] = (_ONNX_TO_TRITON[elem], [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim])
        return out

    inputs, outputs = tensors(model.graph.input), tensors(model.graph.output)
    want_in, want_out = _STAGE_TENSORS[stage]
    optional = _OPTIONAL_INPUTS.get(stage, ())
    if list(outputs) != list(want_out) or list(inputs) not in (list(want_in), [*want_in, *optional]):
        raise RepositoryError(f"{path}: expected the {stage} stage's tensors {[*want_in, *optional, *want_out]}, found {[*inputs, *outputs]}")
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return StageGraph(path, inputs, outputs, metadata, [path.parent / location for location in sorted(locations)])


def _graph_tensor_spec(graph: StageGraph, name: str, data_type: str, dims: list) -> TensorSpec:
    """The :class:`TensorSpec` a graph tensor was exported from: (batch, C, s*height, s*width)
    with the dim names :meth:`TensorSpec.symbolic_shape` wrote."""
    if len(dims) != 4 or not isinstance(dims[1], int) or dims[1] <= 0 or not all(isinstance(d, str) for d in dims[2:]):
        raise RepositoryError(f"{graph.path}: tensor {name!r} has dims {dims}; expected [batch, channels, height, width] as rsd-export writes them")
    if data_type not in _TRITON_TO_SPEC:
        raise RepositoryError(f"{graph.path}: tensor {name!r} is {data_type}; stage tensors are floating point")
    scale = int(dims[2].split("*")[0]) if "*" in dims[2] else 1
    spec = TensorSpec(name, dims[1], scale, dtype=_TRITON_TO_SPEC[data_type])
    if spec.symbolic_shape()[1:] != dims[1:]:
        raise RepositoryError(f"{graph.path}: tensor {name!r} has dims {dims}, not as rsd-export names them ({spec.symbolic_shape()})")
    return spec


def _recorded(graph: StageGraph, key: str):
    if key not in graph.metadata:
        raise RepositoryError(f"{graph.path}: no rsd_deploy.{key} metadata (exported by an older rsd-export?); export the graphs again")
    return graph.metadata[key]


def _shape_range_from_json(graph: StageGraph) -> ShapeRange:
    recorded = _recorded(graph, "shape_range")
    try:
        return ShapeRange(batch=tuple(recorded["batch"]), height=tuple(recorded["lr_height"]), width=tuple(recorded["lr_width"]))
    except (KeyError, TypeError, ValueError) as error:
        raise RepositoryError(f"{graph.path}: unreadable rsd_deploy.shape_range metadata {recorded} ({error})") from None


def _inside(inner: ShapeRange, outer: ShapeRange) -> bool:
    pairs = [(inner.batch, outer.batch), (inner.height, outer.height), (inner.width, outer.width)]
    return all(o[0] <= i[0] and i[2] <= o[2] for i, o in pairs)


@dataclass
class RepositoryPlan:
    """Everything :func:`write_triton_repository` needs: the stages' tensors and the constants
    of the python models. Made from the graphs (:meth:`from_graphs`) or from a pipeline
    (:meth:`from_pipeline`, then :meth:`matched_to` its graphs)."""

    stages: dict[str, StageSpec]
    shape_range: ShapeRange
    prior_scale: float  # kappa * sqrt(eta_T)
    scale: int  # HR / LR size
    prefix: str = "rsd"

    @classmethod
    def from_pipeline(cls, pipe: SRPipeline, shape_range: ShapeRange, prefix: str = "rsd") -> "RepositoryPlan":
        schedule = pipe.schedule
        return cls(describe_stages(pipe), shape_range, schedule.kappa * float(schedule.sqrt_etas[-1]), pipe.codec.scale, prefix)

    @classmethod
    def from_graphs(cls, graphs: dict[str, StageGraph], shape_range: ShapeRange | None = None, prefix: str = "rsd") -> "RepositoryPlan":
        """The plan the graphs describe (each from :func:`read_stage_graph`). ``shape_range``
        (default: the range rsd-export recorded) must lie inside the recorded one; the graphs
        must come from one model and agree on every tensor they share."""
        missing = [s for s in CHAINED_STAGES if s not in graphs]
        if missing:
            raise RepositoryError(f"no graph given for the {', '.join(missing)} stage{'s' if len(missing) > 1 else ''}")
        first = graphs[CHAINED_STAGES[0]]
        for key in ("source", "scale", "prior_scale", "shape_range"):
            _recorded(first, key)
            for graph in graphs.values():
                if _recorded(graph, key) != first.metadata[key]:
                    raise RepositoryError(f"{graph.path}: rsd_deploy.{key} {graph.metadata[key]!r} differs from {first.path.name}'s "
                                          f"{first.metadata[key]!r}; give graphs of one export")
        stages = {}
        for name, graph in graphs.items():
            inputs = tuple(_graph_tensor_spec(graph, n, *v) for n, v in graph.inputs.items())
            outputs = tuple(_graph_tensor_spec(graph, n, *v) for n, v in graph.outputs.items())
            stages[name] = StageSpec(name, f"read from {graph.path.name}", inputs, outputs, builder=None)  # no torch module: served, not exported
        recorded = _shape_range_from_json(first)
        if shape_range is None:
            shape_range = recorded
        elif not _inside(shape_range, recorded):
            raise RepositoryError(f"{first.path}: exported for {recorded}; the repository's range ({shape_range}) must lie inside it")
        plan = cls(stages, shape_range, float(first.metadata["prior_scale"]), int(first.metadata["scale"]), prefix)
        plan._check_graph_wiring(graphs)
        return plan

    def _check_graph_wiring(self, graphs: dict[str, StageGraph]) -> None:
        """The latent flows encoder -> prior -> generator -> decoder with one channel count, and
        the image tensors have the recorded scale."""
        latent = {("encoder", "z_y"), ("generator", "x_t"), ("generator", "x0"), ("decoder", "z")}
        channels = self.stages["encoder"].outputs[0].channels
        for stage, spec in ((s, t) for s in CHAINED_STAGES for t in (*self.stages[s].inputs, *self.stages[s].outputs)):
            if (stage, spec.name) in latent and spec.channels != channels:
                raise RepositoryError(f"{graphs[stage].path}: {spec.name!r} has {spec.channels} latent channels, the encoder's z_y "
                                      f"({graphs['encoder'].path.name}) has {channels}; give graphs of one export")
            expected_scale = self.scale if spec.name in ("lq_up", "hr") else 1
            if spec.scale != expected_scale:
                raise RepositoryError(f"{graphs[stage].path}: {spec.name!r} is {spec.scale}x the LR size, the recorded scale is x{expected_scale}")

    def matched_to(self, graphs: dict[str, StageGraph]) -> "RepositoryPlan":
        """This plan checked against the graphs it will serve; returns the graphs' plan (their
        types) with this plan's prefix and shape range. A mismatch is one line naming the file."""
        served = RepositoryPlan.from_graphs(graphs, self.shape_range, self.prefix)
        for name in CHAINED_STAGES:
            path = graphs[name].path
            ours = [(t.name, t.channels, t.scale) for t in (*self.stages[name].inputs, *self.stages[name].outputs)]
            theirs = [(t.name, t.channels, t.scale) for t in (*served.stages[name].inputs, *served.stages[name].outputs)]
            if ours != theirs:
                raise RepositoryError(f"{path}: the {name} graph's tensors (name, channels, scale) {theirs} differ from the model's {ours}")
        if served.scale != self.scale:
            raise RepositoryError(f"{graphs['decoder'].path}: a x{served.scale} graph, the model is x{self.scale}")
        if not math.isclose(served.prior_scale, self.prior_scale, rel_tol=1e-6):
            raise RepositoryError(f"{graphs['generator'].path}: exported with prior scale {served.prior_scale:.6g}, the model's schedule has {self.prior_scale:.6g}")
        return served

    def name(self, part: str) -> str:
        return f"{self.prefix}_{part}"

    def model_names(self) -> list[str]:
        return [self.name(part) for part in (*_ENSEMBLE_STEPS, "sr")]

    def tensor(self, stage: str, name: str) -> TensorSpec:
        return next(t for t in [*self.stages[stage].inputs, *self.stages[stage].outputs] if t.name == name)

    @property
    def latent_channels(self) -> int:
        return self.tensor("generator", "x_t").channels

    @property
    def noise_channels(self) -> int:
        specs = {t.name: t for t in self.stages["generator"].inputs}
        return specs["noise_map"].channels if "noise_map" in specs else 0

    def limits(self) -> dict[str, int]:
        """The LR sizes every python model accepts (padded, multiples of 64)."""
        rng = self.shape_range
        return {"min_lr_height": rng.height[0], "min_lr_width": rng.width[0], "max_lr_height": rng.height[2], "max_lr_width": rng.width[2]}


# --- configs --------------------------------------------------------------------------------


def _config(name: str, max_batch: int, inputs: list[Tensor], outputs: list[Tensor], **kwargs):
    pb, _ = _pb()
    config = pb.ModelConfig(name=name, max_batch_size=max_batch, **kwargs)
    for tensor in inputs:
        config.input.add(name=tensor.name, data_type=pb.DataType.Value(tensor.data_type), dims=list(tensor.dims))
    for tensor in outputs:
        config.output.add(name=tensor.name, data_type=pb.DataType.Value(tensor.data_type), dims=list(tensor.dims))
    return config


def _instances(config, kind: str, count: int) -> None:
    pb, _ = _pb()
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_GPU if kind == "gpu" else pb.ModelInstanceGroup.KIND_CPU, count=count)


def _batching(config, delay_us: int, max_queue: int) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = delay_us
    # bounded: under overload Triton refuses new requests at once (UNAVAILABLE, HTTP 503) instead
    # of holding every waiting image in memory
    config.dynamic_batching.default_queue_policy.max_queue_size = max_queue


def _parameters(config, parameters: dict) -> None:
    for key, value in parameters.items():
        config.parameters[key].string_value = str(value)


def stage_config(plan: RepositoryPlan, stage: str, backend: str, device: str, instances: int, delay_us: int, max_queue: int = DEFAULT_MAX_QUEUE):
    """Config of one stage model: TensorRT plan, ONNX Runtime graph, or python + ONNX Runtime."""
    pb, _ = _pb()
    spec = plan.stages[stage]
    rng = plan.shape_range
    kwargs = {
        "tensorrt": {"platform": "tensorrt_plan"},
        "onnxruntime": {"platform": "onnxruntime_onnx"},
        "python": {"backend": "python"},
    }[backend]
    config = _config(plan.name(stage), rng.batch[2], [_spec_tensor(t) for t in spec.inputs], [_spec_tensor(t) for t in spec.outputs], **kwargs)
    _instances(config, "gpu" if backend == "tensorrt" else device, instances)
    _batching(config, delay_us, max_queue)
    if backend == "python":
        providers = "CUDAExecutionProvider,CPUExecutionProvider" if device == "gpu" else "CPUExecutionProvider"
        _parameters(config, {"providers": providers, "input_scales": json.dumps({t.name: t.scale for t in spec.inputs}), **plan.limits()})
    if backend == "tensorrt":  # replay CUDA graphs at the profile's opt LR size, every batch size
        cuda = config.optimization.cuda
        cuda.graphs = True
        for batch in range(1, rng.batch[2] + 1):
            graph = cuda.graph_spec.add(batch_size=batch)
            for tensor in spec.inputs:
                graph.input[tensor.name].dim.extend(tensor.shape(1, rng.height[1], rng.width[1])[1:])
    warmup = config.model_warmup.add(name=f"{stage}_opt_shape", batch_size=rng.batch[1], count=1)
    for tensor in spec.inputs:
        warmup.inputs[tensor.name].CopyFrom(
            pb.ModelWarmup.Input(
                data_type=pb.DataType.Value(_SPEC_TO_TRITON[tensor.dtype]),
                dims=list(tensor.shape(1, rng.height[1], rng.width[1])[1:]),
                random_data=True,
            )
        )
    return config


def _python_config(plan: RepositoryPlan, part: str, inputs, outputs, parameters: dict, delay_us: int, max_queue: int):
    config = _config(plan.name(part), plan.shape_range.batch[2], inputs, outputs, backend="python")
    _instances(config, "cpu", 1)
    _batching(config, delay_us, max_queue)
    _parameters(config, {**parameters, **plan.limits()})
    return config


def preprocess_config(plan: RepositoryPlan, delay_us: int, max_queue: int = DEFAULT_MAX_QUEUE):
    gen = {t.name: t for t in plan.stages["generator"].inputs}
    x_t = _spec_tensor(gen["x_t"])
    outputs = [
        _spec_tensor(plan.tensor("encoder", "lq_up")),
        _spec_tensor(gen["lq"]),
        Tensor("eps", x_t.data_type, x_t.dims),  # the prior noise has x_t's shape
        Tensor("lr_size", "TYPE_INT32", (2,)),
    ]
    if "noise_map" in gen:
        outputs.append(_spec_tensor(gen["noise_map"]))
    params = {"scale": plan.scale, "latent_channels": plan.latent_channels, "noise_channels": plan.noise_channels}
    inputs = [Tensor("IMAGE", "TYPE_UINT8", (-1, -1, 3)), Tensor("SEED", "TYPE_INT64", (1,))]
    return _python_config(plan, "preprocess", inputs, outputs, params, delay_us, max_queue)


def prior_config(plan: RepositoryPlan, delay_us: int, max_queue: int = DEFAULT_MAX_QUEUE):
    x_t = _spec_tensor(plan.tensor("generator", "x_t"))
    inputs = [_spec_tensor(plan.tensor("encoder", "z_y")), Tensor("eps", x_t.data_type, x_t.dims)]
    return _python_config(plan, "prior", inputs, [x_t], {"prior_scale": repr(plan.prior_scale)}, delay_us, max_queue)


def postprocess_config(plan: RepositoryPlan, delay_us: int, max_queue: int = DEFAULT_MAX_QUEUE):
    inputs = [_spec_tensor(plan.tensor("decoder", "hr")), Tensor("lr_size", "TYPE_INT32", (2,))]
    outputs = [Tensor("HR_IMAGE", "TYPE_UINT8", (-1, -1, 3))]
    return _python_config(plan, "postprocess", inputs, outputs, {"scale": plan.scale}, delay_us, max_queue)


def ensemble_config(plan: RepositoryPlan, models: dict):
    """The ensemble: each step maps a model's tensors to ensemble tensors of the same name."""
    pb, _ = _pb()
    pre, post = models[plan.name("preprocess")], models[plan.name("postprocess")]

    def as_tensors(values):
        return [Tensor(v.name, pb.DataType.Name(v.data_type), tuple(v.dims)) for v in values]

    config = _config(plan.name("sr"), plan.shape_range.batch[2], as_tensors(pre.input), as_tensors(post.output), platform="ensemble")
    renames = {("decoder", "z"): "x0"}  # the decoder's input z is the generator's output x0
    for part in _ENSEMBLE_STEPS:
        model = models[plan.name(part)]
        step = config.ensemble_scheduling.step.add(model_name=model.name, model_version=-1)
        for tensor in model.input:
            step.input_map[tensor.name] = renames.get((part, tensor.name), tensor.name)
        for tensor in model.output:
            step.output_map[tensor.name] = tensor.name
    return config


# --- checking ---------------------------------------------------------------------------------


def _dims_compatible(a, b) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def check_ensemble(ensemble, models: dict) -> list[str]:
    """Problems with an ensemble's tensor flow: unknown models or tensors, tensors used before
    they are produced or produced twice, and type / dims mismatches along every edge."""
    pb, _ = _pb()
    problems = []
    available = {t.name: (t.data_type, tuple(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = models.get(step.model_name)
        where = f"{ensemble.name} step {step.model_name}"
        if model is None:
            problems.append(f"{where}: no such model in the repository")
            continue
        if model.max_batch_size < ensemble.max_batch_size:
            problems.append(f"{where}: max_batch_size {model.max_batch_size} < the ensemble's {ensemble.max_batch_size}")
        model_inputs = {t.name: t for t in model.input}
        for model_name, ensemble_name in step.input_map.items():
            if model_name not in model_inputs:
                problems.append(f"{where}: maps unknown input {model_name!r}")
            elif ensemble_name not in available:
                problems.append(f"{where}: input {model_name!r} reads {ensemble_name!r}, not produced by an earlier step")
            else:
                data_type, dims = available[ensemble_name]
                want = model_inputs[model_name]
                if data_type != want.data_type:
                    problems.append(f"{where}: {ensemble_name!r} is {pb.DataType.Name(data_type)}, input {model_name!r} wants {pb.DataType.Name(want.data_type)}")
                if not _dims_compatible(dims, tuple(want.dims)):
                    problems.append(f"{where}: {ensemble_name!r} has dims {list(dims)}, input {model_name!r} wants {list(want.dims)}")
        unmapped = [n for n, t in model_inputs.items() if n not in step.input_map and not t.optional]
        if unmapped:
            problems.append(f"{where}: inputs {unmapped} are not mapped")
        model_outputs = {t.name: t for t in model.output}
        for model_name, ensemble_name in step.output_map.items():
            if model_name not in model_outputs:
                problems.append(f"{where}: maps unknown output {model_name!r}")
            elif ensemble_name in available:
                problems.append(f"{where}: {ensemble_name!r} is produced twice")
            else:
                out = model_outputs[model_name]
                available[ensemble_name] = (out.data_type, tuple(out.dims))
    for tensor in ensemble.output:
        if tensor.name not in available:
            problems.append(f"{ensemble.name}: output {tensor.name!r} is never produced")
        elif available[tensor.name] != (tensor.data_type, tuple(tensor.dims)) and not (
            available[tensor.name][0] == tensor.data_type and _dims_compatible(available[tensor.name][1], tuple(tensor.dims))
        ):
            problems.append(f"{ensemble.name}: output {tensor.name!r} is {available[tensor.name]}, declared {(tensor.data_type, list(tensor.dims))}")
    return problems


_MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx", "python": "model.py"}


def read_config(path: Path):
    """Parse one ``config.pbtxt`` with Triton's ``ModelConfig`` protobuf."""
    pb, text_format = _pb()
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except text_format.ParseError as error:
        raise RepositoryError(f"{path}: not a valid Triton model config ({error})") from None


def check_repository(directory: str | Path, names: list[str] | None = None) -> dict:
    """Parse every ``config.pbtxt`` (or only those of the models in ``names``: a shared
    repository's other models are not ours to judge), check names, model files and ensembles;
    return the configs by model name. Raises :class:`RepositoryError` listing every problem."""
    directory = Path(directory)
    models, problems = {}, []
    paths = sorted(directory.glob("*/config.pbtxt")) if names is None else [directory / n / "config.pbtxt" for n in names]
    for path in paths:
        if not path.is_file():
            problems.append(f"{path.parent}: no config.pbtxt")
            continue
        config = read_config(path)
        if config.name != path.parent.name:
            problems.append(f"{path}: name {config.name!r} differs from its folder {path.parent.name!r}")
        models[config.name] = config
        kind = config.platform or config.backend
        if kind in _MODEL_FILES and not (path.parent / VERSION / _MODEL_FILES[kind]).is_file():
            problems.append(f"{path.parent}: {kind} model without {VERSION}/{_MODEL_FILES[kind]}")
        if config.backend == "python" and config.parameters.get("providers") and not (path.parent / VERSION / "model.onnx").is_file():
            problems.append(f"{path.parent}: ONNX Runtime python model without {VERSION}/model.onnx")
    if not models and not problems:
        problems.append(f"{directory}: no */config.pbtxt")
    for config in models.values():
        if config.platform == "ensemble":
            problems += check_ensemble(config, models)
    if problems:
        raise RepositoryError("\n".join(problems))
    return models


# --- writing: build beside, swap in -------------------------------------------------------------
#
# Triton loads every sub-folder of a repository as a model, hidden ones too (a `.staging` folder
# fails the start of the bundled 2.51 server: "No model version was found"), so new models are
# never built inside the repository. They are built in `.<repo>.rsd-staging` beside it (same
# file system), checked, then each is swapped with the old one by one atomic exchange of the two
# folders: every model folder in the repository is at all times a complete model, old or new.
# The staging folder's `rsd_staging.json` records the repository and, once every model is built,
# each new folder's inode: a run that finds it (after a kill) finishes that swap first.

_STAGING_MARKER = "rsd_staging.json"
_PYTHON_MODEL = '"""Triton python model: the implementation is {cls} in rsd_deploy.export.serve."""\n\nfrom rsd_deploy.export.serve import {cls} as TritonPythonModel  # noqa: F401\n'


def staging_folder(repository: Path) -> Path:
    """Where new models of ``repository`` are built: beside it, never inside it."""
    return repository.parent / f".{repository.name}{STAGING_SUFFIX}"


def _write_json(path: Path, value: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RepositoryError(f"{path}: unreadable {what} ({error})") from None
    if not isinstance(value, dict):
        raise RepositoryError(f"{path}: unreadable {what} (not a JSON object)")
    return value


def _inode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``). Where the kernel or
    file system cannot, move ``b`` aside into ``a``'s folder and ``a`` in: a kill between the two
    renames leaves ``b`` missing until the next run finishes the swap."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    aside = a.with_name(a.name + ".replaced")
    os.rename(b, aside)
    os.rename(a, b)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk before it is swapped in."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(Path(root) / name, "rb") as file:
                os.fsync(file.fileno())
        descriptor = os.open(root, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _locked(repository: Path) -> Iterator[None]:
    """One writer at a time per repository (an advisory lock on the folder itself)."""
    import fcntl

    descriptor = os.open(repository, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepositoryError(f"{repository}: another rsd-deploy run is writing this repository now") from None
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _swap_in(repository: Path, staging: Path, marker: dict) -> None:
    """Write the manifest, swap every staged model in, remove the staging folder (old models)."""
    _write_json(repository / MANIFEST, marker["manifest"])  # ownership recorded before any folder moves
    for name, inode in marker["models"].items():
        new, target = staging / name, repository / name
        if _inode(target) == inode:
            continue  # swapped in before an interruption
        if _inode(new) != inode:
            raise RepositoryError(f"{staging}: the interrupted update of {repository} cannot be finished ({name} is gone); "
                                  f"remove {staging} and write the repository again")
        if _inode(target) is None:
            os.rename(new, target)
        else:
            _exchange(new, target)
    shutil.rmtree(staging)


def _finish_interrupted_update(repository: Path) -> str | None:
    """Complete (or discard) what a killed run left in the staging folder; say what was done."""
    staging = staging_folder(repository)
    if not staging.exists() and not staging.is_symlink():
        return None
    marker_path = staging / _STAGING_MARKER
    if staging.is_symlink() or not staging.is_dir() or (not marker_path.is_file() and any(staging.iterdir())):
        raise RepositoryError(f"{staging}: in the way of this repository's staging folder and not made by rsd-deploy; move it")
    if not marker_path.is_file():  # killed between creating the folder and its marker
        staging.rmdir()
        return None
    marker = _read_json(marker_path, "staging record")
    if marker.get("repository") != str(repository):
        raise RepositoryError(f"{staging}: staging folder of {marker.get('repository')}, not of {repository}; move it")
    if marker.get("models"):
        _swap_in(repository, staging, marker)
        return f"finished the interrupted update of {repository}"
    shutil.rmtree(staging)  # a build killed before its swap: the repository was never touched
    return f"removed the unfinished build {staging}"


def _check_target(repository: Path) -> Path:
    """The repository folder (absolute), checked: a writable folder or creatable, not a link,
    with a writable parent on the same file system for the staging folder."""
    if repository.is_symlink():
        raise RepositoryError(f"{repository}: a symbolic link; give the folder it points to")
    repository = repository.absolute()
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"{repository}: exists and is not a folder")
    existing = repository if repository.exists() else repository.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RepositoryError(f"{existing}: not writable")
    parent = repository.parent
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise RepositoryError(f"{parent}: not writable; models are built beside the repository in "
                              f"{staging_folder(repository).name} and swapped in whole")
    if repository.exists() and os.stat(repository).st_dev != os.stat(parent).st_dev:
        raise RepositoryError(f"{repository}: a mount point; models are built beside the repository and renamed in, "
                              "so write to a folder inside it (and serve that folder)")
    return repository


def _owned_models(repository: Path) -> set[str]:
    path = repository / MANIFEST
    if not path.exists():
        return set()
    manifest = _read_json(path, "rsd-deploy manifest")
    models = manifest.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) and m and "/" not in m and m not in (".", "..") for m in models):
        raise RepositoryError(f"{path}: unreadable rsd-deploy manifest (no list of model names)")
    return set(models)


def check_repository_target(out_dir: str | Path, names: list[str], overwrite: bool) -> Path:
    """Raise :class:`RepositoryError` (one line) unless the models ``names`` can be written into
    ``out_dir``: a usable folder where each of those names is free, or (with ``overwrite``) a
    model this module wrote. Cheap: call it before the first expensive step. Returns the folder."""
    repository = _check_target(Path(out_dir))
    owned = _owned_models(repository) if repository.is_dir() else set()
    for name in names:
        folder = repository / name
        if _inode(folder) is None:
            continue
        if name not in owned:
            raise RepositoryError(f"{folder}: a model folder rsd-deploy did not write (not in {MANIFEST}); "
                                  "refusing to replace it: move it or write to another folder")
        if folder.is_symlink() or not folder.is_dir():
            raise RepositoryError(f"{folder}: not the folder rsd-deploy wrote (a link or a file now); move it")
        if not overwrite:
            raise RepositoryError(f"{folder}: exists (written by rsd-deploy); pass overwrite=True / --overwrite to replace "
                                  "rsd-deploy's models")
    return repository


def _stage_model(staging: Path, config, files: dict[str, Path | str]) -> None:
    _, text_format = _pb()
    folder = staging / config.name
    (folder / VERSION).mkdir(parents=True)  # ensembles too need an (empty) version folder
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, folder / VERSION / name)
        else:
            (folder / VERSION / name).write_text(content)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))


def write_triton_repository(
    out_dir: str | Path,
    plan: RepositoryPlan,
    model_files: dict[str, str | Path],
    backend: str = "onnxruntime",
    device: str = "cpu",
    instances: int = 1,
    queue_delay_us: int = 2000,
    overwrite: bool = False,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> dict:
    """Write this pipeline's models into the repository ``out_dir`` (created if missing, may hold
    other models); return their configs by model name (checked as Triton would).

    ``model_files``: stage name -> ``.onnx`` file (backends ``onnxruntime`` / ``python``: the
    plan is checked against the graphs and takes their types) or ``.plan`` engine
    (``tensorrt``) for ``encoder``, ``generator`` and ``decoder``. ``device``: ``cpu`` or
    ``gpu`` instances for ONNX Runtime stages (TensorRT is always GPU).

    Only models named in the repository's ``rsd_repository.json`` are replaced (with
    ``overwrite``); a folder with one of this plan's names that the manifest does not list is
    refused. New models are built and checked beside the repository, then each is swapped in
    whole, so a server (or a kill -9) never sees a half-written model; a run that finds an
    interrupted update finishes it first.
    """
    if backend not in STAGE_BACKENDS:
        raise RepositoryError(f"unknown stage backend {backend!r}; choose from {STAGE_BACKENDS}")
    if device not in ("cpu", "gpu"):
        raise RepositoryError(f"device must be 'cpu' or 'gpu', got {device!r}")
    for what, value, low in (("instances", instances, 1), ("queue_delay_us", queue_delay_us, 0), ("max_queue", max_queue, 1)):
        if not isinstance(value, int) or value < low:
            raise RepositoryError(f"{what} must be an integer >= {low}, got {value!r}")
    suffix = ".plan" if backend == "tensorrt" else ".onnx"
    files = {}
    for stage in CHAINED_STAGES:
        if stage not in model_files:
            raise RepositoryError(f"no {suffix} file given for the {stage} stage")
        path = Path(model_files[stage])
        if not path.is_file() or path.suffix != suffix:
            raise RepositoryError(f"{path}: expected an existing {suffix} file for the {stage} stage ({backend} backend)")
        files[stage] = path
    weight_files: dict[str, list[Path]] = {stage: [] for stage in CHAINED_STAGES}
    if suffix == ".onnx":
        graphs = {stage: read_stage_graph(path, stage) for stage, path in files.items()}
        for stage, graph in graphs.items():
            if graph.metadata.get("attention") == "plugin":
                raise RepositoryError(f"{graph.path}: has TensorRT plugin attention nodes, which ONNX Runtime cannot run; "
                                      "serve its engine with the tensorrt backend")
            missing = [p for p in graph.weight_files if not p.is_file()]
            if missing:
                raise RepositoryError(f"{graph.path}: its weights file {missing[0]} is missing")
            weight_files[stage] = graph.weight_files
        plan = plan.matched_to(graphs)
    names = plan.model_names()
    repository = check_repository_target(out_dir, names, overwrite)
    repository.mkdir(parents=True, exist_ok=True)

    with _locked(repository):
        done = _finish_interrupted_update(repository)
        if done:
            print(f"note: {done}", file=sys.stderr)
        check_repository_target(repository, names, overwrite)  # again, now that nobody else writes
        owned = _owned_models(repository)
        staging = staging_folder(repository)
        staging.mkdir()
        try:
            _write_json(staging / _STAGING_MARKER, {"repository": str(repository)})
            _build(staging, plan, files, weight_files, backend, device, instances, queue_delay_us, max_queue)
            check_repository(staging, names)  # every config parsed back and the ensemble followed, before anything moves
            _fsync_tree(staging)
            manifest = {
                "written_by": "rsd_deploy.export.triton_repo",
                "models": sorted(owned | set(names)),  # every model this module wrote here (the ones it may replace)
                "ensemble": plan.name("sr"),
                "stage_backend": backend,
                "device": device,
                "shape_range": plan.shape_range.to_json(),
                "sources": {stage: str(path) for stage, path in files.items()},
            }
            marker = {"repository": str(repository), "models": {name: _inode(staging / name) for name in names}, "manifest": manifest}
            _write_json(staging / _STAGING_MARKER, marker)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # half built, ours; the repository was not touched
            raise
        _swap_in(repository, staging, marker)
    return check_repository(repository, names)  # parse back what is now served


def _build(staging: Path, plan: RepositoryPlan, files: dict[str, Path], weight_files: dict[str, list[Path]],
           backend: str, device: str, instances: int, delay_us: int, max_queue: int) -> None:
    """Every model of the plan, complete, into ``staging``."""
    configs = {}
    for stage in CHAINED_STAGES:
        config = stage_config(plan, stage, backend, device, instances, delay_us, max_queue)
        model_file = "model.plan" if backend == "tensorrt" else "model.onnx"
        stage_files: dict[str, Path | str] = {model_file: files[stage], **{p.name: p for p in weight_files[stage]}}
        if backend == "python":
            stage_files["model.py"] = _PYTHON_MODEL.format(cls="OnnxRuntimeStage")
        _stage_model(staging, config, stage_files)
        configs[config.name] = config
    for part, build, cls in [
        ("preprocess", preprocess_config, "Preprocess"),
        ("prior", prior_config, "PriorSample"),
        ("postprocess", postprocess_config, "Postprocess"),
    ]:
        config = build(plan, delay_us, max_queue)
        _stage_model(staging, config, {"model.py": _PYTHON_MODEL.format(cls=cls)})
        configs[config.name] = config
    ensemble = ensemble_config(plan, configs)
    _stage_model(staging, ensemble, {})
    (staging / ensemble.name / "README.md").write_text(_readme(plan, backend, device))


def repository_from_export(
    out_dir: str | Path,
    pipe: SRPipeline,
    shape_range: ShapeRange,
    graphs: dict[str, Path],
    engines: dict[str, Path] | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> tuple[dict, str]:
    """What ``rsd-export --triton-repo`` writes: TensorRT plans when every stage has an engine,
    else the ONNX graphs for ONNX Runtime; the pipeline's plan is checked against the graphs
    either way. Returns (configs, the stage backend used)."""
    engines = engines or {}
    backend = "tensorrt" if all(stage in engines for stage in CHAINED_STAGES) else "onnxruntime"
    plan = RepositoryPlan.from_pipeline(pipe, shape_range)
    if backend == "tensorrt":  # the engines were built from these graphs: their tensors are the engines'
        missing = [s for s in CHAINED_STAGES if s not in graphs]
        if missing:
            raise RepositoryError(f"no ONNX graph given for the {', '.join(missing)} stage (the engines are checked against it)")
        plan = plan.matched_to({stage: read_stage_graph(graphs[stage], stage) for stage in CHAINED_STAGES})
    chosen = engines if backend == "tensorrt" else graphs
    files = {stage: chosen[stage] for stage in CHAINED_STAGES if stage in chosen}  # a missing one is reported by the writer
    return write_triton_repository(out_dir, plan, files, backend, "gpu" if backend == "tensorrt" else device, overwrite=overwrite), backend


def _readme(plan: RepositoryPlan, backend: str, device: str) -> str:
    rng = plan.shape_range
    ensemble = plan.name("sr")
    opt = f"{rng.height[1]},{rng.width[1]},3"
    gpu = "--gpus all " if backend == "tensorrt" or device == "gpu" else ""
    largest = rng.batch[2] * rng.height[2] * rng.width[2] * 3
    return f"""# Triton models: RSD one-step x{plan.scale} super-resolution

Written by `rsd_deploy.export.triton_repo` into the model repository that holds this folder
(`REPO` below; it may hold other models too: `rsd_repository.json` there names the ones this
tool wrote and may replace). Stage models use the `{backend}` backend ({device if backend != "tensorrt" else "gpu"}
instances). Send requests to this ensemble, `{ensemble}`:

| tensor | type | shape | meaning |
|---|---|---|---|
| `IMAGE` (in) | UINT8 | [B, h, w, 3] | RGB LR images, one size per request |
| `SEED` (in) | INT64 | [B, 1] | noise seed per image, 0 .. 2^63-1 (same seed, same output) |
| `HR_IMAGE` (out) | UINT8 | [B, {plan.scale}h, {plan.scale}w, 3] | x{plan.scale} super-resolved images |

LR images are padded to multiples of 64 inside; padded sizes from {rng.height[0]}x{rng.width[0]} to
{rng.height[2]}x{rng.width[2]} LR pixels and batches up to {rng.batch[2]} are accepted (the exported
range: {rng}), so a valid request carries at most {largest} image bytes. A request outside
that (or with a negative seed) is refused on its own with INVALID_ARG (HTTP 400) and one line;
other requests batched with it are served. Each model queues at most {DEFAULT_MAX_QUEUE} requests by
default: beyond that, UNAVAILABLE (HTTP 503) at once. Tile larger images on the client.

Models: {", ".join(f"`{plan.name(p)}`" for p in _ENSEMBLE_STEPS)}.
The python models (`model.py` is one import line) need this package and torch in the server's
Python: `pip install rsd-deploy` (or the source checkout) inside the Triton container.
{"TensorRT plans only load on the TensorRT version and GPU they were built for." if backend == "tensorrt" else ""}

## Serve

```bash
# NGC container (pick the release whose TensorRT built the plans); releases that have
# --http-max-input-size can cap request bytes at the size above
docker run {gpu}--rm -p8000:8000 -p8001:8001 -p8002:8002 -v $REPO:/models \\
    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
    bash -c "pip install rsd-deploy && tritonserver --model-repository=/models"

# or a tritonserver on the PATH
tritonserver --model-repository=$REPO

# or, with only `pip install nvidia-pytriton` (python backend only: stage backend `python`)
python -m rsd_deploy.export.serve $REPO --http-port 8000 --grpc-port 8001
```

## Measure

```bash
perf_analyzer -m {ensemble} -u localhost:8001 -i grpc --shape IMAGE:{opt} --shape SEED:1 \\
    --concurrency-range 1:4 --measurement-interval 5000
```

## Call

```python
import numpy as np, tritonclient.http as httpclient
client = httpclient.InferenceServerClient("localhost:8000")
image = np.zeros((1, {rng.height[1]}, {rng.width[1]}, 3), np.uint8)          # your RGB image(s)
inputs = [httpclient.InferInput("IMAGE", image.shape, "UINT8"), httpclient.InferInput("SEED", [1, 1], "INT64")]
inputs[0].set_data_from_numpy(image); inputs[1].set_data_from_numpy(np.array([[0]], np.int64))
hr = client.infer("{ensemble}", inputs).as_numpy("HR_IMAGE")
```
"""


# --- standalone entry ---------------------------------------------------------------------------


def _shape_range(args: argparse.Namespace, recorded: ShapeRange) -> ShapeRange | None:
    """The range from --batch / --lr-size (checked against the graphs later), else None: the
    graphs' own."""
    if not args.batch and not args.lr_size:
        return None

    def triple(text: str | None, option: str, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
        if not text:
            return fallback
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3:
            raise RepositoryError(f"{option}: expected MIN,OPT,MAX integers, got {text!r}")
        return values

    try:
        return ShapeRange(batch=triple(args.batch, "--batch", recorded.batch), height=triple(args.lr_size, "--lr-size", recorded.height),
                          width=triple(args.lr_size, "--lr-size", recorded.width))
    except ValueError as error:
        raise RepositoryError(f"--batch / --lr-size: {error}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsd_deploy.export.triton_repo",
                                     description="Write a Triton model repository from the graphs rsd-export wrote (they carry "
                                     "every shape and constant the repository needs).")
    parser.add_argument("--onnx-dir", type=Path, required=True, help="an rsd-export output folder with <stage>.<precision>.onnx graphs")
    parser.add_argument("--engine-dir", type=Path, help="TensorRT engines <stage>.<precision>.plan (backend tensorrt; default ONNX_DIR/engines)")
    parser.add_argument("--precision", default="fp32", help="which graphs / engines: <stage>.<precision>.onnx / .plan (default fp32)")
    parser.add_argument("--out", type=Path, required=True, help="the model repository (created if missing; may hold other models)")
    parser.add_argument("--backend", choices=STAGE_BACKENDS, default="onnxruntime")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help=f"requests each model queues before refusing (default {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--batch", help="min,opt,max batch (default: the range recorded in the graphs; must lie inside it)")
    parser.add_argument("--lr-size", help="min,opt,max LR size (default: the range recorded in the graphs; must lie inside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace the models this tool wrote there before (never others)")
    args = parser.parse_args(argv)
    try:
        graph_files = {s: args.onnx_dir / onnx_file_name(s, args.precision) for s in CHAINED_STAGES}
        for stage, path in graph_files.items():
            if not path.is_file():
                raise RepositoryError(f"--onnx-dir: no {path.name} in {args.onnx_dir} (the {stage} graph at --precision {args.precision})")
        graphs = {stage: read_stage_graph(path, stage) for stage, path in graph_files.items()}
        plan = RepositoryPlan.from_graphs(graphs, _shape_range(args, _shape_range_from_json(graphs["encoder"])))
        files = graph_files
        if args.backend == "tensorrt":
            engine_dir = args.engine_dir or args.onnx_dir / "engines"
            files = {s: engine_dir / f"{s}.{args.precision}.plan" for s in CHAINED_STAGES}
        configs = write_triton_repository(args.out, plan, files, args.backend, args.device, args.instances,
                                          overwrite=args.overwrite, max_queue=args.max_queue)
    except RepositoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {', '.join(sorted(configs))} (shapes from the graphs; every config.pbtxt parsed back; ensemble checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
