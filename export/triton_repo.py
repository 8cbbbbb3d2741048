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
Tensor names, channel counts and ranges come from :mod:`.stages`; types from the ONNX files.

Every ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf (from ``tritonclient``)
and written in its text format; :func:`check_repository` parses a repository back and follows
the ensemble's tensors end to end. Python models need this package (and torch, for
pre-processing) in the server's Python environment.

Standalone: ``python -m rsd_deploy.export.triton_repo --onnx-dir EXPORT_DIR --out REPO``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from rsd_deploy.atomic import atomic_path
from rsd_deploy.pipeline import SRPipeline

from .stages import CHAINED_STAGES, ShapeRange, StageSpec, describe_stages, onnx_file_name

STAGE_BACKENDS = ("tensorrt", "onnxruntime", "python")
MANIFEST = "rsd_repository.json"  # marks a directory this module wrote (safe to overwrite)
VERSION = "1"

# ONNX TensorProto element types -> Triton data types (the ones an SR graph can carry)
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 2: "TYPE_UINT8", 6: "TYPE_INT32", 7: "TYPE_INT64"}
_SPEC_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}


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


def _spec_tensor(spec, data_type: str) -> Tensor:
    return Tensor(spec.name, data_type, (spec.channels, -1, -1))


def _read_onnx(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise RepositoryError(f"{path}: not a readable ONNX file ({error})") from None


def onnx_io_types(model, path: Path, stage: StageSpec) -> dict[str, str]:
    """Triton types of a stage graph's (``model``, read from ``path``) inputs and outputs,
    checked against the stage's names."""
    graph = model.graph
    values = {v.name: v for v in [*graph.input, *graph.output]}
    expected = [*stage.input_names, *stage.output_names]
    missing = [n for n in expected if n not in values]
    if missing:
        raise RepositoryError(f"{path}: expected the {stage.name} stage's tensors {expected}, missing {missing}")
    types = {}
    for name in expected:
        elem = values[name].type.tensor_type.elem_type
        if elem not in _ONNX_TO_TRITON:
            raise RepositoryError(f"{path}: tensor {name!r} has ONNX element type {elem}, which no stage uses")
        types[name] = _ONNX_TO_TRITON[elem]
    return types


def _external_data_files(model, path: Path) -> list[Path]:
    """Files an ONNX graph (``model``, read from ``path``) keeps its weights in
    (``model.onnx.data``...), to copy beside it."""
    import onnx

    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [path.parent / location for location in sorted(locations)]


@dataclass
class RepositoryPlan:
    """Everything :func:`write_triton_repository` needs, derived from a pipeline's stages."""

    stages: dict[str, StageSpec]
    shape_range: ShapeRange
    prior_scale: float  # kappa * sqrt(eta_T)
    scale: int  # HR / LR size
    prefix: str = "rsd"
    io_types: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> tensor -> TYPE_*

    @classmethod
    def from_pipeline(cls, pipe: SRPipeline, shape_range: ShapeRange, prefix: str = "rsd") -> "RepositoryPlan":
        schedule = pipe.schedule
        return cls(describe_stages(pipe), shape_range, schedule.kappa * float(schedule.sqrt_etas[-1]), pipe.codec.scale, prefix)

    def name(self, part: str) -> str:
        return f"{self.prefix}_{part}"

    def type_of(self, stage: str, tensor: str) -> str:
        spec = next(t for t in [*self.stages[stage].inputs, *self.stages[stage].outputs] if t.name == tensor)
        return self.io_types.get(stage, {}).get(tensor, _SPEC_TO_TRITON[spec.dtype])

    @property
    def latent_channels(self) -> int:
        return self.stages["generator"].inputs[0].channels

    @property
    def noise_channels(self) -> int:
        specs = {t.name: t for t in self.stages["generator"].inputs}
        return specs["noise_map"].channels if "noise_map" in specs else 0


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


def _batching(config, delay_us: int) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = delay_us


def stage_config(plan: RepositoryPlan, stage: str, backend: str, device: str, instances: int, delay_us: int):
    """Config of one stage model: TensorRT plan, ONNX Runtime graph, or python + ONNX Runtime."""
    pb, _ = _pb()
    spec = plan.stages[stage]
    rng = plan.shape_range
    inputs = [_spec_tensor(t, plan.type_of(stage, t.name)) for t in spec.inputs]
    outputs = [_spec_tensor(t, plan.type_of(stage, t.name)) for t in spec.outputs]
    kwargs = {
        "tensorrt": {"platform": "tensorrt_plan"},
        "onnxruntime": {"platform": "onnxruntime_onnx"},
        "python": {"backend": "python"},
    }[backend]
    config = _config(plan.name(stage), rng.batch[2], inputs, outputs, **kwargs)
    _instances(config, "gpu" if backend == "tensorrt" else device, instances)
    _batching(config, delay_us)
    if backend == "python":
        providers = "CUDAExecutionProvider,CPUExecutionProvider" if device == "gpu" else "CPUExecutionProvider"
        config.parameters["providers"].string_value = providers
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
                data_type=pb.DataType.Value(plan.type_of(stage, tensor.name)),
                dims=list(tensor.shape(1, rng.height[1], rng.width[1])[1:]),
                random_data=True,
            )
        )
    return config


