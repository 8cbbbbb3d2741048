"""The models of a Triton repository for the one-step pipeline, as Triton's own configs.

:class:`RepositoryPlan` says what the repository serves (the chain stages' tensors, the
constants of the python models, the shape range), made from the exported graphs. From it, every
``config.pbtxt`` is built as Triton's ``ModelConfig`` protobuf (from ``tritonclient``): one model
per chain stage (:data:`STAGE_BACKENDS`), one python model per host step
(:data:`.triton_models.HOST_MODELS`) and the ensemble ``<prefix>_sr`` that ties them together,
its steps in the order the tensors flow (:func:`ensemble_parts`; the decoder's ``z`` reads the
generator's ``x0`` as :data:`rsd_deploy.chain.SOURCES` says). :func:`check_repository` parses a
repository back and follows the ensemble's tensors end to end, as Triton does when it loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from rsd_deploy import chain
from rsd_deploy.pipeline import SRPipeline

from . import triton_models as models
from .artifacts import ArtifactError, GraphSet
from .stages import CHAINED_STAGES, ShapeRange, StageSpec, TensorSpec, describe_stages

# tensorrt: `tensorrt_plan` (GPU instances, CUDA graphs at the opt size); onnxruntime:
# `onnxruntime_onnx` (CPU or GPU instances); python: ONNX Runtime inside a python-backend model
# (servers with only the python backend, such as the one nvidia-pytriton bundles)
STAGE_BACKENDS = ("tensorrt", "onnxruntime", "python")
ENSEMBLE = "sr"  # the ensemble is <prefix>_sr
VERSION = "1"
DEFAULT_MAX_QUEUE = 32  # requests waiting per model; past it Triton refuses at once (UNAVAILABLE)

_SPEC_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}
_MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx", "python": "model.py"}


class RepositoryError(ArtifactError):
    """A repository (or its inputs) that Triton would reject; one line per problem."""


def _pb():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as error:
        raise RepositoryError(f"Triton repositories need tritonclient (pip install 'tritonclient[grpc]'): {error}") from None
    return model_config_pb2, text_format


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # TYPE_FP32, TYPE_UINT8, ...
    dims: tuple[int, ...]  # without the batch axis; -1 = variable


def _spec_tensor(spec: TensorSpec) -> Tensor:
    return Tensor(spec.name, _SPEC_TO_TRITON[spec.dtype], (spec.channels, -1, -1))


# --- what the repository serves -----------------------------------------------------------------


@dataclass
class RepositoryPlan:
    """The chain stages' tensors, the python models' constants and the shape range. Made from
    the graphs (:meth:`from_graphs`) or from a pipeline (:meth:`from_pipeline`, then
    :meth:`matched_to` its graphs)."""

    stages: dict[str, StageSpec]
    shape_range: ShapeRange
    prior_scale: float  # kappa * sqrt(eta_T)
    scale: int  # HR / LR size
    prefix: str = "rsd"
    precision: str = "fp32"

    @classmethod
    def from_pipeline(cls, pipe: SRPipeline, shape_range: ShapeRange, prefix: str = "rsd") -> "RepositoryPlan":
        stages = describe_stages(pipe)
        return cls({name: stages[name] for name in CHAINED_STAGES}, shape_range, pipe.schedule.prior_scale, pipe.codec.scale, prefix)

    @classmethod
    def from_graphs(cls, graphs: GraphSet, shape_range: ShapeRange | None = None, prefix: str = "rsd") -> "RepositoryPlan":
        """The plan the graphs describe; ``shape_range`` (default: the range rsd-export recorded)
        must lie inside the recorded one."""
        missing = [s for s in CHAINED_STAGES if s not in graphs.graphs]
        if missing:
            raise RepositoryError(f"no graph given for the {', '.join(missing)} stage{'s' if len(missing) > 1 else ''}")
        if shape_range is None:
            shape_range = graphs.shape_range
        graphs.check_fits(shape_range, "the repository's range")
        stages = {name: graphs.graphs[name].spec() for name in CHAINED_STAGES}
        return cls(stages, shape_range, graphs.prior_scale, graphs.scale, prefix, graphs.precision)

    def matched_to(self, graphs: GraphSet) -> "RepositoryPlan":
        """This plan checked against the graphs it will serve; returns the graphs' plan (their
        types) with this plan's prefix and shape range. A mismatch is one line naming the file."""
        served = RepositoryPlan.from_graphs(graphs, self.shape_range, self.prefix)
        graphs.check_stages(self.stages, self.scale, self.prior_scale)
        return served

    def name(self, part: str) -> str:
        return f"{self.prefix}_{part}"

    def model_names(self) -> list[str]:
        return [self.name(part) for part in (*ensemble_parts(self), ENSEMBLE)]

    def tensor(self, name: str) -> TensorSpec:
        """A chain tensor as the stage that reads or writes it declares it."""
        return next(t for spec in self.stages.values() for t in (*spec.inputs, *spec.outputs) if t.name == name)

    def has(self, name: str) -> bool:
        return any(t.name == name for spec in self.stages.values() for t in (*spec.inputs, *spec.outputs))

    def limits(self) -> dict[str, int]:
        """The LR sizes every python model accepts (padded, multiples of 64)."""
        rng = self.shape_range
        return {"min_lr_height": rng.height[0], "min_lr_width": rng.width[0], "max_lr_height": rng.height[2], "max_lr_width": rng.width[2]}


