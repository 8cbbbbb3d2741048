"""Writing a Triton Inference Server model repository for the one-step pipeline.

:func:`write_triton_repository` lays out one model per chain stage plus python-backend host
steps (:mod:`.triton_models`), tied together by an ensemble (``<prefix>_sr``), every config built
and checked by :mod:`.triton_config`::

    IMAGE uint8 (B, h, w, 3), SEED int64 (B, 1)
      -> <prefix>_preprocess  (python: to [-1, 1], pad to 64, bicubic x4, seeded noise)  lq_up, lq, eps, noise_map, lr_size
      -> <prefix>_encoder     (stage)                                                     z_y
      -> <prefix>_prior       (python: x_T = z_y + kappa sqrt(eta_T) eps)                 x_t
      -> <prefix>_generator   (stage)                                                     x0
      -> <prefix>_decoder     (stage)                                                     hr
      -> <prefix>_postprocess (python: crop, uint8)                                       HR_IMAGE uint8 (B, 4h, 4w, 3)

Stage models take one of :data:`TRITON_BACKENDS`, and each form needs its server:

- ``python``: the ONNX graphs in ONNX Runtime inside python-backend models; loads in any Triton
  with the python backend, including the ``tritonserver`` bundled with ``nvidia-pytriton``
  (:mod:`.triton_server`) and the NGC containers.
- ``onnxruntime``: ``onnxruntime_onnx`` models; needs Triton's ONNX Runtime backend (NGC
  ``tritonserver:<yy.mm>-py3`` containers), not in the bundled server.
- ``tensorrt``: ``tensorrt_plan`` models of TensorRT 10/11 engines, GPU instances, CUDA graphs;
  needs the TensorRT backend of the TensorRT version that built them (NGC containers).
- ``auto`` (the default): ``tensorrt`` when every stage has an engine, else ``python``.

The python host steps need this package (and torch) in the server's Python in every form.
Writing into a shared repository replaces only the models rsd-deploy wrote, each swapped in
whole (:mod:`.triton_swap`).

Standalone: ``python -m rsd_deploy.export.triton_repo --onnx-dir EXPORT_DIR --out REPO``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rsd_deploy.cli.args import OneLineParser, UsageError, parse_range, run_command
from rsd_deploy.errors import one_line
from rsd_deploy.pipeline import SRPipeline

from . import triton_models as models
from .artifacts import ArtifactError, GraphSet, read_export
from .stages import CHAINED_STAGES, ShapeRange
from .triton_config import (
    DEFAULT_MAX_QUEUE,
    ENSEMBLE,
    STAGE_BACKENDS,
    VERSION,
    RepositoryError,
    RepositoryPlan,
    check_repository,
    config_text,
    ensemble_config,
    ensemble_parts,
    host_config,
    stage_config,
)
from .triton_swap import replace_models

TRITON_BACKENDS = ("auto", *STAGE_BACKENDS)
_MODEL_FILE = {"tensorrt": "model.plan", "onnxruntime": "model.onnx", "python": "model.onnx"}
_PYTHON_MODEL = '"""Triton python model: the implementation is {cls} in rsd_deploy.export.triton_models."""\n\nfrom rsd_deploy.export.triton_models import {cls} as TritonPythonModel  # noqa: F401\n'


def resolve_backend(backend: str, model_files: dict[str, str | Path]) -> str:
    """``auto`` -> ``tensorrt`` for ``.plan`` engines of every stage, else ``python`` (the form
    every Triton with a python backend loads)."""
    if backend not in TRITON_BACKENDS:
        raise RepositoryError(f"unknown stage backend {backend!r}; choose from {', '.join(TRITON_BACKENDS)}")
    if backend != "auto":
        return backend
    engines = all(Path(model_files.get(stage, "")).suffix == ".plan" for stage in CHAINED_STAGES)
    return "tensorrt" if engines else "python"


def write_triton_repository(
    out_dir: str | Path,
    plan: RepositoryPlan,
    model_files: dict[str, str | Path],
    backend: str = "auto",
    device: str = "cpu",
    instances: int = 1,
    queue_delay_us: int = 2000,
    overwrite: bool = False,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> dict:
    """Write this pipeline's models into the repository ``out_dir`` (created if missing, may hold
    other models); return their configs by model name (checked as Triton would).

    ``model_files``: stage name -> ``.onnx`` graph (backends ``python`` / ``onnxruntime``: the
    plan is checked against the graphs and takes their types) or ``.plan`` engine
    (``tensorrt``) for every chain stage. ``device``: ``cpu`` or ``gpu`` instances for ONNX
    Runtime stages (TensorRT is always GPU).

    Only models named in the repository's ``rsd_repository.json`` are replaced (with
    ``overwrite``); a folder with one of this plan's names that the manifest does not list is
    refused. New models are built and checked beside the repository, then each is swapped in
    whole, so a server (or a kill -9) never sees a half-written model; a run that finds an
    interrupted update finishes it first.
    """
    backend = resolve_backend(backend, model_files)
    if device not in ("cpu", "gpu"):
        raise RepositoryError(f"device must be 'cpu' or 'gpu', got {device!r}")
    for what, value, low in (("instances", instances, 1), ("queue_delay_us", queue_delay_us, 0), ("max_queue", max_queue, 1)):
        if not isinstance(value, int) or value < low:
            raise RepositoryError(f"{what} must be an integer >= {low}, got {value!r}")
    suffix = Path(_MODEL_FILE[backend]).suffix
    files: dict[str, list[Path]] = {}  # stage -> the model file, then its external weights
    for stage in CHAINED_STAGES:
        if stage not in model_files:
            raise RepositoryError(f"no {suffix} file given for the {stage} stage")
        path = Path(model_files[stage])
        if not path.is_file() or path.suffix != suffix:
            raise RepositoryError(f"{path}: expected an existing {suffix} file for the {stage} stage ({backend} backend)")
        files[stage] = [path]
    if suffix == ".onnx":
        graphs = GraphSet.read({stage: paths[0] for stage, paths in files.items()})
        for stage, graph in graphs.graphs.items():
            if graph.attention == "plugin":
                raise RepositoryError(f"{graph.path}: has TensorRT plugin attention nodes, which ONNX Runtime cannot run; "
                                      "serve its engine with the tensorrt backend")
            files[stage] += graph.weight_files
        plan = plan.matched_to(graphs)
    names = plan.model_names()
    manifest = {
        "written_by": __name__,
        "ensemble": plan.name(ENSEMBLE),
        "stage_backend": backend,
        "device": device,
        "shape_range": plan.shape_range.to_json(),
        "sources": {stage: str(paths[0]) for stage, paths in files.items()},
    }

    def build(staging: Path) -> None:
        _build(staging, plan, files, backend, device, instances, queue_delay_us, max_queue)
        check_repository(staging, names)  # every config parsed back and the ensemble followed, before anything moves

    repository = replace_models(out_dir, names, overwrite, build, manifest)
    return check_repository(repository, names)  # parse back what is now served


def _model_folder(staging: Path, config, files: dict[str, Path | str]) -> None:
    folder = staging / config.name
    (folder / VERSION).mkdir(parents=True)  # ensembles too need an (empty) version folder
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, folder / VERSION / name)
        else:
            (folder / VERSION / name).write_text(content)
    (folder / "config.pbtxt").write_text(config_text(config))


def _build(staging: Path, plan: RepositoryPlan, files: dict[str, list[Path]], backend: str, device: str, instances: int,
           delay_us: int, max_queue: int) -> None:
    """Every model of the plan, complete, into ``staging``."""
    configs = {}
    for stage in CHAINED_STAGES:
        config = stage_config(plan, stage, backend, device, instances, delay_us, max_queue)
        model, *weights = files[stage]
        stage_files: dict[str, Path | str] = {_MODEL_FILE[backend]: model, **{p.name: p for p in weights}}
        if backend == "python":
            stage_files["model.py"] = _PYTHON_MODEL.format(cls=models.OnnxRuntimeStage.__name__)
        _model_folder(staging, config, stage_files)
        configs[config.name] = config
    for model in models.HOST_MODELS:
        config = host_config(plan, model, delay_us, max_queue)
        _model_folder(staging, config, {"model.py": _PYTHON_MODEL.format(cls=model.__name__)})
        configs[config.name] = config
    ensemble = ensemble_config(plan, configs)
    _model_folder(staging, ensemble, {})
    (staging / ensemble.name / "README.md").write_text(_readme(plan, backend, device))


def repository_from_export(
    out_dir: str | Path,
    pipe: SRPipeline,
    shape_range: ShapeRange,
    graphs: dict[str, Path],
    engines: dict[str, Path] | None = None,
    backend: str = "auto",
    device: str = "cpu",
    overwrite: bool = False,
) -> tuple[dict, str]:
    """What ``rsd-export --triton-repo`` writes: ``backend`` (see :data:`TRITON_BACKENDS`; auto:
    the TensorRT 10/11 ``engines`` when every stage has one, else the python form of the ONNX
    graphs); the pipeline's plan is checked against the graphs either way. Returns (configs,
    the stage backend used)."""
    engines = engines or {}
    backend = resolve_backend(backend, engines)
    plan = RepositoryPlan.from_pipeline(pipe, shape_range)
    if backend == "tensorrt":  # the engines were built from these graphs: their tensors are the engines'
        missing = [s for s in CHAINED_STAGES if s not in graphs]
        if missing:
            raise RepositoryError(f"no ONNX graph given for the {', '.join(missing)} stage (the engines are checked against it)")
        plan = plan.matched_to(GraphSet.read({stage: graphs[stage] for stage in CHAINED_STAGES}))
    chosen = engines if backend == "tensorrt" else graphs
    files = {stage: chosen[stage] for stage in CHAINED_STAGES if stage in chosen}  # a missing one is reported by the writer
    return write_triton_repository(out_dir, plan, files, backend, "gpu" if backend == "tensorrt" else device, overwrite=overwrite), backend


_SERVERS = {
    "python": "any Triton with the python backend: the NGC containers, or the tritonserver bundled with nvidia-pytriton",
    "onnxruntime": "a Triton with the ONNX Runtime backend (the NGC containers; not the nvidia-pytriton one)",
    "tensorrt": "a Triton with the TensorRT backend of the TensorRT version and GPU that built the plans (the NGC containers)",
}


def _readme(plan: RepositoryPlan, backend: str, device: str) -> str:
    rng = plan.shape_range
    ensemble = plan.name(ENSEMBLE)
    opt = f"{rng.height[1]},{rng.width[1]},3"
    gpu = "--gpus all " if backend == "tensorrt" or device == "gpu" else ""
    largest = rng.batch[2] * rng.height[2] * rng.width[2] * 3
    bundled = ("\n# or, with only `pip install nvidia-pytriton`: its bundled tritonserver (python backend only)\n"
               "python -m rsd_deploy.export.triton_server $REPO --http-port 8000 --grpc-port 8001\n") if backend == "python" else ""
    return f"""# Triton models: RSD one-step x{plan.scale} super-resolution