def _python_config(plan: RepositoryPlan, part: str, inputs, outputs, parameters: dict, delay_us: int):
    config = _config(plan.name(part), plan.shape_range.batch[2], inputs, outputs, backend="python")
    _instances(config, "cpu", 1)
    _batching(config, delay_us)
    for key, value in parameters.items():
        config.parameters[key].string_value = str(value)
    return config


def preprocess_config(plan: RepositoryPlan, delay_us: int):
    gen = {t.name: t for t in plan.stages["generator"].inputs}
    outputs = [
        _spec_tensor(plan.stages["encoder"].inputs[0], plan.type_of("encoder", "lq_up")),
        _spec_tensor(gen["lq"], plan.type_of("generator", "lq")),
        _spec_tensor(gen["x_t"], plan.type_of("generator", "x_t")),  # same shape as eps
        Tensor("lr_size", "TYPE_INT32", (2,)),
    ]
    outputs[2] = Tensor("eps", outputs[2].data_type, outputs[2].dims)
    if "noise_map" in gen:
        outputs.append(_spec_tensor(gen["noise_map"], plan.type_of("generator", "noise_map")))
    rng = plan.shape_range
    params = {
        "scale": plan.scale,
        "latent_channels": plan.latent_channels,
        "noise_channels": plan.noise_channels,
        "min_lr_height": rng.height[0],
        "min_lr_width": rng.width[0],
        "max_lr_height": rng.height[2],
        "max_lr_width": rng.width[2],
    }
    inputs = [Tensor("IMAGE", "TYPE_UINT8", (-1, -1, 3)), Tensor("SEED", "TYPE_INT64", (1,))]
    return _python_config(plan, "preprocess", inputs, outputs, params, delay_us)


def prior_config(plan: RepositoryPlan, delay_us: int):
    z_y = plan.stages["encoder"].outputs[0]
    x_t = plan.stages["generator"].inputs[0]
    inputs = [_spec_tensor(z_y, plan.type_of("encoder", "z_y")), Tensor("eps", plan.type_of("generator", "x_t"), (x_t.channels, -1, -1))]
    outputs = [_spec_tensor(x_t, plan.type_of("generator", "x_t"))]
    return _python_config(plan, "prior", inputs, outputs, {"prior_scale": repr(plan.prior_scale)}, delay_us)


def postprocess_config(plan: RepositoryPlan, delay_us: int):
    hr = plan.stages["decoder"].outputs[0]
    inputs = [_spec_tensor(hr, plan.type_of("decoder", "hr")), Tensor("lr_size", "TYPE_INT32", (2,))]
    outputs = [Tensor("HR_IMAGE", "TYPE_UINT8", (-1, -1, 3))]
    return _python_config(plan, "postprocess", inputs, outputs, {"scale": plan.scale}, delay_us)