def _stage_reads(plan: RepositoryPlan, stage: str) -> list[tuple[str, str]]:
    """(model input, ensemble tensor) of a stage model."""
    return [(t.name, chain.SOURCES.get((stage, t.name), t.name)) for t in plan.stages[stage].inputs]


def ensemble_parts(plan: RepositoryPlan) -> list[str]:
    """The ensemble's steps (host models and chain stages) in the order their tensors flow."""
    steps = [(cls.part, set(cls.reads)) for cls in models.HOST_MODELS]
    steps += [(stage, {source for _, source in _stage_reads(plan, stage)}) for stage in CHAINED_STAGES]
    writes = {cls.part: set(cls.writes) for cls in models.HOST_MODELS}
    writes.update({stage: set(plan.stages[stage].output_names) for stage in CHAINED_STAGES})
    available, order = {models.IMAGE, models.SEED}, []
    while len(order) < len(steps):
        part = next((p for p, reads in steps if p not in order and reads <= available), None)
        if part is None:
            raise RepositoryError(f"the ensemble cannot be ordered: {[p for p, _ in steps if p not in order]} wait for tensors no step makes")
        order.append(part)
        available |= writes[part]
    return order


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
    """Config of one stage model: TensorRT plan, ONNX Runtime graph, or python + ONNX Runtime.
    Its parameters say the precision and shape range (what a client such as
    :class:`~rsd_deploy.export.runners.TritonRunner` needs to know)."""
    pb, _ = _pb()
    spec = plan.stages[stage]
    rng = plan.shape_range
    kwargs = {"tensorrt": {"platform": "tensorrt_plan"}, "onnxruntime": {"platform": "onnxruntime_onnx"}, "python": {"backend": "python"}}[backend]
    config = _config(plan.name(stage), rng.batch[2], [_spec_tensor(t) for t in spec.inputs], [_spec_tensor(t) for t in spec.outputs], **kwargs)
    _instances(config, "gpu" if backend == "tensorrt" else device, instances)
    _batching(config, delay_us, max_queue)
    _parameters(config, {"precision": plan.precision, "shape_range": json.dumps(rng.to_json())})
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


def _host_tensor(plan: RepositoryPlan, name: str) -> Tensor:
    """A tensor of a host model: the repository's own, or a chain tensor as its stage declares it."""
    own = {
        models.IMAGE: Tensor(models.IMAGE, "TYPE_UINT8", (-1, -1, 3)),
        models.SEED: Tensor(models.SEED, "TYPE_INT64", (1,)),
        models.HR_IMAGE: Tensor(models.HR_IMAGE, "TYPE_UINT8", (-1, -1, 3)),
        models.LR_SIZE: Tensor(models.LR_SIZE, "TYPE_INT32", (2,)),
    }
    if name in own:
        return own[name]
    if name == models.EPS:  # the prior noise has x_t's shape and type
        return replace(_spec_tensor(plan.tensor(models.X_T)), name=name)
    return _spec_tensor(plan.tensor(name))


def _host_parameters(plan: RepositoryPlan, part: str) -> dict:
    latent = plan.tensor(models.X_T).channels
    noise = plan.tensor(models.NOISE_MAP).channels if plan.has(models.NOISE_MAP) else 0
    return {
        models.Preprocess.part: {"scale": plan.scale, "latent_channels": latent, "noise_channels": noise},
        models.PriorSample.part: {"prior_scale": repr(plan.prior_scale)},
        models.Postprocess.part: {"scale": plan.scale},
    }[part]