Written by `rsd_deploy.export.triton_repo` into the model repository that holds this folder
(`REPO` below; it may hold other models too: `rsd_repository.json` there names the ones this
tool wrote and may replace). Stage models use the `{backend}` backend ({device if backend != "tensorrt" else "gpu"}
instances, {plan.precision} graphs), which loads in {_SERVERS[backend]}. Send requests to this
ensemble, `{ensemble}`:

| tensor | type | shape | meaning |
|---|---|---|---|
| `{models.IMAGE}` (in) | UINT8 | [B, h, w, 3] | RGB LR images, one size per request |
| `{models.SEED}` (in) | INT64 | [B, 1] | noise seed per image, 0 .. 2^63-1 (same seed, same output) |
| `{models.HR_IMAGE}` (out) | UINT8 | [B, {plan.scale}h, {plan.scale}w, 3] | x{plan.scale} super-resolved images |

LR images are padded to multiples of 64 inside; padded sizes from {rng.height[0]}x{rng.width[0]} to
{rng.height[2]}x{rng.width[2]} LR pixels and batches up to {rng.batch[2]} are accepted (the exported
range: {rng}), so a valid request carries at most {largest} image bytes. A request outside
that (or with a negative seed) is refused on its own with INVALID_ARG (HTTP 400) and one line;
other requests batched with it are served. Each model queues at most {DEFAULT_MAX_QUEUE} requests by
default: beyond that, UNAVAILABLE (HTTP 503) at once. Tile larger images on the client
(`rsd_deploy.export.runners.TritonRunner` calls the stage models `{plan.name(CHAINED_STAGES[0])}`, ... directly).