def ensemble_config(plan: RepositoryPlan, models: dict):
    """The ensemble: each step maps a model's tensors to ensemble tensors of the same name."""
    pb, _ = _pb()
    pre, post = models[plan.name("preprocess")], models[plan.name("postprocess")]

    def as_tensors(values):
        return [Tensor(v.name, pb.DataType.Name(v.data_type), tuple(v.dims)) for v in values]

    config = _config(plan.name("sr"), plan.shape_range.batch[2], as_tensors(pre.input), as_tensors(post.output), platform="ensemble")
    renames = {("decoder", "z"): "x0"}  # the decoder's input z is the generator's output x0
    for part in ("preprocess", "encoder", "prior", "generator", "decoder", "postprocess"):
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


def check_repository(directory: str | Path) -> dict:
    """Parse every ``config.pbtxt``, check names, model files and ensembles; return the configs
    by model name. Raises :class:`RepositoryError` listing every problem."""
    directory = Path(directory)
    models, problems = {}, []
    for path in sorted(directory.glob("*/config.pbtxt")):
        config = read_config(path)
        if config.name != path.parent.name:
            problems.append(f"{path}: name {config.name!r} differs from its folder {path.parent.name!r}")
        models[config.name] = config
        kind = config.platform or config.backend
        if kind in _MODEL_FILES and not (path.parent / VERSION / _MODEL_FILES[kind]).is_file():
            problems.append(f"{path.parent}: {kind} model without {VERSION}/{_MODEL_FILES[kind]}")
        if config.backend == "python" and config.parameters.get("providers") and not (path.parent / VERSION / "model.onnx").is_file():
            problems.append(f"{path.parent}: ONNX Runtime python model without {VERSION}/model.onnx")
    if not models:
        problems.append(f"{directory}: no */config.pbtxt")
    for config in models.values():
        if config.platform == "ensemble":
            problems += check_ensemble(config, models)
    if problems:
        raise RepositoryError("\n".join(problems))
    return models


# --- writing ----------------------------------------------------------------------------------


_PYTHON_MODEL = '"""Triton python model: the implementation is {cls} in rsd_deploy.export.serve."""\n\nfrom rsd_deploy.export.serve import {cls} as TritonPythonModel  # noqa: F401\n'


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _write_model(directory: Path, config, files: dict[str, Path | str]) -> None:
    _, text_format = _pb()
    folder = directory / config.name
    for name, content in files.items():
        if isinstance(content, Path):
            _copy(content, folder / VERSION / name)
        else:
            _write_text(folder / VERSION / name, content)
    _write_text(folder / "config.pbtxt", text_format.MessageToString(config))