def host_config(plan: RepositoryPlan, model: type, delay_us: int, max_queue: int = DEFAULT_MAX_QUEUE):
    """Config of the python model of one host step (a class of :data:`.triton_models.HOST_MODELS`)."""
    inputs = [_host_tensor(plan, name) for name in model.reads]
    # a chain tensor no stage takes (the noise map of a model without one) is not written
    outputs = [_host_tensor(plan, name) for name in model.writes if name not in chain.GENERATOR.optional or plan.has(name)]
    config = _config(plan.name(model.part), plan.shape_range.batch[2], inputs, outputs, backend="python")
    _instances(config, "cpu", 1)
    _batching(config, delay_us, max_queue)
    _parameters(config, {**_host_parameters(plan, model.part), **plan.limits()})
    return config


def ensemble_config(plan: RepositoryPlan, configs: dict):
    """The ensemble: each step maps a model's tensors to the ensemble tensors of the chain."""
    parts = ensemble_parts(plan)
    first, last = configs[plan.name(parts[0])], configs[plan.name(parts[-1])]
    pb, _ = _pb()

    def as_tensors(values):
        return [Tensor(v.name, pb.DataType.Name(v.data_type), tuple(v.dims)) for v in values]

    config = _config(plan.name(ENSEMBLE), plan.shape_range.batch[2], as_tensors(first.input), as_tensors(last.output), platform="ensemble")
    for part in parts:
        model = configs[plan.name(part)]
        step = config.ensemble_scheduling.step.add(model_name=model.name, model_version=-1)
        for tensor in model.input:
            step.input_map[tensor.name] = chain.SOURCES.get((part, tensor.name), tensor.name)
        for tensor in model.output:
            step.output_map[tensor.name] = tensor.name
    return config


# --- checking ---------------------------------------------------------------------------------


def _dims_compatible(a, b) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def check_ensemble(ensemble, configs: dict) -> list[str]:
    """Problems with an ensemble's tensor flow: unknown models or tensors, tensors used before
    they are produced or produced twice, and type / dims mismatches along every edge."""
    pb, _ = _pb()
    problems = []
    available = {t.name: (t.data_type, tuple(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs.get(step.model_name)
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
        elif available[tensor.name][0] != tensor.data_type or not _dims_compatible(available[tensor.name][1], tuple(tensor.dims)):
            problems.append(f"{ensemble.name}: output {tensor.name!r} is {available[tensor.name]}, declared {(tensor.data_type, list(tensor.dims))}")
    return problems


def read_config(path: Path):
    """Parse one ``config.pbtxt`` with Triton's ``ModelConfig`` protobuf."""
    pb, text_format = _pb()
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except text_format.ParseError as error:
        raise RepositoryError(f"{path}: not a valid Triton model config ({error})") from None


def config_text(config) -> str:
    """A config in the text format Triton reads (``config.pbtxt``)."""
    _, text_format = _pb()
    return text_format.MessageToString(config)


def check_repository(directory: str | Path, names: list[str] | None = None) -> dict:
    """Parse every ``config.pbtxt`` (or only those of the models in ``names``: a shared
    repository's other models are not ours to judge), check names, model files and ensembles;
    return the configs by model name. Raises :class:`RepositoryError` listing every problem."""
    directory = Path(directory)
    configs, problems = {}, []
    paths = sorted(directory.glob("*/config.pbtxt")) if names is None else [directory / n / "config.pbtxt" for n in names]
    for path in paths:
        if not path.is_file():
            problems.append(f"{path.parent}: no config.pbtxt")
            continue
        config = read_config(path)
        if config.name != path.parent.name:
            problems.append(f"{path}: name {config.name!r} differs from its folder {path.parent.name!r}")
        configs[config.name] = config
        kind = config.platform or config.backend
        if kind in _MODEL_FILES and not (path.parent / VERSION / _MODEL_FILES[kind]).is_file():
            problems.append(f"{path.parent}: {kind} model without {VERSION}/{_MODEL_FILES[kind]}")
        if config.backend == "python" and config.parameters.get("providers") and not (path.parent / VERSION / "model.onnx").is_file():
            problems.append(f"{path.parent}: ONNX Runtime python model without {VERSION}/model.onnx")
    if not configs and not problems:
        problems.append(f"{directory}: no */config.pbtxt")
    for config in configs.values():
        if config.platform == "ensemble":
            problems += check_ensemble(config, configs)
    if problems:
        raise RepositoryError("\n".join(problems))
    return configs