Models: {", ".join(f"`{plan.name(p)}`" for p in ensemble_parts(plan))}.
The python models (`model.py` is one import line) need this package and torch in the server's
Python: `pip install rsd-deploy` (or the source checkout) inside the Triton container.
{"TensorRT plans only load on the TensorRT version and GPU they were built for." if backend == "tensorrt" else ""}

## Serve

```bash
# NGC container (for TensorRT plans: the release whose TensorRT built them); releases that have
# --http-max-input-size can cap request bytes at the size above
docker run {gpu}--rm -p8000:8000 -p8001:8001 -p8002:8002 -v $REPO:/models \\
    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
    bash -c "pip install rsd-deploy && tritonserver --model-repository=/models"

# or a tritonserver on the PATH
tritonserver --model-repository=$REPO
{bundled}```

## Measure

```bash
perf_analyzer -m {ensemble} -u localhost:8001 -i grpc --shape {models.IMAGE}:{opt} --shape {models.SEED}:1 \\
    --concurrency-range 1:4 --measurement-interval 5000
```

## Call

```python
import numpy as np, tritonclient.http as httpclient
client = httpclient.InferenceServerClient("localhost:8000")
image = np.zeros((1, {rng.height[1]}, {rng.width[1]}, 3), np.uint8)          # your RGB image(s)
inputs = [httpclient.InferInput("{models.IMAGE}", image.shape, "UINT8"), httpclient.InferInput("{models.SEED}", [1, 1], "INT64")]
inputs[0].set_data_from_numpy(image); inputs[1].set_data_from_numpy(np.array([[0]], np.int64))
hr = client.infer("{ensemble}", inputs).as_numpy("{models.HR_IMAGE}")
```
"""


# --- standalone entry ---------------------------------------------------------------------------

PROG = "python -m rsd_deploy.export.triton_repo"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Write a Triton model repository from an rsd-export folder (its graphs "
                           "carry every shape and constant the repository needs).")
    parser.add_argument("--onnx-dir", type=Path, required=True, help="a complete rsd-export output folder")
    parser.add_argument("--precision", help="which of its graphs (and engines): fp32, or the precision it was exported at (default)")
    parser.add_argument("--out", type=Path, required=True, help="the model repository (created if missing; may hold other models)")
    parser.add_argument("--backend", choices=TRITON_BACKENDS, default="auto",
                        help="stage models; auto: tensorrt when rsd-export built TensorRT 10/11 engines of every stage, else python")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="instances of ONNX Runtime stages")
    parser.add_argument("--instances", type=int, default=1, help="instances of each stage model")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="requests each model queues before refusing")
    parser.add_argument("--batch", help="MIN,OPT,MAX batch (default: the range recorded in the graphs; must lie inside it)")
    parser.add_argument("--lr-size", help="MIN,OPT,MAX LR size (default: the range recorded in the graphs; must lie inside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace the models this tool wrote there before (never others)")
    return parser


def _shape_range(args: argparse.Namespace, recorded: ShapeRange) -> ShapeRange | None:
    """The range of --batch / --lr-size (checked against the graphs later), else None: the graphs' own."""
    if not args.batch and not args.lr_size:
        return None
    size = parse_range(args.lr_size, "--lr-size") if args.lr_size else None
    try:
        return ShapeRange(batch=parse_range(args.batch, "--batch") if args.batch else recorded.batch,
                          height=size or recorded.height, width=size or recorded.width)
    except ValueError as error:
        raise UsageError(f"--batch / --lr-size: {error}") from None


def _run(args: argparse.Namespace) -> int:
    exported = read_export(args.onnx_dir, args.precision, CHAINED_STAGES)
    plan = RepositoryPlan.from_graphs(exported.graphs, _shape_range(args, exported.graphs.shape_range))
    engines = exported.engine_files("tensorrt")
    backend = resolve_backend(args.backend, engines)
    if backend == "tensorrt" and len(engines) < len(CHAINED_STAGES):
        raise UsageError(f"--backend tensorrt: {args.onnx_dir / 'report.json'} lists TensorRT 10/11 engines of "
                         f"{', '.join(engines) or 'no stage'} at {exported.graphs.precision}; build them with rsd-export on a GPU machine")
    files = engines if backend == "tensorrt" else exported.graphs.paths()
    try:
        configs = write_triton_repository(args.out, plan, files, backend, args.device, args.instances,
                                          overwrite=args.overwrite, max_queue=args.max_queue)
    except OSError as error:  # the disk, not the input: exit 1
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {', '.join(sorted(configs))} ({backend} stages, {plan.precision} graphs of {args.onnx_dir}; "
          "every config.pbtxt parsed back, the ensemble followed)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _run(args), errors=(ArtifactError,))


if __name__ == "__main__":
    sys.exit(main())