def write_triton_repository(
    out_dir: str | Path,
    plan: RepositoryPlan,
    model_files: dict[str, str | Path],
    backend: str = "onnxruntime",
    device: str = "cpu",
    instances: int = 1,
    queue_delay_us: int = 2000,
    overwrite: bool = False,
) -> dict:
    """Write a model repository; return its configs by model name (checked as Triton would).

    ``model_files``: stage name -> ``.onnx`` file (backends ``onnxruntime`` / ``python``) or
    ``.plan`` engine (``tensorrt``) for ``encoder``, ``generator`` and ``decoder``. ``device``:
    ``cpu`` or ``gpu`` instances for ONNX Runtime stages (TensorRT is always GPU).
    """
    if backend not in STAGE_BACKENDS:
        raise RepositoryError(f"unknown stage backend {backend!r}; choose from {STAGE_BACKENDS}")
    if device not in ("cpu", "gpu"):
        raise RepositoryError(f"device must be 'cpu' or 'gpu', got {device!r}")
    out_dir = Path(out_dir)
    suffix = ".plan" if backend == "tensorrt" else ".onnx"
    files, weight_files = {}, {}
    plan = replace(plan, io_types={})  # this call's graphs decide the types; the caller's plan stays as it was
    for stage in CHAINED_STAGES:
        if stage not in model_files:
            raise RepositoryError(f"no {suffix} file given for the {stage} stage")
        path = Path(model_files[stage])
        if not path.is_file() or path.suffix != suffix:
            raise RepositoryError(f"{path}: expected an existing {suffix} file for the {stage} stage ({backend} backend)")
        files[stage] = path
        if suffix == ".onnx":
            model = _read_onnx(path)  # read once: a full-size generator graph is ~0.5 GB
            plan.io_types[stage] = onnx_io_types(model, path, plan.stages[stage])
            weight_files[stage] = _external_data_files(model, path)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise RepositoryError(f"{out_dir}: exists and is not empty (pass overwrite=True / --overwrite to replace it)")
        if not (out_dir / MANIFEST).is_file():
            raise RepositoryError(f"{out_dir}: not written by rsd-deploy (no {MANIFEST}); refusing to replace it")
        shutil.rmtree(out_dir)

    configs = {}
    for stage in CHAINED_STAGES:
        config = stage_config(plan, stage, backend, device, instances, queue_delay_us)
        model_file = {"tensorrt": "model.plan", "onnxruntime": "model.onnx", "python": "model.onnx"}[backend]
        stage_files: dict[str, Path | str] = {model_file: files[stage]}
        if suffix == ".onnx":
            stage_files.update({p.name: p for p in weight_files[stage]})
        if backend == "python":
            stage_files["model.py"] = _PYTHON_MODEL.format(cls="OnnxRuntimeStage")
        _write_model(out_dir, config, stage_files)
        configs[config.name] = config
    for part, build, cls in [
        ("preprocess", preprocess_config, "Preprocess"),
        ("prior", prior_config, "PriorSample"),
        ("postprocess", postprocess_config, "Postprocess"),
    ]:
        config = build(plan, queue_delay_us)
        _write_model(out_dir, config, {"model.py": _PYTHON_MODEL.format(cls=cls)})
        configs[config.name] = config
    ensemble = ensemble_config(plan, configs)
    _, text_format = _pb()
    (out_dir / ensemble.name / VERSION).mkdir(parents=True, exist_ok=True)  # ensembles need an (empty) version folder
    _write_text(out_dir / ensemble.name / "config.pbtxt", text_format.MessageToString(ensemble))
    configs[ensemble.name] = ensemble
    _write_text(out_dir / "README.md", _readme(plan, backend, device))
    manifest = {
        "ensemble": ensemble.name,
        "stage_backend": backend,
        "device": device,
        "shape_range": plan.shape_range.to_json(),
        "models": sorted(configs),
        "sources": {stage: str(path) for stage, path in files.items()},
    }
    _write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return check_repository(out_dir)  # parse back what was written, as Triton will


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
    else the ONNX graphs for ONNX Runtime. Returns (configs, the stage backend used)."""
    engines = engines or {}
    backend = "tensorrt" if all(stage in engines for stage in CHAINED_STAGES) else "onnxruntime"
    chosen = engines if backend == "tensorrt" else graphs
    files = {stage: chosen[stage] for stage in CHAINED_STAGES if stage in chosen}  # a missing one is reported by the writer
    plan = RepositoryPlan.from_pipeline(pipe, shape_range)
    return write_triton_repository(out_dir, plan, files, backend, "gpu" if backend == "tensorrt" else device, overwrite=overwrite), backend


def _readme(plan: RepositoryPlan, backend: str, device: str) -> str:
    rng = plan.shape_range
    ensemble = plan.name("sr")
    opt = f"{rng.height[1]},{rng.width[1]},3"
    gpu = "--gpus all " if backend == "tensorrt" or device == "gpu" else ""
    return f"""# Triton model repository: RSD one-step x4 super-resolution

Written by `rsd_deploy.export.triton_repo`; stage models use the `{backend}` backend
({device if backend != "tensorrt" else "gpu"} instances). Send requests to the ensemble `{ensemble}`:

| tensor | type | shape | meaning |
|---|---|---|---|
| `IMAGE` (in) | UINT8 | [B, h, w, 3] | RGB LR images, one size per request |
| `SEED` (in) | INT64 | [B, 1] | noise seed per image (same seed, same output) |
| `HR_IMAGE` (out) | UINT8 | [B, {plan.scale}h, {plan.scale}w, 3] | x{plan.scale} super-resolved images |

LR images are padded to multiples of 64 inside; padded sizes from {rng.height[0]}x{rng.width[0]} to
{rng.height[2]}x{rng.width[2]} LR pixels and batches up to {rng.batch[2]} are accepted (the exported
range: {rng}). Larger images are refused with an error: tile them on the client.

Models: {", ".join(f"`{plan.name(p)}`" for p in ("preprocess", "encoder", "prior", "generator", "decoder", "postprocess"))}.
The python models (`model.py` is one import line) need this package and torch in the server's
Python: `pip install rsd-deploy` (or the source checkout) inside the Triton container.
{"TensorRT plans only load on the TensorRT version and GPU they were built for." if backend == "tensorrt" else ""}

## Serve

```bash
# NGC container (pick the release whose TensorRT built the plans)
docker run {gpu}--rm -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD:/models \\
    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
    bash -c "pip install rsd-deploy && tritonserver --model-repository=/models"

# or a tritonserver on the PATH
tritonserver --model-repository=$PWD

# or, with only `pip install nvidia-pytriton` (python backend only: stage backend `python`)
python -m rsd_deploy.export.serve $PWD --http-port 8000 --grpc-port 8001
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


def _shape_range(args: argparse.Namespace, onnx_file: Path | None) -> ShapeRange:
    """The range from --batch / --lr-size, else the one rsd-export recorded in the graph."""
    recorded = {}
    if onnx_file is not None and onnx_file.is_file():
        from .onnx_export import read_metadata

        recorded = read_metadata(onnx_file).get("shape_range", {})
    default = ShapeRange()

    def triple(text: str | None, key: str, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
        if text:
            values = tuple(int(v) for v in text.split(","))
            if len(values) != 3:
                raise RepositoryError(f"expected min,opt,max, got {text!r}")
            return values
        return tuple(recorded.get(key, fallback))

    size = args.lr_size
    return ShapeRange(
        batch=triple(args.batch, "batch", default.batch),
        height=triple(size, "lr_height", default.height),
        width=triple(size, "lr_width", default.width),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsd_deploy.export.triton_repo", description="Write a Triton model repository from exported stages.")
    parser.add_argument("--onnx-dir", type=Path, help="an rsd-export output directory with encoder/generator/decoder .onnx files")
    parser.add_argument("--engine-dir", type=Path, help="TensorRT engines named <stage>.<precision>.plan (backend tensorrt)")
    parser.add_argument("--precision", default="fp32", help="which graphs / engines: <stage>.<precision>.onnx / .plan (default fp32)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backend", choices=STAGE_BACKENDS, default="onnxruntime")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--preset", default="rsd-x4", help="architecture of the exported model (for the schedule and stage names)")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint that was exported (directory or UNet file)")
    parser.add_argument("--codec", type=Path, help="codec checkpoint when --checkpoint is a UNet file")
    parser.add_argument("--batch", help="min,opt,max batch (default: the range recorded in the ONNX graphs, else 1,1,4)")
    parser.add_argument("--lr-size", help="min,opt,max LR size (default: the range recorded in the ONNX graphs, else 64,64,256)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    from rsd_deploy.checkpoints import CheckpointError, build_pipeline, load_pipeline

    try:
        pipe = load_pipeline(args.checkpoint, args.codec) if args.checkpoint else build_pipeline(args.preset)
        if args.backend == "tensorrt":
            if not args.engine_dir:
                raise RepositoryError("--backend tensorrt needs --engine-dir with <stage>.<precision>.plan engines")
            files = {s: args.engine_dir / f"{s}.{args.precision}.plan" for s in CHAINED_STAGES}
        else:
            if not args.onnx_dir:
                raise RepositoryError(f"--backend {args.backend} needs --onnx-dir")
            files = {s: args.onnx_dir / onnx_file_name(s, args.precision) for s in CHAINED_STAGES}
        plan = RepositoryPlan.from_pipeline(pipe, _shape_range(args, args.onnx_dir / onnx_file_name("encoder", args.precision) if args.onnx_dir else None))
        configs = write_triton_repository(args.out, plan, files, args.backend, args.device, args.instances, overwrite=args.overwrite)
    except (RepositoryError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {', '.join(sorted(configs))} (every config.pbtxt parsed back; ensemble checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
